"""docker/Dockerfile and compose.yml stay consistent with the configuration names."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from aggregate.config import load_settings
from aggregate.domain.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def compose_environment() -> dict[str, str]:
    compose = yaml.safe_load((ROOT / "compose.yml").read_text())
    env = compose["services"]["aggregate"]["environment"]
    # ${VAR:-default} is compose's substitution; take the default as the value.
    return {k: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(v)) for k, v in env.items()}


def test_compose_sets_only_variables_settings_knows_and_they_load() -> None:
    env = compose_environment()
    assert env, "compose.yml sets no environment for the service"
    settings = load_settings(env)  # raises ConfigError naming any unknown variable
    assert settings.nats_url == "nats://nats:4222"
    assert settings.shard_id == "shard-a"


def test_dockerfile_env_is_known_runs_as_non_root_and_checks_readiness() -> None:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    env = dict(re.findall(r"(AGGREGATE_[A-Z_]+)=(\S+)", text))
    assert env
    load_settings(env)
    assert re.search(r"^USER aggregate$", text, re.M)
    assert text.count("FROM ") >= 2  # multi-stage
    [healthcheck] = re.findall(r"^HEALTHCHECK (?:.*\\\n)*.*", text, re.M)
    command = json.loads(healthcheck.split(" CMD ", 1)[1])
    # `aggregate ready` probes GET /ready at the address the service is configured with
    # (tests/integration/test_service_readiness.py), so no address is written here.
    assert command[:2] == ["aggregate", "ready"]
    assert not any(re.search(r":\d+|/health", part) for part in command)


def test_compose_defaults_no_admin_token_and_a_weak_one_is_refused() -> None:
    raw = yaml.safe_load((ROOT / "compose.yml").read_text())["services"]["aggregate"]
    default = re.fullmatch(
        r"\$\{AGGREGATE_ADMIN_TOKEN:-([^}]*)\}", raw["environment"]["AGGREGATE_ADMIN_TOKEN"]
    )
    assert default is not None
    assert default.group(1) == ""  # unset: /admin/* answers loopback clients only
    env = compose_environment()
    assert load_settings(env).admin_token is None
    for weak in ("change-me", "changeme-changeme-changeme", "s3cret", "a" * 32):
        with pytest.raises(ConfigError, match=r"AGGREGATE_ADMIN_TOKEN.*too weak") as error:
            load_settings(env | {"AGGREGATE_ADMIN_TOKEN": weak})
        assert weak not in error.value.message
    strong = load_settings(env | {"AGGREGATE_ADMIN_TOKEN": "7f3a9c0e5b1d4e8f2a6c"})
    assert strong.admin_token == "7f3a9c0e5b1d4e8f2a6c"


def test_unknown_compose_variable_would_be_caught() -> None:
    env = compose_environment() | {"AGGREGATE_SNAPSHOT_TRESHOLD": "5"}
    with pytest.raises(ConfigError, match="did you mean AGGREGATE_SNAPSHOT_THRESHOLD"):
        load_settings(env)

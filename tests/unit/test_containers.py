"""docker/Dockerfile and compose.yml stay consistent with the configuration names."""

from __future__ import annotations

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


def test_dockerfile_env_is_known_runs_as_non_root_and_checks_health() -> None:
    text = (ROOT / "docker" / "Dockerfile").read_text()
    env = dict(re.findall(r"(AGGREGATE_[A-Z_]+)=(\S+)", text))
    assert env
    load_settings(env)
    assert re.search(r"^USER aggregate$", text, re.M)
    assert "HEALTHCHECK" in text
    assert "/health" in text
    assert text.count("FROM ") >= 2  # multi-stage


def test_unknown_compose_variable_would_be_caught() -> None:
    env = compose_environment() | {"AGGREGATE_SNAPSHOT_TRESHOLD": "5"}
    with pytest.raises(ConfigError, match="did you mean AGGREGATE_SNAPSHOT_THRESHOLD"):
        load_settings(env)

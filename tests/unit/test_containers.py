"""docker/Dockerfile and compose.yml stay consistent with the configuration names."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from aggregate.config import load_settings
from aggregate.domain.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


STRONG_TOKEN = "7f3a9c0e5b1d4e8f2a6c"


def substituted(value: object) -> str:
    """Compose's ``${VAR:-default}`` becomes the default; ``${VAR:?error}`` (a required
    variable) becomes a strong token, as an operator must set one."""
    text = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))
    return re.sub(r"\$\{[A-Z_]+:\?[^}]*\}", STRONG_TOKEN, text)


def load_file(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / name).read_text())
    return data


def compose_environment(service: str = "shard-a", name: str = "compose.yml") -> dict[str, str]:
    env = load_file(name)["services"][service]["environment"]
    return {k: substituted(v) for k, v in env.items()}


def test_compose_sets_only_variables_settings_knows_and_they_load() -> None:
    env = compose_environment()
    assert env, "compose.yml sets no environment for the service"
    settings = load_settings(env)  # raises ConfigError naming any unknown variable
    assert settings.nats_url == "nats://nats-1:4222,nats://nats-2:4222,nats://nats-3:4222"
    assert settings.shard_id == "shard-a"


@pytest.mark.parametrize("name", ["compose.yml", "docker/stack.yml"])
def test_the_topology_is_three_clustered_nats_and_two_shards_that_agree(name: str) -> None:
    services = load_file(name)["services"]
    nats = sorted(s for s in services if s.startswith("nats-"))
    shards = sorted(s for s in services if s.startswith("shard-"))
    assert (nats, shards) == (["nats-1", "nats-2", "nats-3"], ["shard-a", "shard-b"])
    for node in nats:
        command = services[node]["command"]
        routes = command[command.index("--routes") + 1].split(",")
        assert sorted(routes) == sorted(f"nats://{n}:6222" for n in nats if n != node)
        assert command[command.index("--name") + 1] == node
        assert "--jetstream" in command
        assert "healthcheck" in services[node]
    for shard in shards:
        settings = load_settings(compose_environment(shard, name))
        assert settings.shard_id == shard  # the service name is the shard id
        assert settings.nats_servers == tuple(f"nats://{n}:4222" for n in nats)
        assert settings.stream_replicas == len(nats) == 3
        grpc_port, http_port = settings.grpc_bind[1], settings.http_bind[1]
        # Other shards and clients dial the service name at the port the shard binds.
        assert settings.advertise_grpc_addr == f"{shard}:{grpc_port}"
        assert settings.advertise_http_addr == f"{shard}:{http_port}"
        assert settings.shard_directory
        grace = float(str(services[shard]["stop_grace_period"]).removesuffix("s"))
        needed = settings.shutdown_timeout_seconds + settings.snapshot_flush_timeout_seconds
        assert grace > needed >= settings.drain_timeout_seconds
        ports = [str(p).rsplit(":", 1)[-1] for p in services[shard].get("ports", [])]
        assert str(grpc_port) in ports


def test_compose_starts_the_shards_after_a_healthy_nats_cluster() -> None:
    services = load_file("compose.yml")["services"]
    for shard in ("shard-a", "shard-b"):
        depends = services[shard]["depends_on"]
        assert depends == {
            n: {"condition": "service_healthy"} for n in ("nats-1", "nats-2", "nats-3")
        }


def test_the_stack_deploys_one_replica_per_shard_with_limits_and_rolling_updates() -> None:
    stack = load_file("docker/stack.yml")
    services = stack["services"]
    for shard in ("shard-a", "shard-b"):
        deploy = services[shard]["deploy"]
        assert deploy["replicas"] == 1  # one process per shard id
        assert deploy["resources"]["limits"]["cpus"]
        assert deploy["resources"]["limits"]["memory"]
        assert deploy["placement"]["constraints"]
        assert deploy["update_config"]["order"] == "stop-first"
        assert deploy["update_config"]["parallelism"] == 1
    for node in ("nats-1", "nats-2", "nats-3"):
        constraints = services[node]["deploy"]["placement"]["constraints"]
        assert constraints == [f"node.labels.aggregate.nats == {node[-1]}"]
    # The swarm stack refuses to deploy without an admin token.
    raw = services["shard-a"]["environment"]["AGGREGATE_ADMIN_TOKEN"]
    assert raw.startswith("${AGGREGATE_ADMIN_TOKEN:?")


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
    raw = yaml.safe_load((ROOT / "compose.yml").read_text())["services"]["shard-a"]
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

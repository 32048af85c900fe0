"""Build ``Settings`` from defaults ← config file ← ``AGGREGATE_*`` environment.

The only module of the service that reads ``os.environ`` (STYLE 10); everything else gets a
``Settings``. Every value is checked here, and every error names the key and where it came
from (``environment variable AGGREGATE_X`` or ``config file <path>, key x``), so a person
can fix it without reading code.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aggregate.config.files import read_mapping_file
from aggregate.config.manifest import check_program_settings, parse_aggregate_types
from aggregate.config.settings import ENV_PREFIX, Settings, env_name, settable_fields
from aggregate.domain.directory import validate_dial_address
from aggregate.domain.errors import ConfigError, InvalidArgumentError
from aggregate.ingest.sources import roots_relative_to

if TYPE_CHECKING:
    import dataclasses
    from collections.abc import Mapping


def _did_you_mean(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def _check_env_names(env: Mapping[str, str]) -> None:
    allowed = {env_name(name) for name in settable_fields("env")}
    file_only = {env_name(name) for name in settable_fields("file")} - allowed
    problems = []
    for name in sorted(k for k in env if k.startswith(ENV_PREFIX) and k not in allowed):
        if name in file_only:
            problems.append(
                f"{name} (the {name.removeprefix(ENV_PREFIX).lower()} section can only be "
                "given in the config file; or use AGGREGATE_MANIFEST_PATH)"
            )
        else:
            problems.append(name + _did_you_mean(name, sorted(allowed)))
    if problems:
        raise ConfigError(
            "unknown environment variable"
            + ("s: " if len(problems) > 1 else " ")
            + "; ".join(problems)
            + ". See docs/configuration.md for the list"
        )


def _check_file_keys(data: Mapping[str, Any], source: str) -> None:
    allowed = set(settable_fields("file"))
    problems = []
    for key in sorted(set(data) - allowed):
        if key == "config_path":
            problems.append(f"{key} (can only be set by the environment variable "
                            "AGGREGATE_CONFIG_PATH)")  # fmt: skip
        else:
            problems.append(key + _did_you_mean(key, sorted(allowed)))
    if problems:
        raise ConfigError(
            f"{source}: unknown key" + ("s: " if len(problems) > 1 else " ") + "; ".join(problems)
        )


def _parse(f: dataclasses.Field[Any], raw: object, where: str) -> Any:
    try:
        return f.metadata["parse"](raw)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def load_settings(
    env: Mapping[str, str] | None = None,
    *,
    overrides: Mapping[str, str] | None = None,
    option_names: Mapping[str, str] | None = None,
) -> Settings:
    """Load and validate the configuration.

    ``env`` is the environment to read (default ``os.environ``); tests pass their own.
    ``overrides`` are ``AGGREGATE_*`` values given on the command line; they win over the
    environment and errors name them as command-line options: by the option's name when
    ``option_names`` maps the variable to it (``AGGREGATE_CONFIG_PATH`` -> ``--config``).
    Precedence: built-in defaults, then the config file named by ``AGGREGATE_CONFIG_PATH``,
    then ``AGGREGATE_*`` variables (and the standard ``OTEL_*`` names of the tracing
    settings). Relative paths in the config file resolve against the
    file's directory; those in the environment against the working directory. Program
    files of ``decide_program_path`` etc. and ``manifest_path`` are read later, by
    ``manifest_from_settings``; an inline ``aggregate_types`` section is read here.

    Raises:
        ConfigError: an unknown variable or key (with the closest known name), a bad value,
            an unreadable or unparsable config file, or inconsistent settings; the message
            names the key and where it came from.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    if overrides:
        environ = {**environ, **overrides}
    from_cli = set(overrides or ())
    names = option_names or {}

    def origin(var: str) -> str:
        if var not in from_cli:
            return f"environment variable {var}"
        if var in names:
            return f"command-line option {names[var]}"
        return f"command-line option setting {var}"

    _check_env_names(environ)
    env_fields = settable_fields("env")
    file_fields = settable_fields("file")

    config_var = env_name("config_path")
    config_path: Path | None = None
    if config_var in environ:
        config_path = _parse(env_fields["config_path"], environ[config_var], origin(config_var))
    file_data: Mapping[str, Any] = {}
    source = ""
    if config_path is not None:
        config_path = config_path.resolve()
        source = f"config file {config_path}"
        try:
            file_data = read_mapping_file(config_path, "config file")
        except ConfigError as exc:
            raise ConfigError(f"{exc.message} (named by {origin(config_var)})") from None
        _check_file_keys(file_data, source)

    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for name, f in file_fields.items():
        if name not in file_data:
            continue
        where = f"{source}, key {name}"
        if name == "aggregate_types":
            assert config_path is not None  # file_data is only non-empty with a file
            value: Any = parse_aggregate_types(file_data[name], source, config_path.parent)
        else:
            value = _parse(f, file_data[name], where)
            if isinstance(value, Path) and not value.is_absolute():
                assert config_path is not None
                value = config_path.parent / value
            if name == "ingest_sources":
                assert config_path is not None
                value = roots_relative_to(value, config_path.parent)
        values[name] = value
        origins[name] = where
    for name, f in env_fields.items():
        var = env_name(name)
        if var in environ:
            where = origin(var)
            values[name] = config_path if name == "config_path" else _parse(f, environ[var], where)
            origins[name] = where

    settings = Settings(**values, origins=origins)
    _check_relations(settings)
    _check_advertised(settings)
    _check_admin_token(settings)
    check_program_settings(settings)
    return settings


def _check_relations(settings: Settings) -> None:
    """Checks that involve two settings; the message names both and their origins."""
    pairs = (
        ("program_timeout_ms", "program_hard_timeout_ms"),
        ("retry_backoff_ms", "retry_backoff_max_ms"),
        ("max_payload_bytes", "max_message_bytes"),
        ("shard_heartbeat_ms", "shard_ttl_ms"),
    )
    for low, high in pairs:
        low_value, high_value = getattr(settings, low), getattr(settings, high)
        if high_value < low_value:
            raise ConfigError(
                f"{high} = {high_value} ({settings.origin_of(high)}) is less than "
                f"{low} = {low_value} ({settings.origin_of(low)}); raise {high} or lower {low}"
            )


def _check_advertised(settings: Settings) -> None:
    """An advertised address goes into the shard directory for clients to dial: it must
    name a real host, never a wildcard such as 0.0.0.0, and a port other than 0."""
    for name in ("advertise_grpc_addr", "advertise_http_addr"):
        value = getattr(settings, name)
        if value is None:
            continue
        try:
            validate_dial_address(value, name)
        except InvalidArgumentError as exc:
            raise ConfigError(f"{exc.message} ({settings.origin_of(name)})") from None


ADMIN_TOKEN_MIN_LENGTH = 16
"""Shortest admin token accepted when the admin HTTP address is not loopback."""
_PLACEHOLDER_WORDS = ("changeme", "password", "secret", "admin", "token", "example", "default")


def _weak_token(token: str) -> str | None:
    """Why ``token`` is too weak to guard an admin API reachable from the network, or None."""
    if len(token) < ADMIN_TOKEN_MIN_LENGTH:
        return f"shorter than {ADMIN_TOKEN_MIN_LENGTH} characters"
    letters = "".join(c for c in token.lower() if c.isalnum())
    if any(word in letters for word in _PLACEHOLDER_WORDS):
        return "a placeholder or a word anyone would guess"
    if len(set(token)) < 6:
        return "too few different characters"
    return None


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_admin_token(settings: Settings) -> None:
    """Refuse a weak admin token when the admin HTTP address is reachable from the network
    (on loopback only local users can reach it, and tests use short tokens there)."""
    token = settings.admin_token
    host, port = settings.http_bind
    if token is None or _loopback(host):
        return
    reason = _weak_token(token)
    if reason is not None:
        raise ConfigError(
            f"admin_token ({settings.origin_of('admin_token')}) is too weak for the admin HTTP "
            f"address {host}:{port} ({settings.origin_of('http_addr')}), which is not "
            f"loopback: it is {reason}. Use a random one (e.g. `openssl rand -hex 24`), "
            "or leave it unset (then /admin/* answers loopback clients only)"
        )

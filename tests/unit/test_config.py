"""Configuration: Settings from defaults ← file ← environment, validation, the manifest."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from aggregate.adapters.grpc import GrpcOptions
from aggregate.config import (
    EMBEDDED,
    Settings,
    env_name,
    example_manifest_path,
    load_manifest,
    load_settings,
    manifest_from_settings,
    split_host_port,
    values,
)
from aggregate.config.manifest import EXAMPLES_DIR
from aggregate.config.settings import settable_fields
from aggregate.config.values import AccessLogMode, EventLoop
from aggregate.domain.errors import ConfigError
from aggregate.domain.ids import DEFAULT_TENANT
from aggregate.domain.manifest import ANY_TYPE, Isolation, Language

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
DECIDE = 'def decide(state, command):\n    return [{"type": "Opened"}]\n'
APPLY = "def apply(state, event):\n    return state\n"


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def with_file(path: Path, **env: str) -> dict[str, str]:
    return {"AGGREGATE_CONFIG_PATH": str(path), **env}


def config_error(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    return info.value.message


# --- defaults and sources -------------------------------------------------------------------


def test_defaults_match_the_reference_readme_and_design() -> None:
    settings = load_settings({})
    assert settings == Settings()
    assert settings.nats_url == EMBEDDED
    assert settings.nats_embedded
    assert settings.nats_servers == ()
    assert settings.storage_path == Path("./data")
    assert settings.snapshot_threshold == 10
    assert settings.max_retries == 3
    assert settings.http_addr == "0.0.0.0:8080"
    assert settings.grpc_addr == "0.0.0.0:50051"
    assert settings.multi_tenant is True
    assert settings.default_tenant_id is None
    assert settings.shard_id == "local"
    assert settings.placement_bucket == "AGGREGATE_PLACEMENT"
    assert settings.placement_key == "aggregate_placement"
    assert settings.stream_name == "AGGREGATE_EVENTS"
    assert settings.stream_replicas == 1
    assert settings.duplicate_window_ms == 120_000
    assert settings.command_history == 1000
    assert settings.metrics_tenant_labels is True
    assert settings.log_level == "info"
    assert settings.library_log_level == "warning"
    assert settings.access_log is AccessLogMode.OFF
    assert settings.access_log_sample_every == 100
    assert settings.program_language is Language.STARLARK
    assert settings.program_isolation is Isolation.PROCESS
    assert settings.admin_token is None
    assert settings.config_path is None
    assert dict(settings.origins) == {}


def test_logging_settings_from_the_environment() -> None:
    settings = load_settings(
        {
            "AGGREGATE_LIBRARY_LOG_LEVEL": "DEBUG",
            "AGGREGATE_ACCESS_LOG": "Sampled",
            "AGGREGATE_ACCESS_LOG_SAMPLE_EVERY": "10",
        }
    )
    assert settings.library_log_level == "debug"
    assert settings.access_log is AccessLogMode.SAMPLED
    assert settings.access_log_sample_every == 10


def test_request_bounds_have_defaults_and_reach_the_grpc_options() -> None:
    from aggregate.adapters.grpc import GrpcOptions

    defaults = load_settings({})
    assert (defaults.max_json_depth, defaults.max_json_int_digits) == (64, 100)
    assert (defaults.max_metadata_entries, defaults.max_metadata_bytes) == (64, 16_384)
    assert (defaults.max_metadata_key_bytes, defaults.max_metadata_value_bytes) == (128, 1024)
    settings = load_settings(
        {
            "AGGREGATE_MAX_JSON_DEPTH": "10",
            "AGGREGATE_MAX_JSON_INT_DIGITS": "20",
            "AGGREGATE_MAX_METADATA_ENTRIES": "3",
            "AGGREGATE_MAX_METADATA_KEY_BYTES": "4",
            "AGGREGATE_MAX_METADATA_VALUE_BYTES": "5",
            "AGGREGATE_MAX_METADATA_BYTES": "6",
        }
    )
    limits = GrpcOptions.from_settings(settings).request_limits
    assert (limits.max_json_depth, limits.max_json_int_digits) == (10, 20)
    assert (limits.max_metadata_entries, limits.max_metadata_key_bytes) == (3, 4)
    assert (limits.max_metadata_value_bytes, limits.max_metadata_bytes) == (5, 6)


def test_none_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in [n for n in os.environ if n.startswith("AGGREGATE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AGGREGATE_SNAPSHOT_THRESHOLD", "7")
    assert load_settings().snapshot_threshold == 7


def test_durations_have_second_properties() -> None:
    settings = load_settings({"AGGREGATE_SHUTDOWN_TIMEOUT_MS": "2500"})
    assert settings.shutdown_timeout_seconds == 2.5
    assert settings.drain_timeout_seconds == 10.0
    assert settings.duplicate_window_seconds == 120.0
    assert settings.nats_timeout_seconds == settings.nats_timeout_ms / 1000
    assert settings.program_hard_timeout_seconds == settings.program_hard_timeout_ms / 1000
    assert settings.program_max_memory_bytes == settings.program_max_memory_mb * 1024 * 1024


def test_settings_are_frozen() -> None:
    settings = load_settings({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.snapshot_threshold = 5  # type: ignore[misc]


FORMATS = {
    "yaml": (
        "nats_url: nats://a:4222, nats://b:4222\nsnapshot_threshold: 25\nmulti_tenant: false\n"
        "storage_path: store\nshard_id: s1\nhttp_addr: '127.0.0.1:0'\n"
    ),
    "yml": (
        "nats_url: nats://a:4222,nats://b:4222\nsnapshot_threshold: '25'\nmulti_tenant: 'no'\n"
        "storage_path: store\nshard_id: s1\nhttp_addr: 127.0.0.1:0\n"
    ),
    "toml": (
        'nats_url = "nats://a:4222,nats://b:4222"\nsnapshot_threshold = 25\nmulti_tenant = false\n'
        'storage_path = "store"\nshard_id = "s1"\nhttp_addr = "127.0.0.1:0"\n'
    ),
    "json": json.dumps(
        {
            "nats_url": "nats://a:4222,nats://b:4222",
            "snapshot_threshold": 25,
            "multi_tenant": 0,
            "storage_path": "store",
            "shard_id": "s1",
            "http_addr": "127.0.0.1:0",
        }
    ),
}


@pytest.mark.parametrize("ext", sorted(FORMATS))
def test_each_file_format(tmp_path: Path, ext: str) -> None:
    path = write(tmp_path, f"aggregate.{ext}", FORMATS[ext])
    settings = load_settings(with_file(path))
    assert settings.nats_servers == ("nats://a:4222", "nats://b:4222")
    assert settings.snapshot_threshold == 25
    assert settings.multi_tenant is False
    assert settings.default_tenant_id == DEFAULT_TENANT
    assert settings.storage_path == tmp_path / "store"  # relative to the file
    assert settings.shard_id == "s1"
    assert settings.http_bind == ("127.0.0.1", 0)
    assert settings.config_path == path
    assert settings.origin_of("snapshot_threshold") == f"config file {path}, key snapshot_threshold"
    assert settings.origin_of("max_retries") == "default"


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", "snapshot_threshold: 25\nmax_retries: 7\nstorage_path: s\n")
    settings = load_settings(
        with_file(path, AGGREGATE_SNAPSHOT_THRESHOLD="30", AGGREGATE_STORAGE_PATH="rel")
    )
    assert settings.snapshot_threshold == 30
    assert settings.max_retries == 7
    assert settings.storage_path == Path("rel")  # environment paths stay cwd-relative
    assert settings.origin_of("snapshot_threshold") == (
        "environment variable AGGREGATE_SNAPSHOT_THRESHOLD"
    )


def test_empty_environment_value_unsets_an_optional_file_value(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", "default_tenant_id: acme\nnats_url: nats://h:4222\n")
    settings = load_settings(with_file(path, AGGREGATE_DEFAULT_TENANT_ID="", AGGREGATE_NATS_URL=""))
    assert settings.default_tenant_id is None
    assert settings.nats_embedded


def test_empty_yaml_file_gives_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", "# nothing here\n")
    assert load_settings(with_file(path)) == Settings(config_path=path)


# --- tenancy ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"AGGREGATE_MULTI_TENANT": "false"}, DEFAULT_TENANT),
        ({"AGGREGATE_MULTI_TENANT": "0", "AGGREGATE_DEFAULT_TENANT_ID": "acme"}, "acme"),
        ({"AGGREGATE_DEFAULT_TENANT_ID": "acme"}, "acme"),
    ],
)
def test_default_tenant(env: dict[str, str], expected: str | None) -> None:
    assert load_settings(env).default_tenant_id == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("true", True),
        ("TRUE", True),
        ("1", True),
        ("yes", True),
        ("false", False),
        ("0", False),
        ("No", False),
    ],
)
def test_booleans(raw: str, expected: bool) -> None:
    assert load_settings({"AGGREGATE_METRICS_TENANT_LABELS": raw}).metrics_tenant_labels is expected


# --- secrets --------------------------------------------------------------------------------


def test_secrets_are_not_in_repr(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "AGGREGATE_ADMIN_TOKEN": "Zq8vN3rLx5Tp2wK9-s3cr3t",
            "AGGREGATE_NATS_URL": "nats://alice:pa55word@h1:4222,tls://tok3n@h2:4443",
        }
    )
    assert settings.admin_token == "Zq8vN3rLx5Tp2wK9-s3cr3t"
    for text in (repr(settings), str(settings)):
        assert "Zq8vN3rLx5Tp2wK9-s3cr3t" not in text
        assert "pa55word" not in text
        assert "tok3n" not in text
        assert "admin_token='***'" in text
        assert "nats://***@h1:4222,tls://***@h2:4443" in text


# --- values -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "servers"),
    [
        ("embedded", ()),
        ("", ()),
        ("nats://localhost:4222", ("nats://localhost:4222",)),
        ("tls://n1.example.com:4443, ws://n2:80", ("tls://n1.example.com:4443", "ws://n2:80")),
        ("wss://[::1]:443", ("wss://[::1]:443",)),
    ],
)
def test_valid_nats_urls(raw: str, servers: tuple[str, ...]) -> None:
    assert load_settings({"AGGREGATE_NATS_URL": raw}).nats_servers == servers


@pytest.mark.parametrize(
    ("addr", "bind"),
    [
        ("0.0.0.0:8080", ("0.0.0.0", 8080)),
        ("[::1]:0", ("::1", 0)),
        ("localhost:1", ("localhost", 1)),
    ],
)
def test_valid_addresses(addr: str, bind: tuple[str, int]) -> None:
    settings = load_settings({"AGGREGATE_GRPC_ADDR": addr})
    assert settings.grpc_bind == bind
    assert split_host_port(addr) == bind


@pytest.mark.parametrize(
    ("var", "raw", "problem"),
    [
        ("SNAPSHOT_THRESHOLD", "abc", "expected an integer, got 'abc'"),
        ("SNAPSHOT_THRESHOLD", "", "expected an integer"),
        ("SNAPSHOT_THRESHOLD", "0", "must be positive"),
        ("MAX_RETRIES", "-1", "must not be negative"),
        ("STREAM_REPLICAS", "6", "at most 5"),
        ("SHUTDOWN_TIMEOUT_MS", "0", "must be positive"),
        ("SHUTDOWN_TIMEOUT_MS", "1.5", "expected an integer"),
        ("PROGRAM_MAX_MEMORY_MB", "10", "at least 64"),
        ("MAX_MESSAGE_BYTES", "100", "at least 1024"),
        ("GRPC_MAX_HEADER_LIST_BYTES", "2000000", "at most 1048576"),
        ("GRPC_MAX_CONCURRENT_STREAMS", "0", "must be positive"),
        ("MULTI_TENANT", "maybe", "expected a boolean"),
        ("NATS_URL", "http://h:80", "scheme http://"),
        ("NATS_URL", "localhost:4222", "write e.g. nats://localhost:4222"),
        ("NATS_URL", "nats://h:4222,,nats://g", "empty entry"),
        ("NATS_URL", "embedded,nats://h", "cannot be combined"),
        ("NATS_URL", "nats://h:99999", "invalid port"),
        ("NATS_URL", "nats://", "has no host"),
        ("HTTP_ADDR", "8080", "expected host:port"),
        ("HTTP_ADDR", ":8080", "expected host:port"),
        ("HTTP_ADDR", "::1:8080", "in brackets"),
        ("HTTP_ADDR", "host:http", "not a number"),
        ("GRPC_ADDR", "bad host:1", "not a host name"),
        ("GRPC_ADDR", "[nope]:1", "not an IPv6 address"),
        ("DEFAULT_TENANT_ID", "a.b", "tenant id 'a.b' is invalid"),
        ("SHARD_ID", "x" * 65, "shard id"),
        ("STREAM_NAME", "EVENTS.X", "stream name"),
        ("PLACEMENT_KEY", ".key", "KV key"),
        ("AGGREGATE_TYPE", "bank account", "aggregate type"),
        ("LOG_LEVEL", "loud", "expected one of debug"),
        ("LIBRARY_LOG_LEVEL", "chatty", "expected one of debug"),
        ("ACCESS_LOG", "yes", "expected one of off, on, sampled"),
        ("ACCESS_LOG_SAMPLE_EVERY", "0", "must be positive"),
        ("PROGRAM_LANGUAGE", "lua", "expected one of starlark, python"),
        ("PROGRAM_ISOLATION", "docker", "expected one of process, inline"),
        ("STORAGE_PATH", "", "must not be empty"),
        ("MAX_JSON_DEPTH", "513", "at most 512"),
        ("MAX_JSON_DEPTH", "0", "must be positive"),
        ("MAX_JSON_INT_DIGITS", "4301", "at most 4300"),
        ("MAX_METADATA_ENTRIES", "-1", "must not be negative"),
        ("MAX_METADATA_KEY_BYTES", "0", "must be positive"),
    ],
)
def test_bad_environment_values_name_the_variable(var: str, raw: str, problem: str) -> None:
    message = config_error({f"AGGREGATE_{var}": raw})
    assert message.startswith(f"environment variable AGGREGATE_{var}: ")
    assert problem in message


@pytest.mark.parametrize(
    ("line", "key", "problem"),
    [
        ("snapshot_threshold: abc", "snapshot_threshold", "expected an integer"),
        ("snapshot_threshold: true", "snapshot_threshold", "expected an integer"),
        ("snapshot_threshold: 2.5", "snapshot_threshold", "expected an integer"),
        ("shard_id: 12", "shard_id", "expected a string, got 12 (int)"),
        ("multi_tenant: 2", "multi_tenant", "expected a boolean"),
        ("storage_path: null", "storage_path", "expected a string"),
        ("nats_url: [nats://h]", "nats_url", "expected a string"),
    ],
)
def test_bad_file_values_name_the_file_and_key(
    tmp_path: Path, line: str, key: str, problem: str
) -> None:
    path = write(tmp_path, "c.yaml", line + "\n")
    message = config_error(with_file(path))
    assert message.startswith(f"config file {path}, key {key}: ")
    assert problem in message


# --- unknown names ------------------------------------------------------------------------


def test_unknown_environment_variable_suggests_the_closest() -> None:
    message = config_error({"AGGREGATE_SNAPSHOT_TRESHOLD": "5"})
    assert "unknown environment variable AGGREGATE_SNAPSHOT_TRESHOLD" in message
    assert "did you mean AGGREGATE_SNAPSHOT_THRESHOLD?" in message


def test_every_unknown_environment_variable_is_listed() -> None:
    message = config_error({"AGGREGATE_NATS_ULR": "x", "AGGREGATE_ZZZ": "1", "OTHER_X": "1"})
    assert "AGGREGATE_NATS_ULR (did you mean AGGREGATE_NATS_URL?)" in message
    assert "AGGREGATE_ZZZ" in message
    assert "OTHER_X" not in message


def test_file_only_and_environment_only_names() -> None:
    message = config_error({"AGGREGATE_AGGREGATE_TYPES": "{}"})
    assert "AGGREGATE_AGGREGATE_TYPES" in message
    assert "config file" in message


def test_unknown_file_key_suggests_the_closest(tmp_path: Path) -> None:
    path = write(tmp_path, "c.toml", "snapshot_treshold = 5\nconfig_path = 'x.yaml'\n")
    message = config_error(with_file(path))
    assert message.startswith(f"config file {path}: unknown keys: ")
    assert "snapshot_treshold (did you mean snapshot_threshold?)" in message
    assert "config_path (can only be set by the environment variable AGGREGATE_CONFIG_PATH)" in (
        message
    )


# --- the config file itself -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text", "problem"),
    [
        ("c.yaml", "a: [1, 2\n", "is not valid YAML: "),
        ("c.yaml", "max_retries: 1\nmax_retries: 2\n", "duplicate key 'max_retries'"),
        ("c.toml", "max_retries = \n", "is not valid TOML: "),
        ("c.json", '{"max_retries": 1,}', "is not valid JSON: "),
        ("c.json", '{"max_retries": 1, "max_retries": 2}', "duplicate key 'max_retries'"),
        ("c.yaml", "- a\n- b\n", "must hold a mapping of keys at the top level, not a list"),
        ("c.yaml", "1: a\n", "key 1 must be a string"),
        ("c.ini", "[x]\n", "unknown extension '.ini'; use .yaml, .yml, .toml or .json"),
    ],
)
def test_unparsable_config_files_name_the_file(
    tmp_path: Path, name: str, text: str, problem: str
) -> None:
    path = write(tmp_path, name, text)
    message = config_error(with_file(path))
    assert str(path) in message
    assert problem in message
    assert "AGGREGATE_CONFIG_PATH" in message


def test_yaml_parser_message_gives_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", "max_retries: 1\nbad: [1, 2\n")
    assert re.search(r"line \d+", config_error(with_file(path)))


def test_missing_config_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    message = config_error(with_file(path))
    assert message.startswith(f"config file {path} does not exist")
    assert "environment variable AGGREGATE_CONFIG_PATH" in message


def test_unreadable_config_file(tmp_path: Path) -> None:
    path = tmp_path / "dir.yaml"
    path.mkdir()
    assert f"config file {path} cannot be read" in config_error(with_file(path))


def test_non_utf8_config_file(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(b"shard_id: \xff\xfe\n")
    assert f"config file {path} is not UTF-8" in config_error(with_file(path))


# --- relations between settings ------------------------------------------------------------


def test_hard_timeout_below_soft_timeout(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", "program_timeout_ms: 2000\n")
    message = config_error(with_file(path, AGGREGATE_PROGRAM_HARD_TIMEOUT_MS="1000"))
    assert "program_hard_timeout_ms = 1000 (environment variable" in message
    assert f"program_timeout_ms = 2000 (config file {path}, key program_timeout_ms)" in message


def test_backoff_max_below_base() -> None:
    message = config_error({"AGGREGATE_RETRY_BACKOFF_MS": "900"})
    assert "retry_backoff_max_ms = 500 (default) is less than retry_backoff_ms = 900" in message


def test_message_limit_below_payload_limit() -> None:
    message = config_error({"AGGREGATE_MAX_MESSAGE_BYTES": "65536"})
    assert "max_message_bytes = 65536 (environment variable" in message
    assert "is less than max_payload_bytes = 1048576 (default)" in message


def test_grpc_transport_limits_reach_the_grpc_options() -> None:
    settings = load_settings(
        {
            "AGGREGATE_MAX_MESSAGE_BYTES": "2097152",
            "AGGREGATE_GRPC_MAX_HEADER_LIST_BYTES": "8192",
            "AGGREGATE_GRPC_MAX_CONCURRENT_STREAMS": "16",
        }
    )
    options = GrpcOptions.from_settings(settings)
    assert (options.max_message_bytes, options.max_header_list_bytes) == (2_097_152, 8192)
    assert options.max_concurrent_streams == 16
    defaults = GrpcOptions.from_settings(load_settings({}))
    assert (defaults.max_message_bytes, defaults.max_header_list_bytes) == (4 * 1024 * 1024, 16_384)
    assert defaults.max_concurrent_streams == 100


# --- manifest files -------------------------------------------------------------------------


def bank_files(directory: Path) -> None:
    write(directory, "programs/decide.star", DECIDE)
    write(directory, "programs/apply.star", APPLY)


MANIFESTS = {
    "yaml": (
        "aggregate_types:\n  bank-account:\n    decide: programs/decide.star\n"
        "    apply: programs/apply.star\n    isolation: inline\n"
        "    initial_state: {balance: 0}\n"
    ),
    "toml": (
        '[aggregate_types.bank-account]\ndecide = "programs/decide.star"\n'
        'apply = "programs/apply.star"\nisolation = "inline"\ninitial_state = { balance = 0 }\n'
    ),
    "json": json.dumps(
        {
            "aggregate_types": {
                "bank-account": {
                    "decide": "programs/decide.star",
                    "apply": "programs/apply.star",
                    "isolation": "inline",
                    "initial_state": {"balance": 0},
                }
            }
        }
    ),
}


@pytest.mark.parametrize("ext", sorted(MANIFESTS))
def test_load_manifest_each_format(tmp_path: Path, ext: str) -> None:
    bank_files(tmp_path)
    path = write(tmp_path, f"manifest.{ext}", MANIFESTS[ext])
    manifest = load_manifest(path)
    assert set(manifest.types) == {"bank-account"}
    bank = manifest.types["bank-account"]
    assert bank.decide.text == DECIDE
    assert bank.decide.origin == str(tmp_path / "programs" / "decide.star")
    assert bank.apply.text == APPLY
    assert bank.language is Language.STARLARK
    assert bank.isolation is Isolation.INLINE
    assert bank.initial_state == {"balance": 0}
    assert str(path) in manifest.origin


def test_manifest_inline_sources_and_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "m.json",
        json.dumps({"aggregate_types": {"t": {"decide_source": DECIDE, "apply_source": APPLY}}}),
    )
    entry = load_manifest(path).types["t"]
    assert (entry.decide.text, entry.apply.text) == (DECIDE, APPLY)
    assert "aggregate_types.t.decide_source" in entry.decide.origin
    assert entry.isolation is Isolation.PROCESS
    assert entry.initial_state == {}


def test_manifest_python_programs(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "m.yaml",
        "aggregate_types:\n  t:\n    language: python\n    decide: pkg.mod:decide\n"
        "    apply: pkg.mod:apply\n",
    )
    entry = load_manifest(path).types["t"]
    assert entry.language is Language.PYTHON
    assert entry.isolation is Isolation.INLINE
    assert entry.decide.text == "pkg.mod:decide"


@pytest.mark.parametrize(
    ("body", "key", "problem"),
    [
        ("  t:\n    decide: d.star\n    apply: a.star\n    langauge: starlark\n",
         "aggregate_types.t.langauge", "did you mean 'language'?"),
        ("  'bad name':\n    decide: d.star\n    apply: a.star\n",
         "aggregate_types.bad name", "aggregate type 'bad name' is invalid"),
        ("  t:\n    language: lua\n    decide: d.star\n    apply: a.star\n",
         "aggregate_types.t.language", "expected one of starlark, python"),
        ("  t:\n    isolation: vm\n    decide: d.star\n    apply: a.star\n",
         "aggregate_types.t.isolation", "expected one of process, inline"),
        ("  t:\n    decide: missing.star\n    apply: a.star\n",
         "aggregate_types.t.decide", "missing.star does not exist"),
        ("  t:\n    decide: d.star\n    decide_source: x\n    apply: a.star\n",
         "aggregate_types.t.decide", "not both"),
        ("  t:\n    apply: a.star\n", "aggregate_types.t.decide", "missing"),
        ("  t:\n    decide: d.star\n    apply: a.star\n    initial_state: [1]\n",
         "aggregate_types.t.initial_state", "must be a JSON object"),
        ("  t:\n    decide: d.star\n    apply: a.star\n    initial_state: {1: a}\n",
         "aggregate_types.t.initial_state", "not plain JSON"),
        ("  t:\n    decide: d.star\n    apply: a.star\n    initial_state: {d: 2024-01-01}\n",
         "aggregate_types.t.initial_state", "not plain JSON"),
        ("  t: d.star\n", "aggregate_types.t", "must be a mapping"),
        ("  t:\n    language: python\n    isolation: process\n    decide: m:f\n    apply: m:g\n",
         "aggregate_types.t.isolation", "python programs run in the service process"),
        ("  t:\n    language: python\n    decide_source: x\n    apply: m:g\n",
         "aggregate_types.t.decide_source", "python programs are references"),
        ("  t:\n    language: python\n    decide: not a ref\n    apply: m:g\n",
         "aggregate_types.t.decide", "package.module:function"),
    ],
)  # fmt: skip
def test_manifest_errors_name_file_and_key(
    tmp_path: Path, body: str, key: str, problem: str
) -> None:
    write(tmp_path, "d.star", DECIDE)
    write(tmp_path, "a.star", APPLY)
    path = write(tmp_path, "m.yaml", "aggregate_types:\n" + body)
    with pytest.raises(ConfigError) as info:
        load_manifest(path)
    assert info.value.message.startswith(f"manifest {path}, key {key}: ")
    assert problem in info.value.message


def test_missing_program_file_names_the_resolved_path(tmp_path: Path) -> None:
    path = write(tmp_path, "sub/m.yaml", "aggregate_types:\n  t:\n    decide: ../x.star\n")
    with pytest.raises(ConfigError) as info:
        load_manifest(path)
    assert f"program file {tmp_path / 'sub' / '..' / 'x.star'} does not exist" in str(info.value)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "defines no aggregate types"),
        ("aggregate_types: {}\n", "must be a non-empty mapping"),
        ("aggregate_types: {}\nextra: 1\n", "key extra: unknown key"),
    ],
)
def test_empty_or_odd_manifests(tmp_path: Path, text: str, problem: str) -> None:
    path = write(tmp_path, "m.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_manifest(path)
    assert str(path) in info.value.message
    assert problem in info.value.message


def test_missing_manifest_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"manifest .*absent\.toml does not exist"):
        load_manifest(tmp_path / "absent.toml")


# --- the effective manifest -----------------------------------------------------------------


def test_manifest_from_manifest_path(tmp_path: Path) -> None:
    bank_files(tmp_path)
    path = write(tmp_path, "m.yaml", MANIFESTS["yaml"])
    settings = load_settings({"AGGREGATE_MANIFEST_PATH": str(path)})
    assert set(manifest_from_settings(settings).types) == {"bank-account"}


def test_manifest_from_inline_config_section(tmp_path: Path) -> None:
    bank_files(tmp_path / "conf")
    path = write(
        tmp_path,
        "conf/c.yaml",
        "snapshot_threshold: 3\n" + MANIFESTS["yaml"],
    )
    settings = load_settings(with_file(path))
    manifest = manifest_from_settings(settings)
    assert manifest.types["bank-account"].decide.text == DECIDE
    assert "aggregate_types=Manifest(['bank-account'])" in repr(settings)


def test_inline_config_section_errors_name_the_config_file(tmp_path: Path) -> None:
    path = write(tmp_path, "c.yaml", "aggregate_types:\n  t:\n    decide: nope.star\n")
    message = config_error(with_file(path))
    assert message.startswith(f"config file {path}, key aggregate_types.t.decide: ")
    assert "nope.star does not exist" in message


def test_manifest_from_inline_environment_programs() -> None:
    settings = load_settings(
        {
            "AGGREGATE_DECIDE_PROGRAM": DECIDE,
            "AGGREGATE_APPLY_PROGRAM": APPLY,
            "AGGREGATE_AGGREGATE_TYPE": "counter",
            "AGGREGATE_PROGRAM_ISOLATION": "inline",
        }
    )
    manifest = manifest_from_settings(settings)
    assert list(manifest.types) == ["counter"]  # AGGREGATE_AGGREGATE_TYPE narrows to one
    entry = manifest.types["counter"]
    assert (entry.decide.text, entry.apply.text) == (DECIDE, APPLY)
    assert entry.decide.origin == "environment variable AGGREGATE_DECIDE_PROGRAM"
    assert entry.isolation is Isolation.INLINE
    assert entry.language is Language.STARLARK


def test_manifest_from_environment_program_paths(tmp_path: Path) -> None:
    decide = write(tmp_path, "d.star", DECIDE)
    apply = write(tmp_path, "a.star", APPLY)
    settings = load_settings(
        {"AGGREGATE_DECIDE_PROGRAM_PATH": str(decide), "AGGREGATE_APPLY_PROGRAM_PATH": str(apply)}
    )
    manifest = manifest_from_settings(settings)
    # Without AGGREGATE_AGGREGATE_TYPE the programs serve every type a request names.
    assert list(manifest.types) == [ANY_TYPE]
    entry = manifest.types[ANY_TYPE]
    assert entry.decide.text == DECIDE
    assert entry.decide.origin == str(decide)
    assert entry.isolation is Isolation.PROCESS
    assert "every aggregate type" in manifest.origin


def test_missing_environment_program_file(tmp_path: Path) -> None:
    settings = load_settings(
        {
            "AGGREGATE_DECIDE_PROGRAM_PATH": str(tmp_path / "nope.star"),
            "AGGREGATE_APPLY_PROGRAM": APPLY,
        }
    )
    with pytest.raises(ConfigError) as info:
        manifest_from_settings(settings)
    assert "environment variable AGGREGATE_DECIDE_PROGRAM_PATH" in info.value.message
    assert f"program file {tmp_path / 'nope.star'} does not exist" in info.value.message


def test_python_environment_programs() -> None:
    settings = load_settings(
        {
            "AGGREGATE_PROGRAM_LANGUAGE": "python",
            "AGGREGATE_DECIDE_PROGRAM": "pkg.mod:decide",
            "AGGREGATE_APPLY_PROGRAM": "pkg.mod:apply",
        }
    )
    entry = manifest_from_settings(settings).types[ANY_TYPE]
    assert entry.language is Language.PYTHON
    assert entry.isolation is Isolation.INLINE
    assert entry.apply.text == "pkg.mod:apply"


@pytest.mark.parametrize(
    ("env", "problems"),
    [
        ({"AGGREGATE_DECIDE_PROGRAM": DECIDE},
         ["decide_program is set (environment variable AGGREGATE_DECIDE_PROGRAM)",
          "neither apply_program nor apply_program_path"]),
        ({"AGGREGATE_APPLY_PROGRAM_PATH": "a.star"},
         ["apply_program_path is set", "neither decide_program nor decide_program_path"]),
        ({"AGGREGATE_DECIDE_PROGRAM": DECIDE, "AGGREGATE_DECIDE_PROGRAM_PATH": "d.star",
          "AGGREGATE_APPLY_PROGRAM": APPLY},
         ["decide_program (environment variable AGGREGATE_DECIDE_PROGRAM) and "
          "decide_program_path (environment variable AGGREGATE_DECIDE_PROGRAM_PATH)"]),
        ({"AGGREGATE_PROGRAM_LANGUAGE": "python", "AGGREGATE_DECIDE_PROGRAM_PATH": "d.py",
          "AGGREGATE_APPLY_PROGRAM": "m:f"},
         ["decide_program_path (environment variable", "python programs are references"]),
        ({"AGGREGATE_PROGRAM_LANGUAGE": "python", "AGGREGATE_PROGRAM_ISOLATION": "process",
          "AGGREGATE_DECIDE_PROGRAM": "m:f", "AGGREGATE_APPLY_PROGRAM": "m:g"},
         ["program_isolation (environment variable AGGREGATE_PROGRAM_ISOLATION)"]),
        ({"AGGREGATE_PROGRAM_LANGUAGE": "python", "AGGREGATE_DECIDE_PROGRAM": "m:f",
          "AGGREGATE_APPLY_PROGRAM": "not a reference"},
         ["apply_program (environment variable AGGREGATE_APPLY_PROGRAM)",
          "package.module:function"]),
        ({"AGGREGATE_MANIFEST_PATH": "m.yaml", "AGGREGATE_DECIDE_PROGRAM": DECIDE,
          "AGGREGATE_APPLY_PROGRAM": APPLY},
         ["configured more than once",
          "manifest_path (environment variable AGGREGATE_MANIFEST_PATH)",
          "decide_program (environment variable AGGREGATE_DECIDE_PROGRAM)"]),
    ],
)  # fmt: skip
def test_program_setting_errors(env: dict[str, str], problems: list[str]) -> None:
    message = config_error(env)
    for problem in problems:
        assert problem in message


def test_manifest_path_and_inline_section_conflict(tmp_path: Path) -> None:
    bank_files(tmp_path)
    path = write(tmp_path, "c.yaml", MANIFESTS["yaml"])
    message = config_error(with_file(path, AGGREGATE_MANIFEST_PATH=str(path)))
    assert "configured more than once" in message
    assert f"aggregate_types (config file {path}, key aggregate_types)" in message


def test_nothing_configured_says_how() -> None:
    with pytest.raises(ConfigError) as info:
        manifest_from_settings(load_settings({}))
    for hint in ("AGGREGATE_MANIFEST_PATH", "aggregate_types", "AGGREGATE_DECIDE_PROGRAM"):
        assert hint in info.value.message


def test_manifest_from_directly_built_settings_is_checked_too() -> None:
    with pytest.raises(ConfigError, match="set both programs"):
        manifest_from_settings(Settings(decide_program=DECIDE))


# --- bundled examples -----------------------------------------------------------------------


def test_example_manifest_path(tmp_path: Path) -> None:
    manifest = write(tmp_path, "bank/manifest.yaml", "aggregate_types: {}\n")
    write(tmp_path, "billing/manifest.yaml", "aggregate_types: {}\n")
    assert example_manifest_path(examples_dir=tmp_path) == manifest
    with pytest.raises(ConfigError, match=r"no bundled example 'nope'.*examples: bank, billing"):
        example_manifest_path("nope", examples_dir=tmp_path)


def test_examples_are_looked_up_inside_the_package() -> None:
    import aggregate

    assert Path(aggregate.__file__).resolve().parent / "examples" == EXAMPLES_DIR


# --- documentation --------------------------------------------------------------------------


def test_docs_list_every_variable() -> None:
    text = DOCS.read_text()
    for name in settable_fields("env"):
        assert f"`{env_name(name)}`" in text, f"{env_name(name)} is not documented"
    assert "aggregate_types" in text


def test_a_weak_admin_token_is_refused_only_off_loopback(tmp_path: Path) -> None:
    weak = {"AGGREGATE_ADMIN_TOKEN": "change-me"}
    assert load_settings(weak | {"AGGREGATE_HTTP_ADDR": "127.0.0.1:8080"}).admin_token
    assert load_settings(weak | {"AGGREGATE_HTTP_ADDR": "[::1]:8080"}).admin_token
    config = write(
        tmp_path, "c.yaml", "http_addr: 10.0.0.5:8080\nadmin_token: password1234567890\n"
    )
    with pytest.raises(ConfigError) as error:
        load_settings({"AGGREGATE_CONFIG_PATH": str(config)})
    message = error.value.message
    assert "admin_token (config file" in message
    assert "10.0.0.5:8080 (config file" in message
    assert "placeholder" in message
    assert "password1234567890" not in message


def test_the_event_loop_is_asyncio_by_default_and_uvloop_on_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings({}).event_loop is EventLoop.ASYNCIO
    assert load_settings({"AGGREGATE_EVENT_LOOP": "uvloop"}).event_loop is EventLoop.UVLOOP
    assert load_settings({"AGGREGATE_EVENT_LOOP": "UVLOOP"}).event_loop is EventLoop.UVLOOP
    message = config_error({"AGGREGATE_EVENT_LOOP": "tokio"})
    assert "AGGREGATE_EVENT_LOOP" in message
    assert "uvloop, asyncio" in message
    # Where uvloop is not installed (Windows), asking for it is an error at start-up
    # rather than a failure on the first command.
    monkeypatch.setattr(values, "uvloop_available", lambda: False)
    assert load_settings({}).event_loop is EventLoop.ASYNCIO
    assert "not installed" in config_error({"AGGREGATE_EVENT_LOOP": "uvloop"})

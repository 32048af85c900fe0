"""The tracing settings: OpenTelemetry's standard variables, read by the one loader."""

from __future__ import annotations

import pytest

from aggregate.config import Settings, env_name, load_settings
from aggregate.domain.errors import ConfigError


def config_error(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    return info.value.message


def test_tracing_is_off_by_default() -> None:
    settings = load_settings({})
    assert settings.otlp_traces_url is None
    assert settings.otel_service_name == "aggregate"
    assert settings.trace_export_timeout_ms == 10_000


def test_the_standard_variables_keep_their_names() -> None:
    assert env_name("otel_exporter_otlp_endpoint") == "OTEL_EXPORTER_OTLP_ENDPOINT"
    assert env_name("otel_service_name") == "OTEL_SERVICE_NAME"
    assert env_name("trace_export_timeout_ms") == "AGGREGATE_TRACE_EXPORT_TIMEOUT_MS"


@pytest.mark.parametrize(
    ("env", "url"),
    [
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"},
            "http://collector:4318/v1/traces",
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://c.example/otlp/"},
            "https://c.example/otlp/v1/traces",
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:9999/custom",
            },
            "http://traces:9999/custom",
        ),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": ""}, None),
    ],
)
def test_the_traces_url_follows_the_otlp_rules(env: dict[str, str], url: str | None) -> None:
    assert load_settings(env).otlp_traces_url == url


def test_the_variables_can_also_come_from_the_config_file(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "c.yaml"
    path.write_text("otel_exporter_otlp_endpoint: http://collector:4318\notel_service_name: bank\n")
    settings = load_settings({"AGGREGATE_CONFIG_PATH": str(path)})
    assert settings.otlp_traces_url == "http://collector:4318/v1/traces"
    assert settings.otel_service_name == "bank"
    assert settings == Settings(
        config_path=path.resolve(),
        otel_exporter_otlp_endpoint="http://collector:4318",
        otel_service_name="bank",
    )


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"},
            "environment variable OTEL_EXPORTER_OTLP_ENDPOINT: 'collector:4318' is not an http",
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://u:secret@collector:4318"},
            "must not hold credentials",
        ),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://" + "a" * 3000}, "at most 2048"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://:4318"}, "has no host"),
        (
            {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "environment variable OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' is not supported",
        ),
        ({"AGGREGATE_TRACE_EXPORT_TIMEOUT_MS": "0"}, "AGGREGATE_TRACE_EXPORT_TIMEOUT_MS"),
        ({"AGGREGATE_OTEL_SERVICE_NAME": "x"}, "unknown environment variable"),
    ],
)
def test_bad_tracing_values_name_the_variable(env: dict[str, str], fragment: str) -> None:
    message = config_error(env)
    assert fragment in message
    assert "secret" not in message

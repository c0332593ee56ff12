"""Typed settings: defaults, parsing, and errors that name the variable and say what to fix."""

from __future__ import annotations

import pytest

from perennial.config import (
    ConfigError,
    GrpcSecuritySettings,
    ProcessSettings,
    RedisSettings,
    help_requested,
    settings_table,
)


class _Redis(ProcessSettings, RedisSettings):
    """A service-like settings class for the tests."""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PERENNIAL_REDIS_URL", "PERENNIAL_REDIS_SENTINELS", "PERENNIAL_METRICS_PORT"):
        monkeypatch.delenv(name, raising=False)


def test_defaults_parsing_and_inf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERENNIAL_REDIS_URL", "redis://127.0.0.1:6379/0")
    monkeypatch.setenv("PERENNIAL_METRICS_PORT", "9200")
    monkeypatch.setenv("PERENNIAL_REDIS_TIMEOUT_SECONDS", "inf")
    settings = _Redis.load()
    assert (settings.metrics_port, settings.log_level, settings.redis_cluster) == (
        9200,
        "INFO",
        False,
    )
    assert settings.redis_timeout_seconds == float("inf")


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        ({}, "PERENNIAL_REDIS_URL is required but not set"),
        ({"PERENNIAL_REDIS_URL": "http://x"}, "PERENNIAL_REDIS_URL='http://x': not a Redis URL"),
        (
            {"PERENNIAL_REDIS_URL": "redis://x", "PERENNIAL_METRICS_PORT": "ninety"},
            "PERENNIAL_METRICS_PORT='ninety': Input should be a valid integer",
        ),
        (
            {"PERENNIAL_REDIS_URL": "redis://x", "PERENNIAL_METRICS_PORT": "70000"},
            "PERENNIAL_METRICS_PORT='70000': Input should be less than or equal to 65535",
        ),
        ({"PERENNIAL_REDIS_SENTINELS": "a,b"}, "PERENNIAL_REDIS_SENTINELS='a,b': use host:port"),
        (
            {"PERENNIAL_REDIS_URL": "redis://x", "PERENNIAL_LOG_LEVEL": "loud"},
            "PERENNIAL_LOG_LEVEL='LOUD': Input should be 'DEBUG', 'INFO', 'WARNING' or 'ERROR'",
        ),
    ],
)
def test_errors_name_the_variable(monkeypatch, environment, message) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _Redis.load()


def test_secrets_are_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERENNIAL_REDIS_URL", "redis://x")
    monkeypatch.setenv("PERENNIAL_REDIS_PASSWORD", "hunter2")
    settings = _Redis.load()
    assert (
        "hunter2" not in repr(settings) and settings.redis_password.get_secret_value() == "hunter2"
    )


def test_table_and_help_list_every_variable(capsys: pytest.CaptureFixture[str]) -> None:
    table = settings_table(GrpcSecuritySettings)
    for name in GrpcSecuritySettings.model_fields:
        assert f"`PERENNIAL_{name.upper()}`" in table
    assert help_requested(GrpcSecuritySettings, "svc", ["--help"]) is True
    assert "PERENNIAL_AUTH_TOKEN_FILE" in capsys.readouterr().out
    assert help_requested(GrpcSecuritySettings, "svc", []) is False

"""Configuration from the environment: defaults, casting, and errors that name the variable."""

import pytest

from perennial.config import ConfigError, env


def test_default_cast_and_required(monkeypatch):
    monkeypatch.delenv("PERENNIAL_X", raising=False)
    assert env("PERENNIAL_X", 7, int) == 7
    monkeypatch.setenv("PERENNIAL_X", "12")
    assert env("PERENNIAL_X", 7, int) == 12
    monkeypatch.setenv("PERENNIAL_X", "inf")
    assert env("PERENNIAL_X", 1.0, float) == float("inf")


def test_missing_required_value_names_the_variable(monkeypatch):
    monkeypatch.delenv("PERENNIAL_REDIS_URL", raising=False)
    with pytest.raises(ConfigError, match="PERENNIAL_REDIS_URL is required"):
        env("PERENNIAL_REDIS_URL")


def test_malformed_value_names_the_variable_and_value(monkeypatch):
    monkeypatch.setenv("PERENNIAL_BATCH_SIZE", "sixteen")
    with pytest.raises(ConfigError, match="PERENNIAL_BATCH_SIZE='sixteen' is invalid"):
        env("PERENNIAL_BATCH_SIZE", 16, int)

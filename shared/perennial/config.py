"""Configuration from the environment: one helper, clear errors naming the variable."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
_MISSING = object()


class ConfigError(ValueError):
    """A missing or malformed environment variable."""


def env(name: str, default: object = _MISSING, cast: Callable[[str], T] = str) -> T:
    """`cast(os.environ[name])`, or `default`; a missing required value names the variable."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        if default is _MISSING:
            raise ConfigError(f"environment variable {name} is required but not set")
        return default  # type: ignore[return-value]
    try:
        return cast(raw)
    except ValueError as error:
        raise ConfigError(f"environment variable {name}={raw!r} is invalid: {error}") from error

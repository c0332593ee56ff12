"""JSON logs to stdout, one object per line (what log collectors on Kubernetes expect).

Everything a service process writes goes through here: its own loggers, the libraries'
loggers (transformers' own stderr handler is replaced by propagation), Python warnings
(`logging.captureWarnings`), and no progress bars (transformers and huggingface_hub draw
them on stderr while loading weights).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
import time
from pathlib import Path


def _plain(value: object) -> object:
    """A JSON value for a structured field: containers become lists, paths and times text."""
    if isinstance(value, set | frozenset | tuple):
        return sorted(value, key=str) if isinstance(value, set | frozenset) else list(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, Path | datetime.datetime | datetime.date):
        return str(value)
    raise TypeError(f"log fields must be JSON values, got {type(value).__name__}")


class JsonFormatter(logging.Formatter):
    """One JSON object per log record, with the record's structured `fields`."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        try:
            return json.dumps(entry, default=_plain)
        except TypeError as error:  # a field that is no JSON value: say so, never print a repr
            entry = {k: v for k, v in entry.items() if k in ("time", "level", "logger", "message")}
            entry["log_error"] = str(error)
            return json.dumps(entry)


def silence_progress_bars() -> None:
    """No progress bars from transformers or huggingface_hub (they are not log lines)."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.disable_default_handler()  # transformers' records reach our JSON handler instead
    hf_logging.enable_propagation()


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
    logging.captureWarnings(True)
    logging.getLogger("kafka").setLevel(logging.WARNING)
    silence_progress_bars()

"""JSON log lines: structured fields as JSON values, never Python reprs; no progress bars."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

from perennial import logs


def record(**fields: object) -> logging.LogRecord:
    entry = logging.LogRecord("perennial.test", logging.INFO, __file__, 1, "hello", None, None)
    entry.fields = fields
    return entry


def test_fields_are_json_values() -> None:
    line = logs.JsonFormatter().format(
        record(partitions={"t:1", "t:0"}, offsets=("a", 1), path=Path("/x"), raw=b"ok", n=3)
    )
    entry = json.loads(line)
    assert entry["message"] == "hello" and entry["level"] == "info"
    assert entry["partitions"] == ["t:0", "t:1"]
    assert entry["offsets"] == ["a", 1]
    assert entry["path"] == "/x" and entry["raw"] == "ok" and entry["n"] == 3


def test_an_object_field_is_reported_not_printed_as_a_repr() -> None:
    class Partition:
        def __repr__(self) -> str:
            return "Partition(topic='t', partition=0)"

    entry = json.loads(logs.JsonFormatter().format(record(partition=Partition())))
    assert entry["message"] == "hello"
    assert "Partition" in entry["log_error"] and "topic=" not in json.dumps(entry)


def test_configure_routes_warnings_and_transformers_into_json(capsys) -> None:
    from transformers.utils import logging as hf_logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    logs.configure("INFO")
    try:
        warnings.warn("careful", UserWarning, stacklevel=1)
        hf_logging.get_logger("transformers.test").warning("from transformers")
        assert not hf_logging.is_progress_bar_enabled()
        out, err = capsys.readouterr()
        lines = [json.loads(line) for line in out.splitlines()]
        assert any("careful" in e["message"] for e in lines)
        assert any(e["message"] == "from transformers" for e in lines)
        assert err == ""
    finally:
        logging.captureWarnings(False)
        hf_logging.enable_progress_bar()
        hf_logging.disable_propagation()
        hf_logging.enable_default_handler()
        root.handlers[:], root.level = handlers, level

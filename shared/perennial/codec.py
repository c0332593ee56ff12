"""Stream codec: `perennial.v1.Example` records on Kafka, as protobuf or JSON.

A record value is either the protobuf encoding of `perennial.v1.Example` or a
JSON object with the same field names, so a person can produce with kcat::

    {"adapter": "wordnet", "example_id": "42", "text": "a domesticated canine",
     "label": "noun.animal", "event_time": "2026-11-23T14:00:00Z"}

`event_time` in JSON is RFC 3339 or seconds since the epoch; when missing, the
Kafka record timestamp is used. Every decode error is a `DecodeError` whose
`reason` is a short, stable class name (for dead-letter headers and metrics).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime

from google.protobuf.message import DecodeError as ProtobufDecodeError

from perennial.v1 import example_pb2

ADAPTER_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
MAX_TEXT_CHARS = 4096
MAX_LABEL_CHARS = 128


class DecodeError(ValueError):
    """A record that cannot become an `Example`; `reason` names the error class."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Example:
    """One validated, labelled text example."""

    adapter: str
    example_id: str
    text: str
    label: str
    event_time: float  # seconds since the epoch


def encode(example: Example) -> bytes:
    """The protobuf wire form of `example`."""
    message = example_pb2.Example(
        adapter=example.adapter,
        example_id=example.example_id,
        text=example.text,
        label=example.label,
    )
    seconds = int(example.event_time // 1)
    message.event_time.seconds = seconds
    message.event_time.nanos = round((example.event_time - seconds) * 1e9)
    return message.SerializeToString()


def encode_json(example: Example) -> bytes:
    """The JSON form of `example` (what a person would type into kcat)."""
    fields = {
        "adapter": example.adapter,
        "example_id": example.example_id,
        "text": example.text,
        "label": example.label,
        "event_time": example.event_time,
    }
    return json.dumps(fields).encode()


def decode(
    value: bytes | None, *, key: bytes | None = None, timestamp_ms: int | None = None
) -> Example:
    """Decode and validate one record value; raise `DecodeError` saying what is wrong."""
    if not value:
        raise DecodeError("EmptyRecord", "record value is empty")
    fields = _from_json(value) if value.lstrip()[:1] in (b"{", b"[") else _from_protobuf(value)
    if fields.get("event_time") is None:
        fields["event_time"] = timestamp_ms / 1000 if timestamp_ms is not None else None
    example = _validate(fields)
    if key is not None and key.decode("utf-8", "replace") != example.adapter:
        raise DecodeError(
            "KeyMismatch",
            f"record key {key!r} differs from adapter {example.adapter!r}; key records by adapter id",
        )
    return example


def _from_protobuf(value: bytes) -> dict:
    message = example_pb2.Example()
    try:
        message.ParseFromString(value)
    except ProtobufDecodeError as error:
        raise DecodeError("MalformedProtobuf", f"not a perennial.v1.Example: {error}") from error
    if message.WhichOneof("input") == "tensor":
        raise DecodeError(
            "UnsupportedInput", "tensor inputs need a tensor backbone; this adapter is text"
        )
    return {
        "adapter": message.adapter,
        "example_id": message.example_id,
        "text": message.text,
        "label": message.label,
        "event_time": (
            message.event_time.seconds + message.event_time.nanos / 1e9
            if message.HasField("event_time")
            else None
        ),
    }


def _from_json(value: bytes) -> dict:
    try:
        fields = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DecodeError("MalformedJson", f"invalid JSON: {error}") from error
    if not isinstance(fields, dict):
        raise DecodeError("MalformedJson", "JSON record must be an object")
    if "tensor" in fields:
        raise DecodeError(
            "UnsupportedInput", "tensor inputs need a tensor backbone; this adapter is text"
        )
    fields["event_time"] = _json_time(fields.get("event_time"))
    return fields


def _json_time(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    raise DecodeError("InvalidField", f"event_time {value!r} is neither RFC 3339 nor epoch seconds")


def _validate(fields: dict) -> Example:
    adapter, text, label = fields.get("adapter"), fields.get("text"), fields.get("label")
    example_id, event_time = fields.get("example_id") or "", fields.get("event_time")
    if not isinstance(adapter, str) or not ADAPTER_ID.match(adapter):
        raise DecodeError(
            "InvalidAdapter", f"adapter {adapter!r} must match {ADAPTER_ID.pattern} (lowercase id)"
        )
    if not isinstance(label, str) or not label.strip():
        raise DecodeError("MissingLabel", "label is missing or empty")
    if len(label) > MAX_LABEL_CHARS:
        raise DecodeError(
            "InvalidField", f"label has {len(label)} characters; at most {MAX_LABEL_CHARS}"
        )
    if not isinstance(text, str) or not text.strip():
        raise DecodeError("MissingInput", "text is missing or empty")
    if len(text) > MAX_TEXT_CHARS:
        raise DecodeError(
            "TextTooLong", f"text has {len(text)} characters; at most {MAX_TEXT_CHARS}"
        )
    if not isinstance(example_id, str):
        raise DecodeError("InvalidField", f"example_id {example_id!r} must be a string")
    if event_time is None or event_time != event_time or event_time < 0:
        raise DecodeError(
            "InvalidField", f"event_time {event_time!r} is missing or not a valid time"
        )
    return Example(adapter, example_id, text, label.strip(), float(event_time))

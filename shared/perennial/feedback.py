"""The prediction log and delayed feedback on Kafka: `perennial.v1.Prediction` and `Feedback`.

The inference service writes one `Prediction` per served row to `perennial.predictions`
(key = adapter id); a client that learns the truth later sends a `Feedback` to
`perennial.feedback`, as protobuf or as JSON::

    {"prediction_id": "0193a5c4-...", "label": "noun.animal"}

Prediction ids are UUIDv7 (RFC 9562): the first 48 bits are the prediction's time in
milliseconds, so the trainer can tell late feedback from feedback about a prediction it
never saw without keeping every id. Decoding validates like `perennial.codec` and raises
only `DecodeError`, whose `reason` goes into the dead-letter headers.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
import uuid
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError as ProtobufDecodeError

from perennial.codec import (
    MAX_EVENT_TIME,
    MAX_LABEL_CHARS,
    MIN_EVENT_TIME,
    DecodeError,
    _from_json,
    valid_adapter_id,
)
from perennial.v1 import feedback_pb2

PREDICTION_ID_CHARS = 36


def new_prediction_id(now: float | None = None) -> str:
    """A fresh UUIDv7 whose time is `now` (seconds since the epoch; default: the clock)."""
    millis = int((time.time() if now is None else now) * 1000) & ((1 << 48) - 1)
    value = (millis << 80) | (0x7 << 76) | (secrets.randbits(12) << 64)
    value |= (0b10 << 62) | secrets.randbits(62)
    return str(uuid.UUID(int=value))


def prediction_time(prediction_id: str) -> float | None:
    """When a prediction id was made (seconds), or None if it is not a UUIDv7."""
    try:
        parsed = uuid.UUID(prediction_id)
    except (ValueError, TypeError, AttributeError):
        return None
    if parsed.version != 7 or str(parsed) != prediction_id:
        return None
    return (parsed.int >> 80) / 1000


def sha256_of(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class LoggedPrediction:
    """One served row: its id, adapter, version, label, class scores and input (or its hash)."""

    prediction_id: str
    adapter: str
    version: str
    label: str
    event_time: float
    text: str = ""  # empty when only the hash was logged
    input_sha256: str = ""
    scores: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Feedback:
    """The true label of a prediction, known later."""

    prediction_id: str
    label: str
    event_time: float


def _timestamp(message, seconds: float) -> None:
    whole = int(seconds // 1)
    nanos = min(round((seconds - whole) * 1e9), 999_999_999)
    message.seconds, message.nanos = whole, nanos


def _seconds(message, present: bool) -> float | None:
    if not present:
        return None
    if not 0 <= message.nanos < 1_000_000_000:
        raise DecodeError("InvalidTime", f"nanos {message.nanos} out of range")
    return message.seconds + message.nanos / 1e9


def encode_prediction(prediction: LoggedPrediction) -> bytes:
    message = feedback_pb2.Prediction(
        prediction_id=prediction.prediction_id,
        adapter=prediction.adapter,
        version=prediction.version,
        label=prediction.label,
        scores=prediction.scores,
    )
    if prediction.text:
        message.text = prediction.text
    else:
        message.input_sha256 = prediction.input_sha256
    _timestamp(message.event_time, prediction.event_time)
    return message.SerializeToString()


def encode_feedback(feedback: Feedback) -> bytes:
    message = feedback_pb2.Feedback(prediction_id=feedback.prediction_id, label=feedback.label)
    _timestamp(message.event_time, feedback.event_time)
    return message.SerializeToString()


def encode_feedback_json(feedback: Feedback) -> bytes:
    return json.dumps(
        {
            "prediction_id": feedback.prediction_id,
            "label": feedback.label,
            "event_time": feedback.event_time,
        }
    ).encode()


def _fields(value: bytes | None, message_type) -> dict:
    """The record's fields from JSON or protobuf (`message_type`), times as seconds."""
    if not value:
        raise DecodeError("EmptyRecord", "record value is empty")
    if value.lstrip()[:1] in (b"{", b"["):
        return _from_json(value)
    message = message_type()
    try:
        message.ParseFromString(value)
    except (ProtobufDecodeError, RuntimeError, ValueError) as error:
        raise DecodeError(
            "MalformedProtobuf", f"not a perennial.v1.{message_type.__name__}: {error}"
        ) from error
    fields = {f.name: v for f, v in message.ListFields()}
    fields["event_time"] = _seconds(message.event_time, message.HasField("event_time"))
    return fields


def _event_time(fields: dict, timestamp_ms: int | None) -> float:
    event_time = fields.get("event_time")
    if event_time is None and timestamp_ms is not None and timestamp_ms >= 0:
        event_time = timestamp_ms / 1000
    if event_time is None:
        raise DecodeError("InvalidTime", "event_time is missing and the record has no timestamp")
    if not (MIN_EVENT_TIME <= event_time <= MAX_EVENT_TIME):
        raise DecodeError("InvalidTime", f"event_time {event_time!r} is out of range")
    return float(event_time)


def _label(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DecodeError("MissingLabel", "label is missing or empty")
    label = value.strip()
    if len(label) > MAX_LABEL_CHARS or not label.isprintable():
        raise DecodeError("InvalidLabel", f"label must be printable, at most {MAX_LABEL_CHARS}")
    return label


def _prediction_id(value: object) -> str:
    if not isinstance(value, str) or prediction_time(value) is None:
        raise DecodeError(
            "InvalidPredictionId", f"prediction_id {str(value)[:80]!r} is not a UUIDv7 we issued"
        )
    return value


def decode_feedback(value: bytes | None, *, timestamp_ms: int | None = None) -> Feedback:
    """Decode and validate one feedback record; raise `DecodeError` saying what is wrong."""
    try:
        fields = _fields(value, feedback_pb2.Feedback)
        return Feedback(
            _prediction_id(fields.get("prediction_id")),
            _label(fields.get("label")),
            _event_time(fields, timestamp_ms),
        )
    except DecodeError:
        raise
    except Exception as error:  # noqa: BLE001 - any other failure is still this record's fault
        raise DecodeError("Undecodable", f"{type(error).__name__}: {error}"[:500]) from error


def decode_prediction(value: bytes | None, *, timestamp_ms: int | None = None) -> LoggedPrediction:
    """Decode and validate one prediction-log record; raise `DecodeError` if it is not one."""
    try:
        fields = _fields(value, feedback_pb2.Prediction)
        adapter = fields.get("adapter")
        if not valid_adapter_id(adapter):
            raise DecodeError("InvalidAdapter", f"adapter {str(adapter)[:80]!r} is not an id")
        scores = fields.get("scores") or {}
        return LoggedPrediction(
            _prediction_id(fields.get("prediction_id")),
            adapter,
            str(fields.get("version") or ""),
            _label(fields.get("label")),
            _event_time(fields, timestamp_ms),
            text=str(fields.get("text") or ""),
            input_sha256=str(fields.get("input_sha256") or ""),
            scores={str(k): float(v) for k, v in dict(scores).items()},
        )
    except DecodeError:
        raise
    except Exception as error:  # noqa: BLE001
        raise DecodeError("Undecodable", f"{type(error).__name__}: {error}"[:500]) from error

"""Stream codec: `perennial.v1.Example` records on Kafka, as protobuf or JSON.

A record value is either the protobuf encoding of `perennial.v1.Example` or a
JSON object with the same field names, so a person can produce with kcat::

    {"adapter": "wordnet", "example_id": "42", "text": "a domesticated canine",
     "label": "noun.animal", "event_time": "2026-11-23T14:00:00Z"}

`event_time` in JSON is RFC 3339 or seconds since the epoch; when missing, the
Kafka record timestamp is used. Every decode error is a `DecodeError` whose
`reason` is a short, stable class name (for dead-letter headers and metrics), and
`decode` raises nothing else whatever the bytes: a record either becomes an
`Example` or a dead letter with a reason (tests/shared/test_codec_properties.py).
Checks are exact: ids must match their whole pattern (no trailing newline), times
must be finite and within `MIN_EVENT_TIME`..`MAX_EVENT_TIME`, JSON may nest at most
`MAX_JSON_DEPTH` levels.

Image deployments (`InputSpec("image", (C, H, W))`, from `PERENNIAL_BACKBONE=image` and
`PERENNIAL_IMAGE_SHAPE`) take a `tensor` instead of `text`: FP32 values, row-major, with the
shape in the record (protobuf `perennial.v1.Tensor`; JSON
``"tensor": {"shape": [1, 28, 28], "values": [0.0, ...]}``). The shape must be the
deployment's (C, H, W), or (H, W) when C is 1; the values finite. A text record to an image
deployment, or a tensor to a text one, is `UnsupportedInput`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import numpy as np
from google.protobuf.message import DecodeError as ProtobufDecodeError

from perennial.v1 import example_pb2

# Used with fullmatch: `$` alone would accept a trailing newline ("evil\n").
ADAPTER_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
MAX_TEXT_CHARS = 4096
MAX_LABEL_CHARS = 128
MAX_EXAMPLE_ID_CHARS = 256
MIN_EVENT_TIME = 0.0
MAX_EVENT_TIME = 253402300799.0  # 9999-12-31T23:59:59Z: the last instant RFC 3339 can write
MAX_JSON_DEPTH = 8  # an Example is a flat object; deeper nesting is hostile or a mistake
MAX_TENSOR_DIMS = 4


def valid_adapter_id(name: object) -> bool:
    """Whether `name` is an adapter id: the whole string matches `ADAPTER_ID`."""
    return isinstance(name, str) and ADAPTER_ID.fullmatch(name) is not None


class DecodeError(ValueError):
    """A record that cannot become an `Example`; `reason` names the error class."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Tensor:
    """A dense FP32 input: its shape and its values as little-endian float32 bytes, row-major
    (bytes, so an `Example` stays immutable, comparable and hashable)."""

    shape: tuple[int, ...]
    values: bytes

    @classmethod
    def from_array(cls, array) -> Tensor:
        array = np.asarray(array, dtype="<f4")
        return cls(tuple(int(d) for d in array.shape), np.ascontiguousarray(array).tobytes())

    def array(self) -> np.ndarray:
        """The values as a read-only float32 array of `shape`."""
        return np.frombuffer(self.values, dtype="<f4").reshape(self.shape)


@dataclass(frozen=True)
class InputSpec:
    """What a deployment's backbone takes: texts, or FP32 images of one shape (C, H, W)."""

    kind: Literal["text", "image"] = "text"
    shape: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ("text", "image"):
            raise ValueError(f"input kind must be 'text' or 'image', got {self.kind!r}")
        if self.kind == "image" and (len(self.shape) != 3 or min(self.shape) < 1):
            raise ValueError(f"an image input needs a shape (C, H, W), got {self.shape}")

    def accepts(self, shape: tuple[int, ...]) -> bool:
        """Whether an image of `shape` is this deployment's: (C, H, W), or (H, W) when C is 1."""
        return tuple(shape) == self.shape or (self.shape[0] == 1 and tuple(shape) == self.shape[1:])


TEXT = InputSpec()


@dataclass(frozen=True)
class Example:
    """One validated, labelled example: a text, or (image deployments) a tensor."""

    adapter: str
    example_id: str
    text: str
    label: str
    event_time: float  # seconds since the epoch
    tensor: Tensor | None = None  # shaped as the deployment's `InputSpec.shape`

    @property
    def input(self):
        """What the learner takes: the text, or the image as a float32 torch tensor [C, H, W]."""
        if self.tensor is None:
            return self.text
        import torch  # only trainers need it; producers import this module too

        return torch.from_numpy(self.tensor.array().copy())


def encode(example: Example) -> bytes:
    """The protobuf wire form of `example`."""
    message = example_pb2.Example(
        adapter=example.adapter, example_id=example.example_id, label=example.label
    )
    if example.tensor is not None:
        message.tensor.shape.extend(example.tensor.shape)
        message.tensor.values.extend(example.tensor.array().ravel().tolist())
    else:
        message.text = example.text
    seconds = int(example.event_time // 1)
    nanos = round((example.event_time - seconds) * 1e9)
    if nanos >= 1_000_000_000:  # rounding carried into the next second
        seconds, nanos = seconds + 1, nanos - 1_000_000_000
    message.event_time.seconds = seconds
    message.event_time.nanos = nanos
    return message.SerializeToString()


def encode_json(example: Example) -> bytes:
    """The JSON form of `example` (what a person would type into kcat)."""
    fields: dict[str, object] = {"adapter": example.adapter, "example_id": example.example_id}
    if example.tensor is not None:
        values = example.tensor.array().ravel().tolist()
        fields["tensor"] = {"shape": list(example.tensor.shape), "values": values}
    else:
        fields["text"] = example.text
    fields.update(label=example.label, event_time=example.event_time)
    return json.dumps(fields).encode()


def decode(
    value: bytes | None,
    *,
    key: bytes | None = None,
    timestamp_ms: int | None = None,
    spec: InputSpec = TEXT,
) -> Example:
    """Decode and validate one record value for a deployment that takes `spec`; raise
    `DecodeError` saying what is wrong."""
    try:
        return _decode(value, key, timestamp_ms, spec)
    except DecodeError:
        raise
    except Exception as error:  # noqa: BLE001 - any other failure is still this record's fault
        raise DecodeError(
            "Undecodable", f"record could not be decoded: {type(error).__name__}: {error}"[:500]
        ) from error


def _decode(
    value: bytes | None, key: bytes | None, timestamp_ms: int | None, spec: InputSpec
) -> Example:
    if not value:
        raise DecodeError("EmptyRecord", "record value is empty")
    fields = _from_json(value) if value.lstrip()[:1] in (b"{", b"[") else _from_protobuf(value)
    if fields.get("event_time") is None and timestamp_ms is not None and timestamp_ms >= 0:
        fields["event_time"] = timestamp_ms / 1000
    example = _validate(fields, spec)
    if key is not None and key.decode("utf-8", "replace") != example.adapter:
        raise DecodeError(
            "KeyMismatch",
            f"record key {key[:80]!r} differs from adapter {example.adapter!r}; key records by adapter id",
        )
    return example


def _from_protobuf(value: bytes) -> dict:
    message = example_pb2.Example()
    try:
        message.ParseFromString(value)
    except (ProtobufDecodeError, RuntimeError, ValueError) as error:  # e.g. recursion limit
        raise DecodeError("MalformedProtobuf", f"not a perennial.v1.Example: {error}") from error
    if message.HasField("event_time") and not 0 <= message.event_time.nanos < 1_000_000_000:
        raise DecodeError(
            "InvalidTime", f"event_time nanos {message.event_time.nanos} out of range"
        )
    return {
        "adapter": message.adapter,
        "example_id": message.example_id,
        "text": message.text,
        "tensor": (
            {"shape": list(message.tensor.shape), "values": message.tensor.values}
            if message.WhichOneof("input") == "tensor"
            else None
        ),
        "label": message.label,
        "event_time": (
            message.event_time.seconds + message.event_time.nanos / 1e9
            if message.HasField("event_time")
            else None
        ),
    }


def _json_depth(value: bytes) -> int:
    """Deepest bracket nesting, counted without parsing (so a 100k-deep array costs no recursion)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in value:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_JSON_DEPTH:
                    return deepest
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


def _from_json(value: bytes) -> dict:
    if _json_depth(value) > MAX_JSON_DEPTH:
        raise DecodeError("TooDeep", f"JSON nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        fields = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
        raise DecodeError("MalformedJson", f"invalid JSON: {error}"[:500]) from error
    if not isinstance(fields, dict):
        raise DecodeError("MalformedJson", "JSON record must be an object")
    fields["event_time"] = _json_time(fields.get("event_time"))
    return fields


def _json_time(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if not MIN_EVENT_TIME <= value <= MAX_EVENT_TIME:  # before float(): 400 digits overflow
            raise DecodeError("InvalidTime", f"event_time {str(value)[:40]} is out of range")
        return float(value)
    if isinstance(value, float):
        return value
    if isinstance(value, str) and len(value) <= 64:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            if parsed.tzinfo is None:  # RFC 3339 requires an offset; read a missing one as UTC
                parsed = parsed.replace(tzinfo=UTC)
            return parsed.timestamp()
    raise DecodeError(
        "InvalidField", f"event_time {str(value)[:80]!r} is neither RFC 3339 nor epoch seconds"
    )


def _validate(fields: dict, spec: InputSpec) -> Example:
    adapter, text, label = fields.get("adapter"), fields.get("text"), fields.get("label")
    example_id, event_time = fields.get("example_id") or "", fields.get("event_time")
    if not valid_adapter_id(adapter):
        shown = repr(adapter)[:80]
        raise DecodeError(
            "InvalidAdapter", f"adapter {shown} must match {ADAPTER_ID.pattern} (lowercase id)"
        )
    if not isinstance(label, str) or not label.strip():
        raise DecodeError("MissingLabel", "label is missing or empty")
    label = label.strip()
    if len(label) > MAX_LABEL_CHARS:
        raise DecodeError(
            "LabelTooLong", f"label has {len(label)} characters; at most {MAX_LABEL_CHARS}"
        )
    if not label.isprintable():
        raise DecodeError("InvalidLabel", "label holds control characters")
    tensor = _input(fields, text, spec)
    if not isinstance(example_id, str) or len(example_id) > MAX_EXAMPLE_ID_CHARS:
        raise DecodeError(
            "InvalidField",
            f"example_id must be a string of at most {MAX_EXAMPLE_ID_CHARS} characters",
        )
    if event_time is None:
        raise DecodeError("InvalidTime", "event_time is missing and the record has no timestamp")
    if not (MIN_EVENT_TIME <= event_time <= MAX_EVENT_TIME):  # False for NaN too
        raise DecodeError(
            "InvalidTime",
            f"event_time {event_time!r} is not a finite time between 1970 and 9999",
        )
    return Example(adapter, example_id, "" if tensor else text, label, float(event_time), tensor)


def _input(fields: dict, text: object, spec: InputSpec) -> Tensor | None:
    """Check the example's input against the deployment's; the image as a `Tensor` (None: text)."""
    tensor = fields.get("tensor")
    if spec.kind == "text":
        if tensor is not None:
            raise DecodeError(
                "UnsupportedInput",
                "a tensor input needs the image backbone; this deployment's is text "
                "(PERENNIAL_BACKBONE=text): send `text`",
            )
        if not isinstance(text, str) or not text.strip():
            raise DecodeError("MissingInput", "text is missing or empty")
        if len(text) > MAX_TEXT_CHARS:
            raise DecodeError(
                "TextTooLong", f"text has {len(text)} characters; at most {MAX_TEXT_CHARS}"
            )
        return None
    wanted = list(spec.shape)
    if tensor is None:
        if text:
            raise DecodeError(
                "UnsupportedInput",
                f"this deployment's backbone is image (PERENNIAL_BACKBONE=image): send `tensor` "
                f"with shape {wanted} and FP32 values instead of `text`",
            )
        raise DecodeError("MissingInput", f"tensor is missing; send shape {wanted} and its values")
    if not isinstance(tensor, dict):
        raise DecodeError("InvalidTensor", "tensor must be an object with `shape` and `values`")
    shape, values = tensor.get("shape"), tensor.get("values")
    if (
        not isinstance(shape, list)
        or not 1 <= len(shape) <= MAX_TENSOR_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise DecodeError(
            "InvalidTensor",
            f"tensor shape {str(shape)[:80]} must be a list of sizes, e.g. {wanted}",
        )
    if not spec.accepts(tuple(shape)):
        raise DecodeError(
            "InvalidShape",
            f"tensor shape {shape} is not this deployment's image shape {wanted} "
            f"(PERENNIAL_IMAGE_SHAPE)",
        )
    count = math.prod(shape)
    if isinstance(values, (str, bytes, dict)) or not hasattr(values, "__len__"):
        raise DecodeError("InvalidTensor", "tensor values must be a list of numbers")
    if len(values) != count:
        raise DecodeError(
            "InvalidTensor", f"tensor holds {len(values)} values; shape {shape} needs {count}"
        )
    if isinstance(values, list) and not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
    ):
        raise DecodeError("InvalidTensor", "tensor values must all be numbers")
    with np.errstate(over="ignore"):  # too large for float32: infinite, refused below
        try:
            array = np.asarray(values, dtype=np.float64).astype("<f4")
        except OverflowError:  # an integer beyond float64
            array = np.full(count, np.inf, dtype="<f4")
    if not np.isfinite(array).all():
        raise DecodeError("InvalidTensor", "tensor holds NaN or infinite values")
    return Tensor.from_array(array.reshape(spec.shape))

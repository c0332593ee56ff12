"""Property-based: whatever the bytes, `codec.decode` gives an Example or a DecodeError with a reason."""

from __future__ import annotations

import json
import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from perennial import codec

REASONS = {
    "EmptyRecord",
    "MalformedProtobuf",
    "MalformedJson",
    "TooDeep",
    "InvalidAdapter",
    "MissingLabel",
    "LabelTooLong",
    "InvalidLabel",
    "MissingInput",
    "TextTooLong",
    "InvalidField",
    "InvalidTime",
    "KeyMismatch",
    "UnsupportedInput",
    "InvalidTensor",
    "InvalidShape",
    "Undecodable",
}
IMAGE = codec.InputSpec("image", (1, 2, 3))
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**500), max_value=10**500)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
fields = st.fixed_dictionaries(
    {},
    optional={
        "adapter": st.sampled_from(["a", "evil\n", "A", "a}b", ""]) | json_values,
        "example_id": st.text(max_size=10) | json_values,
        "text": st.text(max_size=30) | json_values,
        "label": st.text(max_size=30) | json_values,
        "event_time": json_values
        | st.sampled_from(["2026-11-23T14:00:00Z", "soon", "9999-12-31T23:59:59+00:00"]),
        "tensor": st.just({}),
    },
)
tensors = st.fixed_dictionaries(
    {},
    optional={
        "shape": st.sampled_from([[1, 2, 3], [2, 3], [3, 2], [1, 2, 3, 1], []]) | json_values,
        "values": st.lists(
            st.floats(width=32) | st.integers(min_value=-(10**40), max_value=10**40),
            min_size=5,
            max_size=7,
        )
        | json_values,
    },
)
image_fields = st.fixed_dictionaries(
    {"adapter": st.just("a"), "label": st.just("l"), "event_time": st.just(1)},
    optional={"tensor": tensors | json_values, "text": st.text(max_size=5)},
)


def _check(
    value: bytes, key: bytes | None, timestamp_ms: int | None, spec: codec.InputSpec = codec.TEXT
) -> None:
    try:
        example = codec.decode(value, key=key, timestamp_ms=timestamp_ms, spec=spec)
    except codec.DecodeError as error:
        assert error.reason in REASONS, error.reason
        assert str(error)
        return
    assert codec.valid_adapter_id(example.adapter)
    assert math.isfinite(example.event_time)
    assert codec.MIN_EVENT_TIME <= example.event_time <= codec.MAX_EVENT_TIME
    assert 0 < len(example.label) <= codec.MAX_LABEL_CHARS and example.label.isprintable()
    if spec.kind == "text":
        assert 0 < len(example.text) <= codec.MAX_TEXT_CHARS and example.tensor is None
    else:  # an image always has the deployment's full shape, finite values
        assert example.tensor.shape == spec.shape and example.text == ""
        assert np.isfinite(example.tensor.array()).all()
    for encode in (codec.encode, codec.encode_json):  # a valid Example survives its wire forms
        again = codec.decode(encode(example), key=key, spec=spec)
        assert again.adapter == example.adapter and again.label == example.label
        assert again.text == example.text and again.tensor == example.tensor
        assert abs(again.event_time - example.event_time) < 1e-3


@SETTINGS
@given(st.binary(max_size=512), st.none() | st.binary(max_size=8), st.none() | st.integers())
def test_arbitrary_bytes(value, key, timestamp_ms):
    _check(value, key, timestamp_ms)


@SETTINGS
@given(
    fields, st.none() | st.just(b"a"), st.none() | st.integers(min_value=-(2**63), max_value=2**63)
)
def test_arbitrary_json_objects(record, key, timestamp_ms):
    _check(json.dumps(record).encode(), key, timestamp_ms)


@SETTINGS
@given(json_values)
def test_arbitrary_json_documents(document):
    _check(json.dumps(document).encode(), None, None)


@SETTINGS
@given(
    st.text(max_size=20),
    st.text(max_size=20),
    st.text(max_size=20),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=-(2**31), max_value=2**31 - 1),
)
def test_arbitrary_protobuf_examples(adapter, text, label, seconds, nanos):
    message = codec.example_pb2.Example(adapter=adapter, text=text, label=label)
    message.event_time.seconds, message.event_time.nanos = seconds, nanos
    _check(message.SerializeToString(), None, None)


@SETTINGS
@given(image_fields, st.sampled_from([codec.TEXT, IMAGE]))
def test_arbitrary_tensor_records(record, spec):
    _check(json.dumps(record).encode(), None, None, spec)


@SETTINGS
@given(
    st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=5),
    st.lists(st.floats(width=32), max_size=8),
    st.sampled_from([codec.TEXT, IMAGE]),
)
def test_arbitrary_protobuf_tensors(shape, values, spec):
    message = codec.example_pb2.Example(adapter="a", label="l")
    message.tensor.shape.extend(shape)
    message.tensor.values.extend(values)
    message.event_time.seconds = 1
    _check(message.SerializeToString(), None, None, spec)

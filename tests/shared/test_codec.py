"""The stream codec: protobuf and JSON forms, and one clear reason per bad record."""

import json
import re

import pytest

from perennial import codec

EXAMPLE = codec.Example("wordnet", "e1", "a domesticated canine", "noun.animal", 1_700_000_000.25)


@pytest.mark.parametrize("encode", [codec.encode, codec.encode_json])
def test_round_trip(encode):
    assert codec.decode(encode(EXAMPLE), key=b"wordnet") == EXAMPLE


def test_json_accepts_rfc3339_and_falls_back_to_record_timestamp():
    value = json.dumps(
        {"adapter": "a", "text": "t", "label": "l", "event_time": "2026-11-23T14:00:00Z"}
    )
    assert codec.decode(value.encode()).event_time == 1795442400.0
    value = json.dumps({"adapter": "a", "text": "t", "label": "l"})
    assert codec.decode(value.encode(), timestamp_ms=1500).event_time == 1.5


@pytest.mark.parametrize(
    ("value", "key", "reason", "hint"),
    [
        (b"", None, "EmptyRecord", "empty"),
        (b"\xff\xff\xff", None, "MalformedProtobuf", "perennial.v1.Example"),
        (b"{not json", None, "MalformedJson", "invalid JSON"),
        (b"[1, 2]", None, "MalformedJson", "object"),
        (
            b'{"adapter": "Bad Id", "text": "t", "label": "l", "event_time": 1}',
            None,
            "InvalidAdapter",
            "must match",
        ),
        (b'{"adapter": "a", "text": "t", "event_time": 1}', None, "MissingLabel", "label"),
        (
            b'{"adapter": "a", "text": "  ", "label": "l", "event_time": 1}',
            None,
            "MissingInput",
            "text",
        ),
        (
            b'{"adapter": "a", "text": "t", "label": "l", "event_time": "yesterday"}',
            None,
            "InvalidField",
            "event_time",
        ),
        (b'{"adapter": "a", "text": "t", "label": "l"}', None, "InvalidTime", "event_time"),
        (
            b'{"adapter": "a", "text": "t", "label": "l", "event_time": 1}',
            b"other",
            "KeyMismatch",
            "key",
        ),
        (
            b'{"adapter": "a", "tensor": {}, "label": "l", "event_time": 1}',
            None,
            "UnsupportedInput",
            "tensor",
        ),
    ],
)
def test_bad_records_name_their_reason(value, key, reason, hint):
    with pytest.raises(codec.DecodeError, match=hint) as caught:
        codec.decode(value, key=key)
    assert caught.value.reason == reason


def test_text_length_is_bounded():
    long = codec.Example("a", "", "x" * (codec.MAX_TEXT_CHARS + 1), "l", 1.0)
    with pytest.raises(codec.DecodeError) as caught:
        codec.decode(codec.encode(long))
    assert caught.value.reason == "TextTooLong"


HOSTILE = [  # (what, value, reason): each seen to crash or fool the trainer before issue 12
    ("adapter id with a trailing newline", {"adapter": "evil\n"}, "InvalidAdapter"),
    ("adapter id with a hash-tag brace", {"adapter": "a}b"}, "InvalidAdapter"),
    ("400-digit event time", {"event_time": 10**400}, "InvalidTime"),
    ("infinite event time", {"event_time": float("inf")}, "InvalidTime"),
    ("NaN event time", {"event_time": float("nan")}, "InvalidTime"),
    ("negative event time", {"event_time": -1}, "InvalidTime"),
    ("event time past year 9999", {"event_time": 1e12}, "InvalidTime"),
    ("RFC 3339 time before 1970", {"event_time": "0001-01-01T00:00:00Z"}, "InvalidTime"),
    ("boolean event time", {"event_time": True}, "InvalidField"),
    ("label too long", {"label": "l" * (codec.MAX_LABEL_CHARS + 1)}, "LabelTooLong"),
    ("label with a control character", {"label": "a\x00b"}, "InvalidLabel"),
    ("numeric label", {"label": 7}, "MissingLabel"),
    ("example id that is an object", {"example_id": {"a": 1}}, "InvalidField"),
]


def _json(**overrides) -> bytes:
    fields = {"adapter": "a", "text": "t", "label": "l", "event_time": 1.0, **overrides}
    return json.dumps(fields).encode()  # json.dumps writes inf/nan as Infinity/NaN


@pytest.mark.parametrize(("what", "overrides", "reason"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_fields_are_dead_letter_reasons(what, overrides, reason):
    with pytest.raises(codec.DecodeError) as caught:
        codec.decode(_json(**overrides))
    assert caught.value.reason == reason, what


def test_deep_nesting_is_refused_without_recursion():
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(codec.DecodeError) as caught:
        codec.decode(b'{"adapter": "a", "text": ' + deep + b"}")
    assert caught.value.reason == "TooDeep"
    with pytest.raises(codec.DecodeError) as caught:
        codec.decode(deep)
    assert caught.value.reason == "TooDeep"
    brackets_in_text = _json(text="[" * 50)  # brackets inside a string are not nesting
    assert codec.decode(brackets_in_text).text == "[" * 50


def test_protobuf_time_out_of_range_is_refused():
    message = codec.example_pb2.Example(adapter="a", text="t", label="l")
    message.event_time.seconds = 10**15
    with pytest.raises(codec.DecodeError) as caught:
        codec.decode(message.SerializeToString())
    assert caught.value.reason == "InvalidTime"


def test_adapter_ids_match_whole():
    assert codec.valid_adapter_id("wordnet-1.a_b")
    for bad in ("evil\n", "\nevil", "Evil", "", "a" * 64, "-a", None, 7):
        assert not codec.valid_adapter_id(bad), bad


# -- image deployments: FP32 tensors of the deployment's shape ----------------------------------
GREY = codec.InputSpec("image", (1, 4, 3))
PIXELS = [[0.0, 0.25, 0.5], [0.75, 1.0, 0.125], [0.5, 0.5, 0.5], [0.0, 1.0, 0.0]]
IMAGE = codec.Example(
    "fashion", "i1", "", "Shirt", 1_700_000_000.5, codec.Tensor.from_array([PIXELS])
)


@pytest.mark.parametrize("encode", [codec.encode, codec.encode_json])
def test_tensor_round_trip(encode):
    decoded = codec.decode(encode(IMAGE), key=b"fashion", spec=GREY)
    assert decoded == IMAGE
    assert decoded.input.shape == (1, 4, 3) and decoded.input.dtype.is_floating_point
    assert decoded.input[0, 1, 2].item() == 0.125


def test_a_grey_image_may_leave_out_its_channel():
    value = {"adapter": "fashion", "label": "Shirt", "event_time": 1}
    value["tensor"] = {"shape": [4, 3], "values": [v for row in PIXELS for v in row]}
    decoded = codec.decode(json.dumps(value).encode(), spec=GREY)
    assert decoded.tensor.shape == (1, 4, 3) and decoded.tensor == IMAGE.tensor


def _image_record(**tensor) -> bytes:
    return json.dumps({"adapter": "fashion", "label": "Shirt", "event_time": 1, **tensor}).encode()


@pytest.mark.parametrize(
    ("value", "reason", "hint"),
    [
        (_image_record(text="a shirt"), "UnsupportedInput", "send `tensor` with shape [1, 4, 3]"),
        (_image_record(), "MissingInput", "tensor is missing"),
        (_image_record(tensor=[1, 2]), "InvalidTensor", "`shape` and `values`"),
        (_image_record(tensor={"shape": "1x4x3", "values": []}), "InvalidTensor", "list of sizes"),
        (
            _image_record(tensor={"shape": [1, 1, 1, 1, 1], "values": [0.0]}),
            "InvalidTensor",
            "list of sizes",
        ),
        (
            _image_record(tensor={"shape": [3, 4, 3], "values": [0.0] * 36}),
            "InvalidShape",
            "[3, 4, 3] is not this deployment's image shape [1, 4, 3]",
        ),
        (
            _image_record(tensor={"shape": [1, 4, 3], "values": [0.0] * 11}),
            "InvalidTensor",
            "11 values; shape [1, 4, 3] needs 12",
        ),
        (
            _image_record(tensor={"shape": [1, 4, 3], "values": "0" * 12}),
            "InvalidTensor",
            "list of numbers",
        ),
        (
            _image_record(tensor={"shape": [1, 4, 3], "values": [0.0] * 11 + [True]}),
            "InvalidTensor",
            "numbers",
        ),
        (
            _image_record(tensor={"shape": [1, 4, 3], "values": [0.0] * 11 + [1e39]}),
            "InvalidTensor",
            "infinite",
        ),
        (
            _image_record(tensor={"shape": [1, 4, 3], "values": [0.0] * 11 + [10**400]}),
            "InvalidTensor",
            "infinite",
        ),
    ],
)
def test_bad_tensor_records_name_their_reason(value, reason, hint):
    with pytest.raises(codec.DecodeError, match=re.escape(hint)) as caught:
        codec.decode(value, spec=GREY)
    assert caught.value.reason == reason


def test_nan_in_a_protobuf_tensor_is_refused():
    message = codec.example_pb2.Example(adapter="fashion", label="Shirt")
    message.tensor.shape.extend([1, 4, 3])
    message.tensor.values.extend([0.0] * 11 + [float("nan")])
    message.event_time.seconds = 1
    with pytest.raises(codec.DecodeError, match="NaN") as caught:
        codec.decode(message.SerializeToString(), spec=GREY)
    assert caught.value.reason == "InvalidTensor"


def test_a_tensor_to_a_text_deployment_says_which_backbone_it_runs():
    with pytest.raises(codec.DecodeError, match="PERENNIAL_BACKBONE=text") as caught:
        codec.decode(codec.encode(IMAGE))
    assert caught.value.reason == "UnsupportedInput"

"""The stream codec: protobuf and JSON forms, and one clear reason per bad record."""

import json

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

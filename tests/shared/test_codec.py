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
        (b'{"adapter": "a", "text": "t", "label": "l"}', None, "InvalidField", "event_time"),
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

"""The prediction-log and feedback codec: protobuf and JSON forms, UUIDv7 ids, refusals."""

from __future__ import annotations

import json

import pytest

from perennial.codec import DecodeError
from perennial.feedback import (
    Feedback,
    LoggedPrediction,
    decode_feedback,
    decode_prediction,
    encode_feedback,
    encode_feedback_json,
    encode_prediction,
    new_prediction_id,
    prediction_time,
)


def test_prediction_ids_are_uuid7_carrying_their_time() -> None:
    ids = {new_prediction_id(1_800_000_000.123) for _ in range(1000)}
    assert len(ids) == 1000
    assert {prediction_time(i) for i in ids} == {1_800_000_000.123}
    assert prediction_time("not-an-id") is None
    assert prediction_time("6ba7b810-9dad-11d1-80b4-00c04fd430c8") is None  # a UUIDv1


def test_round_trips() -> None:
    p = LoggedPrediction(
        new_prediction_id(), "ad", "v3-abc", "noun.animal", 1_800_000_000.5, text="a dog",
        scores={"noun.animal": 0.75, "noun.plant": 0.25},
    )  # fmt: skip
    assert decode_prediction(encode_prediction(p)) == p
    hashed = LoggedPrediction(p.prediction_id, "ad", "v3", "x", 1.0, input_sha256="ab" * 32)
    assert decode_prediction(encode_prediction(hashed)) == hashed
    f = Feedback(p.prediction_id, "noun.plant", 1_800_000_100.25)
    assert decode_feedback(encode_feedback(f)) == f
    assert decode_feedback(encode_feedback_json(f)) == f


def test_json_feedback_takes_the_record_time_when_it_has_none() -> None:
    pid = new_prediction_id()
    value = json.dumps({"prediction_id": pid, "label": " noun.plant "}).encode()
    assert decode_feedback(value, timestamp_ms=1_800_000_000_000) == Feedback(
        pid, "noun.plant", 1_800_000_000.0
    )


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"", "EmptyRecord"),
        (b'{"prediction_id": "42", "label": "x", "event_time": 1}', "InvalidPredictionId"),
        (b'{"label": "x", "event_time": 1}', "InvalidPredictionId"),
        (b"[[[[[[[[[[]]]]]]]]]]", "TooDeep"),
        (b"{nope", "MalformedJson"),
        (b"\xff\xfe\x00garbage", "MalformedProtobuf"),
    ],
)
def test_bad_feedback_is_refused_with_a_reason(value: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as raised:
        decode_feedback(value, timestamp_ms=0)
    assert raised.value.reason == reason


def test_feedback_without_a_label_is_refused() -> None:
    value = json.dumps({"prediction_id": new_prediction_id(), "event_time": 1}).encode()
    with pytest.raises(DecodeError) as raised:
        decode_feedback(value)
    assert raised.value.reason == "MissingLabel"

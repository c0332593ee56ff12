"""The feedback join on its own: window, waiting for the log, unknown, evicted and duplicate
feedback, the bound on held predictions and the offsets a restart reads the log again from
(answer marks in the real Redis)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from perennial.feedback import Feedback, LoggedPrediction, new_prediction_id
from services.trainer.join import (
    WAIT,
    AnsweredMarks,
    FeedbackJoin,
    JoinConfig,
    Joined,
    PredictionIndex,
    Refused,
)
from services.trainer.metrics import TrainerMetrics

T0 = 1_800_000_000.0


class Clock:
    """A settable clock."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def prediction(made: float, text: str = "a small dog", label: str = "noun.animal", **kw):
    return LoggedPrediction(new_prediction_id(made), "ad", "v1-abc", label, made, text=text, **kw)


@pytest.fixture
def parts(redis_client):
    config = JoinConfig(window_seconds=60, wait_seconds=5, max_predictions=3)
    registry = CollectorRegistry()
    metrics = TrainerMetrics(registry)
    index = PredictionIndex(config, metrics)
    clock = Clock(T0)
    join = FeedbackJoin(config, index, AnsweredMarks(redis_client, "test", 3600), clock)
    return join, index, clock, registry


def test_feedback_within_the_window_becomes_an_example_of_the_logged_input(parts) -> None:
    join, index, _, _ = parts
    p = prediction(T0)
    index.add(p, "preds:0", 7)
    outcome = join.join(Feedback(p.prediction_id, "noun.plant", T0 + 30), "fb:0@0")
    assert isinstance(outcome, Joined)
    assert outcome.example.text == "a small dog" and outcome.example.label == "noun.plant"
    assert outcome.example.example_id == p.prediction_id and outcome.example.adapter == "ad"
    assert (outcome.served_label, outcome.version, outcome.learnable) == (
        "noun.animal",
        "v1-abc",
        True,
    )


def test_late_feedback_is_refused_even_when_the_prediction_is_gone(parts) -> None:
    join, index, _, _ = parts
    p = prediction(T0)
    index.add(p, "preds:0", 0)
    outcome = join.join(Feedback(p.prediction_id, "noun.animal", T0 + 61), "fb:0@0")
    assert isinstance(outcome, Refused) and outcome.reason == "LateFeedback"
    never_logged = new_prediction_id(T0 - 3600)
    outcome = join.join(Feedback(never_logged, "noun.animal", T0), "fb:0@1")
    assert isinstance(outcome, Refused) and outcome.reason == "LateFeedback"


def test_unknown_feedback_waits_for_the_log_then_is_refused(parts) -> None:
    join, index, clock, _ = parts
    unknown = Feedback(new_prediction_id(T0), "noun.animal", T0 + 1)
    index.caught_up_at = T0 + 1  # read to the end, but the prediction may still be on its way
    assert join.join(unknown, "fb:0@0") is WAIT
    index.caught_up_at = T0 + 5  # read to the end `wait_seconds` after the prediction's time
    outcome = join.join(unknown, "fb:0@0")
    assert isinstance(outcome, Refused) and outcome.reason == "UnknownPrediction"
    future = Feedback(new_prediction_id(T0 + 3600), "noun.animal", T0 + 3600)
    outcome = join.join(future, "fb:0@1")
    assert isinstance(outcome, Refused) and outcome.reason == "UnknownPrediction"


def test_a_duplicate_is_refused_and_a_re_read_of_the_first_answer_is_not(parts) -> None:
    join, index, _, _ = parts
    p = prediction(T0)
    index.add(p, "preds:0", 0)
    first = Feedback(p.prediction_id, "noun.animal", T0 + 1)
    assert isinstance(join.join(first, "fb:0@3"), Joined)
    assert isinstance(join.join(first, "fb:0@3"), Joined)  # the same record, read again
    outcome = join.join(Feedback(p.prediction_id, "noun.plant", T0 + 2), "fb:0@4")
    assert isinstance(outcome, Refused) and outcome.reason == "DuplicateFeedback"
    assert "fb:0@3" in outcome.message


def test_duplicates_are_recognised_by_a_new_join_on_the_same_redis(parts, redis_client) -> None:
    join, index, clock, _ = parts
    p = prediction(T0)
    index.add(p, "preds:0", 0)
    assert isinstance(join.join(Feedback(p.prediction_id, "noun.animal", T0), "fb:0@0"), Joined)
    restarted_index = PredictionIndex(join.config, TrainerMetrics(CollectorRegistry()))
    restarted_index.add(p, "preds:0", 0)
    restarted = FeedbackJoin(
        join.config, restarted_index, AnsweredMarks(redis_client, "test", 3600), clock
    )
    outcome = restarted.join(Feedback(p.prediction_id, "noun.animal", T0), "fb:0@9")
    assert isinstance(outcome, Refused) and outcome.reason == "DuplicateFeedback"


def test_the_index_is_bounded_oldest_first_and_says_so(parts) -> None:
    join, index, _, registry = parts
    held = [prediction(T0 + i) for i in range(5)]
    for offset, p in enumerate(held):
        index.add(p, "preds:0", offset)
    assert len(index) == 3
    assert index.low_water() == {"preds:0": 2}
    dropped = registry.get_sample_value(
        "perennial_trainer_feedback_predictions_dropped_total", {"reason": "bound"}
    )
    assert dropped == 2
    assert registry.get_sample_value("perennial_trainer_feedback_predictions_held") == 3
    outcome = join.join(Feedback(held[0].prediction_id, "noun.animal", T0 + 10), "fb:0@0")
    assert isinstance(outcome, Refused) and outcome.reason == "PredictionEvicted"
    assert isinstance(join.join(Feedback(held[4].prediction_id, "x", T0 + 10), "fb:0@1"), Joined)


def test_predictions_older_than_the_window_expire(parts) -> None:
    _, index, _, registry = parts
    index.add(prediction(T0), "preds:0", 0)
    index.add(prediction(T0 + 66), "preds:1", 0)  # past window + wait after the first
    assert len(index) == 1 and index.low_water() == {"preds:1": 0}
    expired = registry.get_sample_value(
        "perennial_trainer_feedback_predictions_dropped_total", {"reason": "expired"}
    )
    assert expired == 1


def test_a_hashed_input_is_judged_but_not_learnable(parts) -> None:
    join, index, _, _ = parts
    p = prediction(T0, text="", input_sha256="ab" * 32)
    index.add(p, "preds:0", 0)
    outcome = join.join(Feedback(p.prediction_id, "noun.animal", T0), "fb:0@0")
    assert isinstance(outcome, Joined) and not outcome.learnable
    assert outcome.served_label == outcome.example.label

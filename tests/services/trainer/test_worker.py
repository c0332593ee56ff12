"""The trainer core in-process (tiny backbone, real Redis): guardrail, retention, rollback, fencing."""

from __future__ import annotations

import pytest

from perennial.codec import Example
from perennial.errors import InvalidInput, NotFound
from perennial.learners import LearnerConfig
from perennial.pet import LoRAConfig
from perennial.store import StaleParent
from perennial.v1 import events_pb2
from services.trainer.worker import Incoming, Trainer
from tests.services.trainer.conftest import in_process_trainer

TEXTS = {
    "animal": ["a small dog", "a big cat", "a red fox", "a grey wolf"],
    "plant": ["a tall tree", "a green fern", "a wild rose", "a young oak"],
    "artifact": ["an old house", "a fast car", "a wooden chair", "a sharp knife"],
}


class Sent(list):
    """Events the trainer sent, decoded."""

    def __call__(self, topic, key, value):
        self.append((topic, key, events_pb2.Event.FromString(value)))

    def kinds(self):
        return [event.WhichOneof("kind") for _, _, event in self]


@pytest.fixture
def make_trainer(redis_client, tiny_backbone):
    def make(**overrides) -> tuple[Trainer, Sent]:
        sent = Sent()
        config = LearnerConfig(learner="lae", pet=LoRAConfig(rank=2, layers=(0, 1)), lr=1e-2)
        return in_process_trainer(redis_client, tiny_backbone, config, sent, **overrides), sent

    return make


def feed(trainer: Trainer, labels: list[str], start: int = 0, adapter: str = "ad") -> int:
    # as the poll loop does: seek where the trainer asked, stamp what it reads with that epoch
    epoch = trainer.take_rewinds().get("t:0", (trainer._epochs.get("t:0", 0), None))[0]
    records = [
        Incoming(
            "t:0",
            start + i,
            Example(adapter, str(start + i), TEXTS[label][i % 4], label, 1.0),
            epoch=epoch,
        )
        for i, label in enumerate(labels)
    ]
    trainer.deliver(records)
    trainer.work_once(timeout=0)
    return start + len(records)


def test_snapshots_by_count_and_safe_offsets(make_trainer):
    trainer, sent = make_trainer()
    feed(
        trainer, ["animal", "plant"] * 5
    )  # 10 records: 2 batches trained, snapshot at 8, 2 pending
    latest = trainer.store.latest("ad")
    assert latest.examples == 8 and latest.offsets == {"t:0": 8}
    assert trainer.safe_offsets() == {"t:0": 8}  # record 8 is pending: never commit past it
    assert sent.kinds() == ["snapshot_published", "promoted"]


def test_replayed_records_below_the_manifest_are_skipped(make_trainer):
    trainer, _ = make_trainer()
    feed(trainer, ["animal", "plant"] * 4)
    fresh, _ = make_trainer()  # a restarted trainer re-reads from offset 0
    feed(fresh, ["animal", "plant"] * 4)
    assert (
        fresh.adapters["ad"].learner.examples == 8
    )  # loaded from the snapshot, nothing re-applied
    assert not fresh.adapters["ad"].pending


def test_guardrail_holds_a_forgetful_candidate_and_force_promote(make_trainer, monkeypatch):
    trainer, sent = make_trainer(
        holdout_every=2, holdout_per_class=4, guardrail_margin=0.0, guardrail_min_holdout=1
    )
    offset = feed(trainer, ["animal", "plant"] * 8)
    head = trainer.store.head("ad")
    assert head is not None and trainer.store.latest("ad") == head
    state = trainer.adapters["ad"]
    trainer._head_labeller("ad", head)  # the head predicts honestly (cached) ...
    # ... and every candidate forgets everything it knew
    monkeypatch.setattr(
        trainer, "_labeller", lambda predictor: lambda texts: ["artifact"] * len(texts)
    )
    feed(trainer, ["artifact"] * 8, start=offset)
    latest = trainer.store.latest("ad")
    assert trainer.store.head("ad") == head and latest != head
    assert "fell from" in state.held_reason
    assert "held" in sent.kinds()
    assert trainer.metrics.guardrail_holds.labels("ad")._value.get() == 1
    promoted = trainer.promote("ad")
    assert promoted == latest and trainer.store.head("ad") == latest and state.held_reason == ""
    assert sent[-1][2].promoted.forced


def test_retention_and_rollback(make_trainer):
    trainer, sent = make_trainer(retain_versions=2)
    offset = 0
    for _ in range(4):
        offset = feed(trainer, ["animal", "plant"] * 4, start=offset)
    versions = trainer.store.versions("ad")
    assert len(versions) == 2  # head == latest, its parent, nothing else
    old = versions[0]
    trainer.rollback("ad", old)
    assert trainer.store.head("ad").version == old == trainer.store.latest("ad").version
    assert trainer.adapters["ad"].latest.version == old  # continues from the rolled-back version
    feed(trainer, ["animal", "plant"] * 4, start=offset)
    latest = trainer.store.latest("ad")
    assert latest.parent == old
    assert (
        trainer.adapters["ad"].learner.examples
        == trainer.store.manifest("ad", old).examples + 8
        == 32
    )
    assert "rolled_back" in sent.kinds()
    with pytest.raises(NotFound):
        trainer.rollback("ad", "v000001-gone")
    with pytest.raises(InvalidInput):
        trainer.rollback("ad", "")


def test_a_fenced_out_trainer_reloads_and_loses_nothing(make_trainer):
    first, _ = make_trainer()
    second, _ = make_trainer()
    feed(first, ["animal", "plant"] * 4)
    feed(second, ["animal", "plant"] * 4)  # loads first's snapshot: all skipped
    offset = feed(second, ["animal", "plant"] * 4, start=8)  # second writes v2
    with pytest.raises(StaleParent):  # first still believes v1 is the tip
        first.adapters["ad"].new_event_times.append(1.0)
        first._snapshot("ad", first.adapters["ad"])
    assert "ad" not in first.adapters
    feed(first, ["animal", "plant"] * 4, start=offset)
    assert first.store.latest("ad").examples == 24  # reloaded v2 (16), then applied 8 new


def test_pause_stops_learning_until_resumed(make_trainer):
    trainer, _ = make_trainer()
    feed(trainer, ["animal", "plant"] * 2)
    trainer.set_paused("ad", True)
    feed(trainer, ["animal", "plant"] * 4, start=4)
    assert trainer.adapters["ad"].learner.examples == 4 and len(trainer.adapters["ad"].pending) == 8
    trainer.set_paused("ad", False)
    trainer.work_once(timeout=0)
    assert trainer.adapters["ad"].learner.examples == 12
    with pytest.raises(NotFound):
        trainer.set_paused("nobody", True)


def test_a_holdout_too_small_to_judge_promotes(make_trainer, monkeypatch):
    trainer, sent = make_trainer(
        holdout_every=2, holdout_per_class=4, guardrail_margin=0.0, guardrail_min_holdout=100
    )
    offset = feed(trainer, ["animal", "plant"] * 8)
    trainer._head_labeller("ad", trainer.store.head("ad"))
    monkeypatch.setattr(
        trainer, "_labeller", lambda predictor: lambda texts: ["artifact"] * len(texts)
    )
    feed(trainer, ["artifact"] * 8, start=offset)
    assert trainer.store.head("ad") == trainer.store.latest(
        "ad"
    )  # 8 holdout texts < 100: no verdict
    assert "held" not in sent.kinds()


def test_a_failed_snapshot_is_the_adapters_last_error_until_one_succeeds(make_trainer):
    import redis

    from perennial_dev.localstack import free_port

    trainer, _ = make_trainer()
    feed(trainer, ["animal", "plant"] * 4)  # snapshot at 8 examples
    working = trainer.store.redis
    trainer.store.redis = redis.Redis(port=free_port(), socket_connect_timeout=0.5)  # Redis away
    feed(trainer, ["animal", "plant"] * 4, start=8)
    assert trainer.adapters["ad"].last_error.startswith("snapshot failed, retrying:")
    trainer.store.redis = working
    trainer.snapshot_all()
    assert trainer.adapters["ad"].last_error == ""
    assert trainer.store.latest("ad").examples == 16

"""Serving versions and checkpoints on their own cadences (default learner, tiny backbone, real
Redis): small blobs, commits and restarts that follow checkpoints, retention and rollback."""

from __future__ import annotations

import hashlib

import pytest

from perennial.learners import serving_state
from perennial.store import to_safetensors
from services.trainer.worker import Trainer
from tests.services.trainer.conftest import in_process_trainer
from tests.services.trainer.test_worker import feed
from tests.shared.test_fsa import CONFIG


@pytest.fixture
def make_trainer(redis_client, tiny_backbone):
    def make(**overrides) -> Trainer:
        settings = {"checkpoint_every_seconds": 3600, **overrides}
        return in_process_trainer(redis_client, tiny_backbone, CONFIG, **settings)

    return make


def key(kind: str, version: str) -> str:
    return f"perennial:{{ad}}:{kind}:{version}"


def test_versions_are_small_and_commits_follow_checkpoints(make_trainer):
    trainer = make_trainer()
    store = trainer.store
    offset = feed(trainer, ["animal", "plant"] * 4)
    first = store.latest("ad")  # a lineage starts with a checkpoint
    assert first.checkpoint == first.version and first.state_sha256
    offset = feed(trainer, ["animal", "plant"] * 4, start=offset)
    second = store.latest("ad")  # past the warm-up: a serving version, no state
    assert second.state_sha256 is None and second.checkpoint == first.version
    assert not store.redis.exists(key("state", second.version))
    assert store.redis.strlen(key("blob", second.version)) * 3 < store.redis.strlen(
        key("state", first.version)
    )
    assert trainer.safe_offsets() == {"t:0": 8}  # never past what a checkpoint holds
    trainer.snapshot_all(checkpoint=True)  # e.g. on shutdown: nothing new, but uncheckpointed
    third = store.latest("ad")
    assert third.checkpoint == third.version and third.offsets == {"t:0": offset}
    assert trainer.safe_offsets() == {"t:0": offset}


def test_a_restart_relearns_from_the_checkpoint_and_publishes_only_past_latest(make_trainer):
    trainer = make_trainer()
    store = trainer.store
    feed(trainer, ["animal", "plant"] * 4)
    offset = feed(trainer, ["animal", "plant"] * 4, start=8)
    before = store.latest("ad")
    assert before.checkpoint != before.version  # a serving version: a restart re-reads 8..15
    restarted = make_trainer()
    feed(restarted, ["animal", "plant"] * 2, start=8)  # re-read from the committed offset
    state = restarted.adapters["ad"]
    assert state.learner.examples == 12 and state.catch_up == {"t:0": 16}
    restarted.snapshot_all()
    assert store.latest("ad") == before  # behind latest: nothing published
    feed(restarted, ["animal", "plant"] * 2, start=12)
    restarted.snapshot_all()
    assert store.latest("ad") == before  # exactly latest again: nothing new to publish
    relearned = to_safetensors(*serving_state(state.learner))
    assert hashlib.sha256(relearned).hexdigest() == before.sha256  # the same weights
    offset = feed(restarted, ["animal", "plant"] * 4, start=offset)
    after = store.latest("ad")
    assert after.parent == before.version and after.offsets == {"t:0": offset}


def test_retention_keeps_checkpoints_and_a_rollback_resumes_from_one(make_trainer):
    trainer = make_trainer(retain_versions=2)
    store = trainer.store
    offset = 0
    for _ in range(4):
        offset = feed(trainer, ["animal", "plant"] * 4, start=offset)
    first, *_, target, latest = [store.manifest("ad", v) for v in store.versions("ad")]
    assert first.checkpoint == first.version == latest.checkpoint == target.checkpoint
    assert len(store.versions("ad")) == 3  # two newest, and the checkpoint they resume from
    trainer.rollback("ad", target.version)
    state = trainer.adapters["ad"]
    assert store.head("ad") == target and state.latest == target
    assert state.checkpoint == first and state.learner.examples == first.examples
    feed(trainer, ["animal", "plant"] * 4, start=offset)  # learning goes on from the checkpoint
    after = store.latest("ad")
    assert after.parent == target.version and after.checkpoint == after.version
    assert after.examples == first.examples + 8

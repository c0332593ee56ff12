"""FSA's warm-up on its own thread, in the trainer core (real Redis): while the PET trains, the
adapter goes on learning and publishing versions (frozen features, no PET yet); once the warm-up
is done, the training loop swaps it in and publishes it though no record came, and the learner
holds the bytes of a trainer that warmed up in line. Guardrail on: the holdout's rows under the
new PET are computed on the warm-up's thread, so the swap computes none. A stopping trainer
checkpoints and cancels a warm-up under way."""

from __future__ import annotations

import threading
import time

import pytest

from perennial.codec import Example
from perennial.learners.fsa import WarmUpCancelled
from perennial.store import from_safetensors, to_safetensors
from services.trainer.worker import Incoming, Trainer
from tests.helpers import wait_for
from tests.services.trainer.conftest import in_process_trainer
from tests.shared.test_fsa import CONFIG, WORDS, stream

GUARDRAIL = {"holdout_every": 4, "guardrail_min_holdout": 2}


def feed(trainer: Trainer, examples: list[tuple[str, str]], start: int, adapter: str = "ad") -> int:
    records = [
        Incoming("t:0", start + i, Example(adapter, str(start + i), text, label, 1.0))
        for i, (text, label) in enumerate(examples)
    ]
    trainer.deliver(records)
    trainer.work_once(timeout=0)
    return start + len(records)


def test_a_micro_batch_learned_late_makes_the_warm_up_yield_until_one_is_learned_on_time(
    redis_client, tiny_backbone
):
    """Learning behind the stream (a micro-batch's oldest record waited longer than
    `warmup_yield_seconds`) is what the FSA learner's background warm-up reads to take a tenth
    of its CPU share; the next micro-batch learned on time clears it."""
    trainer = in_process_trainer(
        redis_client, tiny_backbone, CONFIG, warmup_background=True, warmup_yield_seconds=1.0
    )
    examples = stream(list(WORDS))
    late = [
        Incoming("t:0", i, Example("ad", str(i), text, label, 1.0), received=time.monotonic() - 5)
        for i, (text, label) in enumerate(examples[:4])
    ]
    trainer.deliver(late)
    trainer.work_once(timeout=0)
    learner = trainer.adapters["ad"].learner
    assert learner.examples == 4 and learner.behind
    feed(trainer, examples[4:8], 4)  # received now: on time
    assert learner.examples == 8 and not learner.behind


def test_the_adapter_learns_on_while_its_pet_warms_up_and_ends_where_in_line_would(
    redis_client, tiny_backbone
):
    examples = stream(list(WORDS))  # 48 examples; the window closes after 16 are learned
    inline = in_process_trainer(redis_client, tiny_backbone, CONFIG, **GUARDRAIL)
    feed(inline, examples, 0, adapter="inline")

    background = in_process_trainer(
        redis_client, tiny_backbone, CONFIG, warmup_background=True, **GUARDRAIL
    )
    release, started = threading.Event(), threading.Event()

    def held(adapter: str, done: int, total: int) -> None:  # on the warm-up's thread
        started.set()
        assert release.wait(60), "the test never let the warm-up go on"

    background._warmup_progress = held
    rows_by_thread: dict[str, int] = {}
    lookup = background._holdout_features._lookup

    def counted(*args):
        before = background._holdout_features.computed
        try:
            return lookup(*args)
        finally:
            name = threading.current_thread().name.split("_")[0]
            computed = background._holdout_features.computed - before
            rows_by_thread[name] = rows_by_thread.get(name, 0) + computed

    background._holdout_features._lookup = counted
    feed(background, examples[:24], 0)
    learner = background.adapters["ad"].learner
    assert started.wait(60) and learner.window and not learner.adapted
    during = background.store.latest("ad")
    feed(background, examples[24:], 24)  # learning goes on meanwhile, versions and all
    latest = background.store.latest("ad")
    assert latest.sequence > during.sequence and latest.examples > during.examples
    assert not any(k.startswith("pet.") for k in _tensors(background, latest.version))

    on_training_thread = rows_by_thread.pop(threading.current_thread().name, 0)
    release.set()
    wait_for(lambda: background.work_once(timeout=0) or learner.adapted, 60, "the PET swap")
    # the holdout's rows under the new PET came from the warm-up's thread; the swap computed none
    assert rows_by_thread.get("pet-warm-up", 0) > 0
    assert rows_by_thread.get(threading.current_thread().name, 0) == 0
    assert on_training_thread > 0  # (rows of held-out examples, frozen, while it ran)
    state = background.adapters["ad"]
    assert state.dirty  # published at the next snapshot, though no record came
    background.snapshot_all(checkpoint=True)
    swapped = background.store.latest("ad")
    assert swapped.sequence > latest.sequence
    assert any(k.startswith("pet.") for k in _tensors(background, swapped.version))
    ours = to_safetensors(*learner.state())
    assert ours == to_safetensors(*inline.adapters["inline"].learner.state())


def _tensors(trainer: Trainer, version: str) -> dict:
    return from_safetensors(trainer.store.fetch("ad", version)[1])[0]


def test_a_stopping_trainer_checkpoints_and_cancels_a_warm_up_under_way(
    redis_client, tiny_backbone
):
    trainer = in_process_trainer(redis_client, tiny_backbone, CONFIG, warmup_background=True)
    release = threading.Event()
    trainer._warmup_progress = lambda adapter, done, total: release.wait(60)
    feed(trainer, stream(list(WORDS))[:24], 0)
    learner = trainer.adapters["ad"].learner
    assert learner.window and not learner.adapted  # warming up on its thread
    stop = threading.Event()
    stop.set()
    trainer.run(stop)  # stops at once: the final checkpoint, then the warm-up is cancelled
    release.set()
    with pytest.raises(WarmUpCancelled):
        learner.settle()
    checkpoint = trainer.store.latest("ad")
    assert checkpoint.resume_version == checkpoint.version and checkpoint.examples == 24

"""First-session adaptation: the window rule, the PET actually adapting, determinism, resume
during the warm-up bit for bit, the warm-up on its own thread (learning goes on, the result is
the in-line warm-up's), the state round trip and the serving predictor.

Bit-exact comparisons are made within one process on one machine, where the same operations
run in the same order on the same bytes (CPU training has no nondeterministic kernel here).
"""

from __future__ import annotations

import itertools
import threading
import time

import pytest
import torch

from perennial.backbone import ImageBackbone
from perennial.learners import LearnerConfig, build_learner, load_predictor, restore_learner
from perennial.learners.fsa import _IDLE_SLICE, FirstSessionLearner, WarmUpCancelled, _Pacer
from perennial.store import from_safetensors, to_safetensors

WORDS = {
    "animal": ["a small dog", "a big cat", "a red fox", "a grey wolf", "a tiny mouse"],
    "plant": ["a tall tree", "a green fern", "a wild rose", "a young oak", "a pale lily"],
    "artifact": ["an old house", "a fast car", "a wooden chair", "a sharp knife", "a lamp"],
    "food": ["a ripe apple", "warm bread", "a bowl of rice", "fresh cheese", "hot soup"],
}
CONFIG = LearnerConfig(
    learner="fsa", projection_dim=64, warmup_examples=12, warmup_min_classes=2,
    warmup_min_count=4, warmup_epochs=2, warmup_lr=1e-2, ridge_every=8,
)  # fmt: skip


def stream(classes: list[str], per_class: int = 8):
    """Class-incremental: all of the first two classes (interleaved), then the next two."""
    examples = []
    for stage in (classes[:2], classes[2:]):
        cycle = itertools.cycle(stage)
        for i in range(per_class * len(stage)):
            label = next(cycle)
            examples.append((WORDS[label][i % 5] + f" number {i}", label))
    return examples


def feed(learner, examples, batch: int = 4) -> None:
    for first in range(0, len(examples), batch):
        chunk = examples[first : first + batch]
        learner.learn([t for t, _ in chunk], [y for _, y in chunk])


def blob(learner) -> bytes:
    return to_safetensors(*learner.state())


def test_the_window_closes_by_count_and_classes_and_the_pet_adapts(tiny_backbone) -> None:
    learner = build_learner(tiny_backbone, CONFIG)
    progress: list[tuple[int, int]] = []
    learner.warmup_progress = lambda done, total: progress.append((done, total))
    examples = stream(list(WORDS))
    feed(learner, examples[:8])  # 8 examples: below warmup_examples
    assert not learner.adapted and len(learner.buffer) == 8 and progress == []
    frozen_scores = learner.scores(["a small dog"])
    feed(learner, examples[8:12])  # 12 examples, 2 classes with >= 4 each: the window closes
    assert learner.adapted and learner.buffer == [] and learner.examples == 12
    assert progress == [(1, 2), (2, 2)]  # 2 epochs of one batch of 16: every step reported
    assert learner.head.dim == learner.features.frozen_dim + tiny_backbone.dim
    lora_b = [p for name, p in learner.module.named_parameters() if "lora_b" in name]
    assert any(p.abs().sum() > 0 for p in lora_b)  # zero-initialised, trained away from zero
    assert learner.scores(["a small dog"]).shape == frozen_scores.shape
    feed(learner, examples[12:])
    assert learner.examples == len(examples) and len(learner.classes) == 4


def test_one_class_never_closes_the_window_before_the_cap(tiny_backbone) -> None:
    config = LearnerConfig(**{**CONFIG.to_dict(), "pet": CONFIG.pet, "warmup_cap": 20})
    learner = build_learner(tiny_backbone, config)
    feed(learner, [(f"a small dog {i}", "animal") for i in range(16)])
    assert not learner.adapted
    feed(learner, [(f"a small dog {i}", "animal") for i in range(16, 20)])
    assert learner.adapted  # the cap closes it whatever the classes


def test_training_is_deterministic_and_resumes_during_the_warm_up_bit_for_bit(
    tiny_backbone,
) -> None:
    examples = stream(list(WORDS))
    straight = build_learner(tiny_backbone, CONFIG)
    feed(straight, examples)
    again = build_learner(tiny_backbone, CONFIG)
    feed(again, examples)
    assert blob(again) == blob(straight)
    # a trainer killed with half a window buffered resumes from its snapshot to the same bytes
    first = build_learner(tiny_backbone, CONFIG)
    feed(first, examples[:8])
    assert not first.adapted and first.buffer
    resumed = restore_learner(tiny_backbone, *from_safetensors(blob(first)))
    assert resumed.buffer == first.buffer and resumed.buffer_labels == first.buffer_labels
    feed(resumed, examples[8:])
    assert blob(resumed) == blob(straight)


def held_warm_up(
    tiny_backbone, config=CONFIG, cache_bytes: int = 0, cpu_share: float = 1.0
) -> tuple[FirstSessionLearner, threading.Event]:
    """A learner whose background warm-up waits at its first step until the event is set."""
    learner = build_learner(tiny_backbone, config)
    learner.background, learner.cache_bytes, learner.cpu_share = True, cache_bytes, cpu_share
    release = threading.Event()

    def progress(done: int, total: int) -> None:
        assert release.wait(60), "the test never released the warm-up"

    learner.warmup_progress = progress
    return learner, release


@pytest.mark.parametrize(
    ("cache_bytes", "cpu_share", "forwards_again"),
    [(0, 1.0, 3), (1, 1.0, 3), (1 << 30, 0.5, 0)],
    ids=["nothing-kept", "over-the-budget", "forwards-kept-half-a-core"],
)
def test_a_background_warm_up_lets_learning_go_on_and_ends_in_the_in_line_state(
    tiny_backbone, cache_bytes: int, cpu_share: float, forwards_again: int
) -> None:
    examples = stream(list(WORDS))
    straight = build_learner(tiny_backbone, CONFIG)
    feed(straight, examples)
    learner, release = held_warm_up(tiny_backbone, cache_bytes=cache_bytes, cpu_share=cpu_share)
    feed(learner, examples[:12])  # the window closes; its warm-up waits on its thread
    assert learner.window == 12 and not learner.adapted
    feed(learner, examples[12:24])  # meanwhile: frozen features, new classes and all
    assert not learner.adapted and learner.examples == 24 and len(learner.classes) == 4
    assert learner.waiting == [4, 4, 4] and not learner.poll()
    tensors, _ = learner.serving()
    assert not any(name.startswith("pet.") for name in tensors)  # a fresh version, no PET yet
    # a checkpoint taken now resumes (warm-up from scratch, in line) to the same bytes
    resumed = restore_learner(tiny_backbone, *from_safetensors(blob(learner)))
    assert resumed.window == 12 and resumed.waiting == [4, 4, 4]
    feed(resumed, examples[24:])
    assert resumed.adapted and blob(resumed) == blob(straight)
    forward_frozen, calls = learner.features.forward_frozen, []

    def counted(inputs):
        calls.append(len(inputs))
        return forward_frozen(inputs)

    learner.features.forward_frozen = counted
    release.set()
    learner.settle()  # the thread learned the kept micro-batches again, adapted
    assert learner.adapted and learner.buffer == [] and learner.window == 0
    # the micro-batches whose frozen forwards were kept (within `cache_bytes`) ran only the
    # last blocks again; the others the whole backbone
    assert len(calls) == forwards_again
    del learner.features.forward_frozen
    feed(learner, examples[24:])
    assert blob(learner) == blob(straight)


def test_a_paced_warm_up_sleeps_in_proportion_to_its_cpu_time_while_learning_goes_on() -> None:
    cancelled, learned = threading.Event(), itertools.count()
    pace = _Pacer(0.25, cancelled, lambda: next(learned))  # a micro-batch learned per step

    def burn(seconds: float) -> float:
        busy = time.thread_time() + seconds
        while time.thread_time() < busy:
            pass
        return time.perf_counter()

    started = burn(0.05)
    pace()  # ≥ 50 ms of CPU at a quarter of a core: ≥ 150 ms asleep (longer on a busy machine)
    assert time.perf_counter() - started >= 0.15
    behind = [True]
    yielding = _Pacer(0.25, cancelled, lambda: next(learned), lambda: behind[0])
    started = burn(0.05)
    yielding()  # learning behind the stream: a tenth of the share, ≥ 1.95 s asleep
    assert time.perf_counter() - started >= 1.95
    behind[0] = False
    started = burn(0.05)
    yielding()  # caught up: the share again, ≥ 150 ms asleep (≥ 1.95 s had it still yielded)
    assert 0.15 <= time.perf_counter() - started < 1.95
    steps = [0]
    stopping = _Pacer(0.05, cancelled, lambda: steps[0])
    steps[0] = 1  # a micro-batch learned, then the stream ends
    started = burn(0.5)
    stopping()  # would sleep ≥ 9.5 s; learning made no progress for a slice: it goes on
    assert time.perf_counter() - started < 2 * _IDLE_SLICE + 1
    idle = _Pacer(0.25, cancelled, lambda: 7)  # nothing learned meanwhile: full speed
    started = burn(0.3)
    idle()
    assert time.perf_counter() - started < 0.6  # paced, it would have slept ≥ 0.9 s
    burn(1.0)
    threading.Timer(0.05, cancelled.set).start()
    started = time.perf_counter()
    with pytest.raises(WarmUpCancelled):
        pace()  # would sleep 3 s; the cancellation wakes it
    assert time.perf_counter() - started < 2.5


def test_learning_waits_for_the_warm_up_once_four_windows_of_examples_are_kept(
    tiny_backbone,
) -> None:
    config = LearnerConfig(**{**CONFIG.to_dict(), "pet": CONFIG.pet, "warmup_cap": 4})
    learner, release = held_warm_up(tiny_backbone, config)
    settled = []

    def settle() -> None:  # learning waits here: let the warm-up go on
        settled.append(len(learner.buffer) - learner.window)
        release.set()
        FirstSessionLearner.settle(learner)

    learner.settle = settle
    examples = stream(list(WORDS))
    feed(learner, examples[:20])  # the cap closes the window at 4; then 16 kept: 4 × the cap
    assert learner.window == 4 and not learner.adapted and settled == []
    feed(learner, examples[20:24])
    assert settled == [16] and learner.adapted and learner.examples == 24


def test_state_round_trip_after_the_warm_up_is_exact(tiny_backbone) -> None:
    examples = stream(list(WORDS))
    learner = build_learner(tiny_backbone, CONFIG)
    feed(learner, examples[:20])
    restored = restore_learner(tiny_backbone, *from_safetensors(blob(learner)))
    assert torch.equal(restored.head.gram, learner.head.gram)  # the live statistics, bit for bit
    assert torch.equal(restored.head.targets, learner.head.targets)
    for (name, mine), (_, theirs) in zip(
        learner.module.state_dict().items(), restored.module.state_dict().items(), strict=True
    ):
        assert torch.equal(mine, theirs), name
    feed(learner, examples[20:])
    feed(restored, examples[20:])
    assert blob(restored) == blob(learner)


def test_prequential_predictions_come_from_the_last_solved_head(tiny_backbone) -> None:
    learner = build_learner(tiny_backbone, CONFIG)
    examples = stream(list(WORDS))
    texts, labels = [t for t, _ in examples[:4]], [y for _, y in examples[:4]]
    assert learner.learn_and_predict(texts, labels) == [None] * 4  # nothing solved yet
    feed(learner, examples[4:20])
    expected = learner.predict([t for t, _ in examples[20:24]])  # solves the head
    before = learner.learn_and_predict(
        [t for t, _ in examples[20:24]], [y for _, y in examples[20:24]]
    )
    assert before == expected


def test_the_predictor_serves_what_the_learner_predicts(tiny_backbone) -> None:
    learner = build_learner(tiny_backbone, CONFIG)
    feed(learner, stream(list(WORDS)))
    texts = ["a small dog", "warm bread", "a wooden chair"]
    serving = to_safetensors(*learner.serving())
    assert len(serving) < len(blob(learner)) / 3  # W and the PET, not the M×M statistics
    for snapshot in (serving, blob(learner)):  # the serving blob, and a full state (old versions)
        predictor = load_predictor(tiny_backbone, *from_safetensors(snapshot))
        assert predictor.classes == learner.classes and predictor.module is not None
        torch.testing.assert_close(
            predictor.scores(tiny_backbone, texts), learner.scores(texts).float(), rtol=0, atol=0
        )


def test_images_adapt_the_last_blocks_of_efficientnet() -> None:
    backbone = ImageBackbone.load(image_size=32)
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(28, 28, generator=generator) for _ in range(16)]
    labels = ["dark", "light"] * 8
    images = [
        image * (0.3 if label == "dark" else 1.0)
        for image, label in zip(images, labels, strict=True)
    ]
    config = LearnerConfig(**{**CONFIG.to_dict(), "pet": CONFIG.pet})
    learner = build_learner(backbone, config)
    feed(learner, list(zip(images, labels, strict=True)))
    assert learner.adapted and learner.features.start == backbone.layers - backbone.adapt_blocks
    restored = restore_learner(backbone, *from_safetensors(blob(learner)))
    torch.testing.assert_close(
        restored.scores(images[:4]), learner.scores(images[:4]), rtol=0, atol=0
    )


def test_a_pet_the_backbone_cannot_take_is_a_clear_error() -> None:
    from perennial.pet import PrefixConfig

    with pytest.raises(ValueError, match="prefix does not apply to ImageBackbone"):
        build_learner(
            ImageBackbone.load(image_size=32), LearnerConfig(learner="fsa", pet=PrefixConfig())
        )


def test_a_cancelled_warm_up_stops_at_its_next_step(tiny_backbone) -> None:
    learner, release = held_warm_up(tiny_backbone)
    feed(learner, stream(list(WORDS))[:12])  # the window closes; its warm-up waits
    assert learner.window and not learner.adapted
    learner.cancel()  # the learner is being dropped (e.g. the trainer stops)
    release.set()
    with pytest.raises(WarmUpCancelled):
        learner.settle()
    assert not learner.adapted and len(learner.buffer) == 12  # nothing of the state is lost

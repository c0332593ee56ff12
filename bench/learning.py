"""`make bench-learning`: learning quality of every learner × PET on two class-incremental streams.

- text: WordNet noun supersenses (Debian `wordnet-base`), 24 classes in 6 stages of
  4, MiniLM (all-MiniLM-L6-v2);
- image: Fashion-MNIST (Debian `dataset-fashion-mnist`), 10 classes in 5 stages of 2,
  EfficientNet-Lite0 at `--image-size` pixels.

Each stream is run in three class orders (seeds). The stream arrives in micro-batches
of `--batch-size` with no task boundaries given to the learners; after the last
example of each stage the accuracy on every class group seen so far is measured
(R[t, i]). Joint training (the upper bound) trains on the whole stream, shuffled,
for `--joint-epochs` epochs and is measured once at the end. Learners that never
change the backbone (SimpleCIL, RanPAC, joint head-only) run on cached features.

Writes docs/LEARNING.md, PNG plots beside it and the raw results as JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from perennial import evaluation
from perennial.learners import LearnerConfig, build_learner
from perennial.pet import AdapterConfig, LoRAConfig, PrefixConfig

log = logging.getLogger(__name__)

TEXT_PETS = {
    "lora": LoRAConfig(rank=5),
    "adapter": AdapterConfig(bottleneck=16),
    "prefix": PrefixConfig(length=10),
}
IMAGE_PETS = {
    # The first 8 MBConv blocks hold the 1×1 convs LoRA adapts and the stride-1
    # blocks the Adapter runs beside; Prefix needs attention, which a CNN lacks.
    "lora": LoRAConfig(rank=5, target_modules=("_project_conv",), layers=tuple(range(16))),
    "adapter": AdapterConfig(bottleneck=16, target_modules=("block",), layers=tuple(range(16))),
}


@dataclass
class Stream:
    """One class order of one data set: stages, the stream and per-group test sets."""

    stages: list[list[str]]
    train_inputs: list
    train_labels: list[str]
    test_inputs: list[list]  # per stage group
    test_labels: list[list[str]]


@dataclass
class Run:
    """One learner on one class order: the accuracy matrix and its costs."""

    learner: str
    pet: str
    order: int
    matrix: list[list[float]]
    train_seconds: float
    examples: int
    parameters: int
    final_only: bool = False
    extra: dict = field(default_factory=dict)


def text_stream(seed: int, train_per_class: int, test_per_class: int) -> Stream:
    from perennial_dev.datasets.wordnet import class_incremental_split, read_noun_glosses

    split = class_incremental_split(
        read_noun_glosses(),
        num_classes=24,
        classes_per_stage=4,
        train_per_class=train_per_class,
        test_per_class=test_per_class,
        seed=seed,
    )
    stages = [list(s) for s in split.stages]
    return Stream(
        stages,
        [g.text for g in split.train],
        [g.label for g in split.train],
        [[g.text for c in s for g in split.test[c]] for s in stages],
        [[g.label for c in s for g in split.test[c]] for s in stages],
    )


def image_stream(seed: int, train_per_class: int, test_per_class: int) -> Stream:
    from perennial_dev.datasets.fashion_mnist import class_incremental_images

    split = class_incremental_images(
        classes_per_stage=2,
        train_per_class=train_per_class,
        test_per_class=test_per_class,
        seed=seed,
    )
    stages = [list(s) for s in split.stages]
    return Stream(
        stages,
        [x for x, _ in split.train],
        [y for _, y in split.train],
        [[x for c in s for x in split.test[c]] for s in stages],
        [[c for c in s for _ in split.test[c]] for s in stages],
    )


def _stage_ends(stream: Stream) -> list[int]:
    ends, seen, position = [], set(), 0
    for stage in stream.stages:
        seen |= set(stage)
        while position < len(stream.train_labels) and stream.train_labels[position] in seen:
            position += 1
        ends.append(position)
    return ends


def _accuracy(predicted: list[str], labels: list[str]) -> float:
    return sum(p == y for p, y in zip(predicted, labels, strict=True)) / len(labels)


def _predict(learner, inputs, batch: int) -> list[str]:
    out: list[str] = []
    for start in range(0, len(inputs), batch):
        out.extend(learner.predict(inputs[start : start + batch]))
    return out


def run_stream(
    learner, stream: Stream, batch_size: int, eval_batch: int, cached=None
) -> tuple[list, float]:
    """Feed the stream; after each stage, R[t, i] for i ≤ t (0 for groups not yet seen)."""
    stages = len(stream.stages)
    matrix = [[0.0] * stages for _ in range(stages)]
    ends, start, seconds = _stage_ends(stream), 0, 0.0
    for t, end in enumerate(ends):
        began = time.perf_counter()
        for first in range(start, end, batch_size):
            last = min(first + batch_size, end)
            labels = stream.train_labels[first:last]
            if cached is not None:
                learner.learn_features(cached["train"][first:last], labels)
            else:
                learner.learn(stream.train_inputs[first:last], labels)
        seconds += time.perf_counter() - began
        start = end
        for i in range(t + 1):
            if cached is not None:
                scores = learner.scores_features(cached["test"][i])
                predicted = [learner.classes[j] for j in scores.argmax(-1).tolist()]
            else:
                predicted = _predict(learner, stream.test_inputs[i], eval_batch)
            matrix[t][i] = _accuracy(predicted, stream.test_labels[i])
    return matrix, seconds


def run_joint(learner, stream: Stream, batch_size: int, epochs: int, eval_batch: int, seed: int):
    """Joint training: every example of the stream, shuffled, `epochs` times; final row only."""
    order = list(range(len(stream.train_labels)))
    for label in dict.fromkeys(stream.train_labels):  # all classes known from the start
        learner._class_index(label)
    began = time.perf_counter()
    rng = random.Random(seed)
    for _ in range(epochs):
        rng.shuffle(order)
        for first in range(0, len(order), batch_size):
            chosen = order[first : first + batch_size]
            learner.learn(
                [stream.train_inputs[i] for i in chosen], [stream.train_labels[i] for i in chosen]
            )
    seconds = time.perf_counter() - began
    stages = len(stream.stages)
    matrix = [[float("nan")] * stages for _ in range(stages)]
    matrix[-1] = [
        _accuracy(_predict(learner, stream.test_inputs[i], eval_batch), stream.test_labels[i])
        for i in range(stages)
    ]
    return matrix, seconds


def joint_head_only(
    features: torch.Tensor, labels: list[str], stream: Stream, cached, epochs: int, seed: int
):
    """Joint training of a linear head on frozen features (the upper bound with no PET)."""
    classes = list(dict.fromkeys(labels))
    targets = torch.tensor([classes.index(y) for y in labels])
    torch.manual_seed(seed)
    head = torch.nn.Linear(features.shape[1], len(classes))
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    x = features.float()
    began = time.perf_counter()
    for _ in range(epochs):
        for batch in torch.randperm(len(x)).split(32):
            optimizer.zero_grad()
            F.cross_entropy(head(x[batch]), targets[batch]).backward()
            optimizer.step()
    seconds = time.perf_counter() - began
    stages = len(stream.stages)
    matrix = [[float("nan")] * stages for _ in range(stages)]
    with torch.no_grad():
        matrix[-1] = [
            _accuracy(
                [classes[j] for j in head(cached["test"][i].float()).argmax(-1).tolist()],
                stream.test_labels[i],
            )
            for i in range(stages)
        ]
    return matrix, seconds, sum(p.numel() for p in head.parameters())


@torch.no_grad()
def encode(backbone, inputs: list, batch: int) -> torch.Tensor:
    return torch.cat(
        [backbone(backbone.prepare(inputs[i : i + batch])) for i in range(0, len(inputs), batch)]
    )


def bench_domain(
    name: str, backbone, make_stream, pets: dict, args, runs: list[Run], checkpoint
) -> None:
    """Every learner × PET on every class order of one domain; `checkpoint()` after each order."""
    for order in range(args.orders):
        stream = make_stream(order)
        log.info("%s order %d: classes %s", name, order, stream.stages)
        began = time.perf_counter()
        cached = {
            "train": encode(backbone, stream.train_inputs, args.eval_batch),
            "test": [encode(backbone, group, args.eval_batch) for group in stream.test_inputs],
        }
        log.info(
            "%s order %d: encoded %d examples in %.0fs",
            name,
            order,
            len(stream.train_inputs) + sum(map(len, stream.test_inputs)),
            time.perf_counter() - began,
        )
        total = len(stream.train_labels)
        for learner_name in ("simplecil", "ranpac"):
            learner = build_learner(backbone, LearnerConfig(learner=learner_name, seed=order))
            matrix, seconds = run_stream(learner, stream, args.batch_size, args.eval_batch, cached)
            runs.append(
                Run(
                    learner_name,
                    "none",
                    order,
                    matrix,
                    seconds,
                    total,
                    learner.trainable_parameters,
                    extra={"ridge": getattr(learner, "ridge", None)},
                )
            )
            _progress(name, runs[-1])
        matrix, seconds, params = joint_head_only(
            cached["train"], stream.train_labels, stream, cached, args.joint_epochs * 10, order
        )
        runs.append(
            Run(
                "joint",
                "none",
                order,
                matrix,
                seconds,
                total * args.joint_epochs * 10,
                params,
                True,
            )
        )
        _progress(name, runs[-1])
        for pet_name, pet in pets.items():
            for learner_name in ("lae", "naive"):
                config = LearnerConfig(learner=learner_name, pet=pet, seed=order)
                learner = build_learner(backbone, config)
                matrix, seconds = run_stream(learner, stream, args.batch_size, args.eval_batch)
                runs.append(
                    Run(
                        learner_name,
                        pet_name,
                        order,
                        matrix,
                        seconds,
                        total,
                        learner.trainable_parameters,
                    )
                )
                _progress(name, runs[-1])
            learner = build_learner(backbone, LearnerConfig(learner="naive", pet=pet, seed=order))
            matrix, seconds = run_joint(
                learner, stream, args.batch_size, args.joint_epochs, args.eval_batch, order
            )
            runs.append(
                Run(
                    "joint",
                    pet_name,
                    order,
                    matrix,
                    seconds,
                    total * args.joint_epochs,
                    learner.trainable_parameters,
                    True,
                )
            )
            _progress(name, runs[-1])
        checkpoint()


def _progress(domain: str, run: Run) -> None:
    final = evaluation.seen_accuracy(np.nan_to_num(run.matrix))[-1]
    log.info(
        "%s order %d %-9s %-7s final %.3f  %.1f ex/s",
        domain,
        run.order,
        run.learner,
        run.pet,
        final,
        run.examples / max(run.train_seconds, 1e-9),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("docs/LEARNING.md"))
    parser.add_argument("--orders", type=int, default=3)
    parser.add_argument(
        "--text-train", type=int, default=24, help="training examples per text class"
    )
    parser.add_argument("--text-test", type=int, default=10, help="test examples per text class")
    parser.add_argument("--image-train", type=int, default=40, help="training images per class")
    parser.add_argument("--image-test", type=int, default=30, help="test images per class")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-batch", type=int, default=64)
    parser.add_argument("--joint-epochs", type=int, default=2)
    parser.add_argument("--domains", default="text,image")
    parser.add_argument(
        "--threads", type=int, default=int(os.environ.get("PERENNIAL_TORCH_THREADS", "2"))
    )
    parser.add_argument(
        "--render",
        type=Path,
        metavar="RESULTS_JSON",
        help="only rewrite the report (text, goals, plots) from a results.json of an earlier run",
    )
    parser.add_argument(
        "--elapsed-minutes", type=float, help="with --render: the earlier run's duration"
    )
    args = parser.parse_args(argv)
    if args.render:
        return render(args)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr
    )
    torch.set_num_threads(args.threads)
    started = time.time()
    results: dict[str, list[Run]] = {}
    command = " ".join(["make bench-learning", *(argv if argv is not None else sys.argv[1:])])
    from bench.learning_report import write_report
    from perennial.backbone import ImageBackbone, TextBackbone

    def checkpoint() -> None:  # the report so far: an interrupted run still leaves its numbers
        write_report(args, results, time.time() - started, command)
        log.info("report updated: %s", args.out)

    for domain in args.domains.split(","):
        runs: list[Run] = []
        results[domain] = runs
        if domain == "text":
            bench_domain(
                "text",
                TextBackbone.load(),
                lambda s: text_stream(s, args.text_train, args.text_test),
                TEXT_PETS,
                args,
                runs,
                checkpoint,
            )
        elif domain == "image":
            bench_domain(
                "image",
                ImageBackbone.load(image_size=args.image_size),
                lambda s: image_stream(s, args.image_train, args.image_test),
                IMAGE_PETS,
                args,
                runs,
                checkpoint,
            )
        else:
            parser.error(f"unknown domain {domain!r}")
    elapsed = time.time() - started
    log.info("done in %.1f min; wrote %s", elapsed / 60, args.out)
    return 0


def render(args) -> int:
    """Rewrite the report from stored results (no training)."""
    from bench.learning_report import write_report

    raw = json.loads(args.render.read_text())
    meta = raw.pop("meta", {})
    order = sorted(
        raw,
        key=lambda domain: ("text", "image").index(domain) if domain in ("text", "image") else 2,
    )
    results = {domain: [Run(**run) for run in raw[domain]["runs"]] for domain in order}
    elapsed = meta.get("elapsed_seconds", (args.elapsed_minutes or 0) * 60)
    for name, value in meta.get("args", {}).items():  # the set-up of the run that made the results
        if name in (
            "orders",
            "text_train",
            "text_test",
            "image_train",
            "image_test",
            "image_size",
            "batch_size",
            "joint_epochs",
            "threads",
        ):
            setattr(args, name, int(value))
    args.written = meta.get("written") or dt.datetime.fromtimestamp(
        args.render.stat().st_mtime, dt.UTC
    ).strftime("%Y-%m-%d %H:%M UTC")
    write_report(args, results, elapsed, meta.get("command", "make bench-learning"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

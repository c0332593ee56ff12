"""`make bench-learning`: continual-learning quality and cost of every learner on three
class-incremental streams, with fair bounds; writes docs/learning/results.json, then
docs/LEARNING.md and its plots (bench/learning_report.py).

Streams (bench/learning_data.py): WordNet noun supersenses (4 classes per stage) and verb
supersenses (3 per stage) with MiniLM, 150 train / 40 validation / 50 test glosses per class;
Fashion-MNIST with EfficientNet-Lite0 at 64×64, 300 / 75 / 100 images per class, 2 per stage.
Class orders 0, 1, 2. The stream arrives in micro-batches of 16, no task boundaries; after each
stage R[t, i] is measured on validation and test. Every choice (FSA's warm-up and width, joint
training's learning rate and epochs, the recommended default) uses validation only.

Frozen outputs are computed once per stream. Learners whose result depends only on them are fed
cached features (`learn_features` / `scores_features`: the same computation as `learn` on the
same frozen outputs, up to float rounding of batch composition); FSA's PET runs from the cached
hidden state where its blocks start. λ selection runs at the example counts the library chooses,
from a snapshot of the statistics there, but is only computed when a prediction needs it
(`Deferred`). LAE and naive fine-tuning train the whole backbone's PET, so they run for real.
Training throughput including encoding is measured with real inputs on order 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.learning_data import (
    QUICK,
    STREAMS,
    Cache,
    Data,
    adapted_features,
    build_cache,
    load_data,
)
from bench.learning_report import FSA_RULE, choose_fsa
from perennial.learners import LearnerConfig, build_learner
from perennial.learners.fsa import FeatureMap, FirstSessionLearner
from perennial.learners.ridge import RidgeHead
from perennial.pet import LoRAConfig, create_module, inject

log = logging.getLogger(__name__)

BATCH = 16  # micro-batch, as the trainer's default


def fsa_warmup(lr: float, window: int, epochs: int = 5) -> dict:
    """One warm-up of FSA's grid: the window closes at `window` examples (with the default number
    of classes) or at 4× as many, as the trainer's `warmup_examples` setting does."""
    return {"warmup_lr": lr, "warmup_epochs": epochs, "warmup_examples": window,
            "warmup_cap": 4 * window}  # fmt: skip


# FSA: the grid searched on validation (the warm-up does not depend on the head's width, so one
# warm-up serves both widths). lr 3e-4 on the 256-example window lost on every stream in the
# 2026-11-30 run; longer windows reach the second stage's classes.
FSA_WARMUPS = (fsa_warmup(1e-3, 256), fsa_warmup(3e-4, 1024), fsa_warmup(1e-3, 1024))
FSA_WIDTHS = (1024, 2048)
# Joint PET + head on the whole shuffled stream: learning rates tried, epochs by early stopping
# on validation (patience 2). Text: one rate (a MiniLM epoch costs minutes on 2 cores).
JOINT_LRS = {"text": (1e-3,), "image": (3e-4, 1e-3)}
JOINT_MAX_EPOCHS = {"text": 8, "image": 12}
JOINT_PATIENCE = 2
# LAE / naive fine-tuning: PETs of the earlier benchmark; learning rate, EMA and freeze steps from
# a validation-only grid (lr {1e-4, 3e-4, 1e-3}, EMA {0.99, 0.999, 0.9999}, freeze {0, 20}) on
# verbs (text) and Fashion-MNIST (image), order 0, run before this benchmark (issue 11's
# research); not re-run here for lack of time on 2 cores.
LAE_PETS = {
    "text": LoRAConfig(rank=5),
    "image": LoRAConfig(rank=5, target_modules=("_project_conv",), layers=tuple(range(16))),
}
LAE_TUNED = {
    "text": {
        "lae": {"lr": 1e-4, "ema_decay": 0.999, "freeze_steps": 20},
        "naive": {"lr": 1e-4},
    },
    "image": {
        "lae": {"lr": 3e-4, "ema_decay": 0.999, "freeze_steps": 20},
        "naive": {"lr": 3e-5},
    },
}


# -- helpers ------------------------------------------------------------------------------------
class Clock:
    """Wall and CPU seconds of a block of work."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *_) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


class Deferred:
    """A RidgeHead whose λ is chosen from a snapshot of the statistics taken when the learner asks
    (at the example counts the library decides) but computed only when scores are needed: the
    same λ and head, one eigendecomposition per evaluation instead of one per 256 examples."""

    def __init__(self, head: RidgeHead) -> None:
        self.head, self._select, self._pending = head, head.select_ridge, None
        head.select_ridge = self._snapshot

    def _snapshot(self, background: bool = False) -> float:
        self._pending = (self.head.gram.clone(), self.head.targets.clone())
        return self.head.ridge

    def settle(self) -> None:
        if self._pending is None:
            return
        live = self.head.gram, self.head.targets
        self.head.gram, self.head.targets = self._pending
        self._select()
        self.head.gram, self.head.targets = live
        self.head._solution, self._pending = None, None


class Prototypes:
    """APER/ADAM-style head: cosine similarity to class means of the given features."""

    def __init__(self) -> None:
        self.classes: list[str] = []
        self.sums: torch.Tensor | None = None
        self.counts = torch.zeros(0, dtype=torch.float64)

    def learn_features(self, features: torch.Tensor, labels: list[str]) -> None:
        if self.sums is None or self.sums.shape[1] != features.shape[1]:
            self.__init__()
            self.sums = torch.zeros(0, features.shape[1], dtype=torch.float64)
        for label in labels:
            if label not in self.classes:
                self.classes.append(label)
                self.sums = torch.cat([self.sums, self.sums.new_zeros(1, self.sums.shape[1])])
                self.counts = torch.cat([self.counts, self.counts.new_zeros(1)])
        targets = torch.tensor([self.classes.index(label) for label in labels])
        self.sums.index_add_(0, targets, features.double())
        self.counts.index_add_(0, targets, torch.ones(len(labels), dtype=torch.float64))

    def scores_features(self, features: torch.Tensor) -> torch.Tensor:
        means = self.sums / self.counts.clamp(min=1)[:, None]
        return F.normalize(features.double(), dim=-1) @ F.normalize(means, dim=-1).T


def micro_batches(start: int, end: int) -> list[tuple[int, int]]:
    return [(first, min(first + BATCH, end)) for first in range(start, end, BATCH)]


def feed(learner, features: torch.Tensor, labels: list[str], start: int, end: int) -> None:
    """Stream positions [start, end) in micro-batches of 16, merged into one `learn_features` call
    while no λ selection falls due in between (so selections happen at the same counts as with
    one call per micro-batch; the sums only differ by rounding)."""
    every = getattr(getattr(learner, "config", None), "ridge_every", None)
    selected = getattr(learner, "_selected", None)
    pending = 0  # positions [first, first + pending) wait to be added
    first = start
    for lo, hi in micro_batches(start, end):
        if selected is not None:
            known = set(learner.classes)
            due = any(y not in known for y in labels[lo:hi]) or (
                learner.examples + (hi - first) - learner._selected[0] >= every
            )
        else:
            due = False
        pending = hi - first
        if due:
            learner.learn_features(features[first:hi], labels[first:hi])
            first, pending = hi, 0
    if pending:
        learner.learn_features(features[first:end], labels[first:end])


def evaluate(score, classes: list[str], features, data: Data, groups) -> list[float]:
    """Accuracy on each group (example indices) of `score(features[group])` over `classes`."""
    out = []
    for group in groups:
        predicted = score(features(group)).argmax(-1).tolist()
        out.append(
            float(
                np.mean(
                    [classes[j] == data.labels[i] for j, i in zip(predicted, group, strict=True)]
                )
            )
        )
    return out


def empty_matrix(stages: int) -> list[list[float]]:
    return [[float("nan")] * stages for _ in range(stages)]


# -- learners on cached features ---------------------------------------------------------------
def run_frozen(data: Data, cache: Cache, order: int, fsa_frozen_width: tuple[int, ...], backbone):
    """SimpleCIL, RanPAC (library defaults) on the backbone's features, and FSA's head on frozen
    multi-layer features without a PET (the ablation), per width."""
    o = data.orders[order]
    stream_labels = [data.labels[i] for i in o.stream]
    learners = {
        "simplecil": build_learner(backbone, LearnerConfig(learner="simplecil", seed=order)),
        "ranpac": build_learner(backbone, LearnerConfig(learner="ranpac", seed=order)),
    }
    inputs = {"simplecil": cache.final, "ranpac": cache.final}
    for width in fsa_frozen_width:
        # never warms up: its window cannot close
        config = LearnerConfig(
            learner="fsa", projection_dim=width, seed=order, warmup_examples=10**9, warmup_cap=10**9
        )
        learners[f"fsa_frozen/M={width}"] = FirstSessionLearner(backbone, config)
        inputs[f"fsa_frozen/M={width}"] = cache.frozen
    deferred = {
        name: Deferred(learner.ridge_head if name == "ranpac" else learner.head)
        for name, learner in learners.items()
        if name != "simplecil"
    }
    runs = {}
    for name, learner in learners.items():
        features = inputs[name][o.stream]
        matrices = {part: empty_matrix(len(o.stages)) for part in o.groups}
        with Clock() as clock:
            start = 0
            for t, end in enumerate(o.ends):
                feed(learner, features, stream_labels, start, end)
                start = end
                if name in deferred:
                    deferred[name].settle()
                for part, groups in o.groups.items():
                    matrices[part][t][: t + 1] = evaluate(
                        learner.scores_features,
                        learner.classes,
                        lambda g, n=name: inputs[n][g],
                        data,
                        groups[: t + 1],
                    )
        runs[name] = {
            "R": matrices,
            "cached_seconds": clock.wall,
            "trainable_parameters": learner.trainable_parameters,
        }
    return runs


def warmup_position(learner: FirstSessionLearner, labels: list[str], o) -> int | None:
    """Where FSA's window closes: the first micro-batch end (stream position) at which
    `learner._window_closed()` holds for the labels so far."""
    start = 0
    try:
        for end in o.ends:
            for _, hi in micro_batches(start, end):
                learner.buffer_labels = labels[:hi]
                if learner._window_closed():
                    return hi
            start = end
        return None
    finally:
        learner.buffer_labels = []


def pet_change(backbone, learner: FirstSessionLearner) -> float:
    """L2 distance of the warmed-up PET from its initialisation (seeded as in `warm_up`)."""
    fm, generator_state = learner.features, torch.random.get_rng_state()
    torch.manual_seed(learner.config.seed)
    initial = create_module(fm.pet, inject(backbone.encoder, fm.pet))
    torch.random.set_rng_state(generator_state)
    pairs = zip(learner.module.parameters(), initial.parameters(), strict=True)
    with torch.no_grad():
        return float(sum(float((a.double() - b.double()).norm() ** 2) for a, b in pairs) ** 0.5)


def run_fsa(data: Data, cache: Cache, order: int, warmup: dict, backbone) -> dict:
    """The library's FSA learner (one warm-up, heads of every width in FSA_WIDTHS) and APER-style
    prototypes over the same [frozen ⊕ adapted] features."""
    o = data.orders[order]
    labels = [data.labels[i] for i in o.stream]
    config = LearnerConfig(learner="fsa", seed=order, **warmup)
    lead_width, *twin_widths = sorted(FSA_WIDTHS, reverse=True)
    learners = {
        width: FirstSessionLearner(backbone, dataclasses.replace(config, projection_dim=width))
        for width in (lead_width, *twin_widths)
    }
    lead = learners[lead_width]
    protos = Prototypes()
    deferred = {width: Deferred(learner.head) for width, learner in learners.items()}
    position = warmup_position(lead, labels, o)
    matrices = {
        key: {part: empty_matrix(len(o.stages)) for part in o.groups} for key in [*learners, "aper"]
    }
    adapted_all: torch.Tensor | None = None
    features = cache.frozen[o.stream].double()
    info: dict = {"warmup_position": position}
    with Clock() as clock:
        start = 0
        for t, end in enumerate(o.ends):
            cuts = [start, end]
            if position is not None and start < position < end:
                cuts = [start, position, end]
            for lo, hi in zip(cuts, cuts[1:], strict=False):
                for learner in [*learners.values(), protos]:
                    feed(learner, features, labels, lo, hi)
                if hi == position:
                    with Clock() as warm:
                        lead.buffer = [data.inputs[i] for i in o.stream[:position]]
                        lead.buffer_labels = labels[:position]
                        lead.warm_up()  # the library's warm-up, on real inputs
                        deferred[lead_width] = Deferred(lead.head)
                        rows = range(len(data.inputs))
                        adapted_all = adapted_features(
                            backbone, lead.features, cache, rows, lead.module
                        )
                        features = adapted_all[o.stream]
                        for width in twin_widths:  # the end of warm_up(), for the other widths
                            twin = learners[width]
                            twin.module = lead.module
                            twin.head, twin._selected = twin.window_head(
                                features[:position], labels[:position]
                            )
                            deferred[width] = Deferred(twin.head)
                        protos = Prototypes()
                        protos.learn_features(features[:position], labels[:position])
                    info.update(warmup_seconds=warm.wall, warmup_cpu_seconds=warm.cpu)
                    info["pet_change"] = pet_change(backbone, lead)
            start = end
            for d in deferred.values():
                d.settle()

            def lookup(g, adapted=adapted_all):
                return adapted[g] if adapted is not None else cache.frozen[g].double()

            for part, groups in o.groups.items():
                for width, learner in learners.items():
                    matrices[width][part][t][: t + 1] = evaluate(
                        learner.scores_features, learner.classes, lookup, data, groups[: t + 1]
                    )
                matrices["aper"][part][t][: t + 1] = evaluate(
                    protos.scores_features, protos.classes, lookup, data, groups[: t + 1]
                )
    tag = f"lr={warmup['warmup_lr']:g},ep={warmup['warmup_epochs']},W={warmup['warmup_examples']}"
    runs = {
        f"fsa/{tag},M={width}": {
            "R": matrices[width],
            "trainable_parameters": learner.trainable_parameters,
            "ridge": learner.head.ridge,
            **info,
        }
        for width, learner in learners.items()
    }
    pet = sum(p.numel() for p in lead.module.parameters()) if lead.module is not None else 0
    runs[f"aper/{tag}"] = {"R": matrices["aper"], "trainable_parameters": pet, **info}
    for run in runs.values():
        run["cached_seconds"] = clock.wall
    return runs


# -- bounds: joint PET training and the joint-so-far oracle -------------------------------------
def train_pet(backbone, fm: FeatureMap, cache, rows, labels, epochs, lr, seed, val=None):
    """The PET of FSA's blocks + a zero-initialised linear head trained jointly on `rows` (as
    `FirstSessionLearner.warm_up` trains it: Adam, batches of 16, seeded shuffles); with `val`
    (a callable scoring module and head), early stopping with patience JOINT_PATIENCE."""
    classes = list(dict.fromkeys(labels))
    targets = torch.tensor([classes.index(y) for y in labels])
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    module = create_module(fm.pet, inject(backbone.encoder, fm.pet)).to(backbone.device)
    torch.random.set_rng_state(generator_state)
    head = nn.Linear(backbone.dim, len(classes))
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    optimizer = torch.optim.Adam([*module.parameters(), *head.parameters()], lr=lr)
    order, shuffle = list(range(len(rows))), random.Random(seed)
    history, best = [], None
    for epoch in range(1, epochs + 1):
        shuffle.shuffle(order)
        for first in range(0, len(order), BATCH):
            chosen = order[first : first + BATCH]
            state, batch = backbone.rebatch([cache.states[rows[k]] for k in chosen])
            loss = F.cross_entropy(head(fm.adapted(state, batch, module)), targets[chosen])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if val is None:
            continue
        history.append(val(module, head, classes))
        log.info("  epoch %d lr %g: validation %.4f", epoch, lr, history[-1])
        if best is None or history[-1] > best[0]:
            copies = [{k: v.clone() for k, v in m.state_dict().items()} for m in (module, head)]
            best = (history[-1], epoch, *copies)
        elif epoch - best[1] >= JOINT_PATIENCE:
            break
    if best is not None:
        module.load_state_dict(best[2])
        head.load_state_dict(best[3])
    module.requires_grad_(False)
    return module, head, classes, history, (best[1] if best else epochs)


def ridge_on(backbone, fm, cache, data, rows, labels, module, width, seed):
    """The FSA head (RidgeHead, λ by the library's held-out rule) on [frozen ⊕ adapted] of rows."""
    config = LearnerConfig(learner="fsa", projection_dim=width, seed=seed)
    head = RidgeHead(fm.frozen_dim + backbone.dim, width, seed, config.ridge_grid)
    classes = list(dict.fromkeys(labels))
    head.grow(len(classes))
    features = adapted_features(backbone, fm, cache, rows, module)
    head.add(features, torch.tensor([classes.index(y) for y in labels]), torch.arange(len(rows)))
    head.select_ridge()
    return head, classes


def run_joint(data: Data, cache: Cache, backbone, width: int, max_epochs: int) -> dict:
    """Joint PET + head on every training example (shuffled), lr and epochs by validation; then
    the ridge head on the adapted features. Class-order-free: run once (seed 0)."""
    fm = FeatureMap(backbone, LearnerConfig(learner="fsa"))
    rows = [i for i, p in enumerate(data.part) if p == "train"]
    labels = [data.labels[i] for i in rows]
    parts = {p: [i for i, q in enumerate(data.part) if q == p] for p in ("val", "test")}

    def linear_accuracy(module, head, classes, part="val"):
        g = parts[part]
        with torch.no_grad():
            x = adapted_features(backbone, fm, cache, g, module)[:, fm.frozen_dim :].float()
            predicted = head(x).argmax(-1).tolist()
        return float(
            np.mean([classes[j] == data.labels[i] for j, i in zip(predicted, g, strict=True)])
        )

    tried, best = [], None
    with Clock() as clock:
        for lr in JOINT_LRS[data.spec.domain]:
            module, head, classes, history, epochs = train_pet(
                backbone, fm, cache, rows, labels, max_epochs, lr, 0, linear_accuracy
            )
            tried.append({"lr": lr, "validation_curve": history, "best_epoch": epochs})
            if best is None or max(history) > best[0]:
                best = (max(history), lr, epochs, module, head, classes)
    _, lr, epochs, module, head, classes = best
    ridge, ridge_classes = ridge_on(backbone, fm, cache, data, rows, labels, module, width, 0)
    out = {
        "lr": lr,
        "epochs": epochs,
        "tried": tried,
        "width": width,
        "seconds": clock.wall,
        "cpu_seconds": clock.cpu,
    }
    for part, g in parts.items():
        scores = ridge.scores(adapted_features(backbone, fm, cache, g, module))
        out[f"ridge_{part}"] = float(
            np.mean(
                [
                    ridge_classes[j] == data.labels[i]
                    for j, i in zip(scores.argmax(-1).tolist(), g, strict=True)
                ]
            )
        )
        out[f"linear_{part}"] = linear_accuracy(module, head, classes, part)
    return out


def run_oracle(data: Data, cache: Cache, order: int, backbone, joint: dict) -> dict:
    """Joint-so-far: after each stage, PET + head retrained from scratch on all training data of
    stages ≤ t (the joint run's lr and epochs), then the ridge head on it; R[t, i ≤ t]."""
    o = data.orders[order]
    fm = FeatureMap(backbone, LearnerConfig(learner="fsa"))
    matrices = {part: empty_matrix(len(o.stages)) for part in o.groups}
    began = time.perf_counter()
    with Clock() as clock:
        for t, end in enumerate(o.ends):
            rows = o.stream[:end]
            labels = [data.labels[i] for i in rows]
            module, *_ = train_pet(
                backbone, fm, cache, rows, labels, joint["epochs"], joint["lr"], order
            )
            head, classes = ridge_on(
                backbone, fm, cache, data, rows, labels, module, joint["width"], order
            )
            for part, groups in o.groups.items():
                seen = [i for g in groups[: t + 1] for i in g]
                x = adapted_features(backbone, fm, cache, seen, module)
                lookup = dict(zip(seen, range(len(seen)), strict=True))
                matrices[part][t][: t + 1] = evaluate(
                    head.scores,
                    classes,
                    lambda g, x=x, lookup=lookup: x[[lookup[i] for i in g]],
                    data,
                    groups[: t + 1],
                )
            log.info(
                "%s order %d oracle stage %d: %.0f s",
                data.name,
                order,
                t,
                time.perf_counter() - began,
            )
    return {"R": matrices, "seconds": clock.wall, "cpu_seconds": clock.cpu, **joint_tag(joint)}


def joint_tag(joint: dict) -> dict:
    return {"lr": joint["lr"], "epochs": joint["epochs"], "width": joint["width"]}


# -- learners on real inputs -------------------------------------------------------------------
def predict_sorted(learner, data: Data, group: list[int]) -> list[str]:
    by_length = sorted(
        group, key=lambda i: len(data.inputs[i]) if data.spec.domain == "text" else 0
    )
    out = {}
    for first in range(0, len(by_length), 64):
        rows = by_length[first : first + 64]
        out.update(zip(rows, learner.predict([data.inputs[i] for i in rows]), strict=True))
    return [out[i] for i in group]


def run_real(data: Data, order: int, backbone, config: LearnerConfig, evaluate_stages=True):
    """A learner fed real inputs (encoding included), R on validation and test per stage."""
    o = data.orders[order]
    learner = build_learner(backbone, config)
    matrices = {part: empty_matrix(len(o.stages)) for part in o.groups}
    wall = cpu = 0.0
    start = 0
    for t, end in enumerate(o.ends):
        with Clock() as clock:
            for lo, hi in micro_batches(start, end):
                rows = o.stream[lo:hi]
                learner.learn([data.inputs[i] for i in rows], [data.labels[i] for i in rows])
        wall, cpu, start = wall + clock.wall, cpu + clock.cpu, end
        if not evaluate_stages and t < len(o.ends) - 1:
            continue
        for part, groups in o.groups.items():
            for i, g in enumerate(groups[: t + 1]):
                predicted = predict_sorted(learner, data, g)
                matrices[part][t][i] = float(
                    np.mean([p == data.labels[k] for p, k in zip(predicted, g, strict=True)])
                )
    return learner, {
        "R": matrices,
        "train_seconds": wall,
        "train_cpu_seconds": cpu,
        "examples": len(o.stream),
        "trainable_parameters": learner.trainable_parameters,
        "config": {k: v for k, v in config.to_dict().items() if k != "pet"}
        | {"pet": str(config.pet)},
    }


def serving_cost(learner, backbone, data: Data, rows: list[int], batch: int = 16) -> dict:
    """Seconds per row of `learner.scores` and of the frozen forward on the same rows."""

    def timed(fn) -> float:
        with Clock() as clock:
            for first in range(0, len(rows), batch):
                fn([data.inputs[i] for i in rows[first : first + batch]])
        return clock.wall / len(rows)

    with torch.no_grad():
        frozen = timed(lambda x: backbone(backbone.prepare(x)))
        own = timed(learner.scores)
    return {"seconds_per_row": own, "frozen_seconds_per_row": frozen, "relative": own / frozen}


def throughput(data: Data, backbone, config: LearnerConfig, limit: int | None) -> tuple:
    """Training examples/s with real encoding on order 0 (the first `limit` examples, or all)."""
    o = data.orders[min(data.orders)]
    learner = build_learner(backbone, config)
    stop = len(o.stream) if limit is None else min(limit, len(o.stream))
    with Clock() as clock:
        start = 0
        for end in o.ends:
            for lo, hi in micro_batches(start, min(end, stop)):
                rows = o.stream[lo:hi]
                learner.learn([data.inputs[i] for i in rows], [data.labels[i] for i in rows])
            start = end
            if end >= stop:
                break
    return learner, {
        "examples": stop,
        "seconds": clock.wall,
        "cpu_seconds": clock.cpu,
        "examples_per_second": stop / clock.wall,
    }


# Seconds per stream example (training and evaluation) before any was measured: LAE and naive
# fine-tuning back-propagate through the whole backbone (measured on this machine at load ~3).
PRIOR_SECONDS_PER_EXAMPLE = {("lae", "text"): 0.3, ("naive", "text"): 0.18,
                             ("lae", "image"): 0.03, ("naive", "image"): 0.02}  # fmt: skip


def job_estimate(kind: str, data: Data, order: int, joint: dict | None, measured: dict) -> float:
    """Seconds a remaining job will take, from what was measured so far."""
    o = data.orders[order]
    if kind != "oracle":
        rate = measured.get(
            (kind, data.spec.domain), PRIOR_SECONDS_PER_EXAMPLE[(kind, data.spec.domain)]
        )
        return rate * len(o.stream)
    # joint: seconds per training example-epoch (validation passes included) × the oracle's work
    epochs_run = sum(len(t["validation_curve"]) for t in joint["tried"])
    rate = joint["seconds"] / (epochs_run * len(o.stream))
    return rate * joint["epochs"] * sum(o.ends) * 1.2


# -- the run -----------------------------------------------------------------------------------
class Results:
    """results.json, rewritten after every piece so an interrupted run keeps what finished."""

    def __init__(self, path: Path, meta: dict) -> None:
        self.path, self.started, self.cpu = path, time.time(), time.process_time()
        self.data = {"meta": meta, "streams": {}, "choices": {}, "skipped": []}
        self.loads: list[float] = []

    def stream(self, name: str) -> dict:
        return self.data["streams"].setdefault(name, {"runs": [], "cost": {}, "info": {}})

    def add_run(self, name: str, learner: str, order: int, run: dict) -> None:
        self.stream(name)["runs"].append({"learner": learner, "order": order, **run})
        self.save()

    def elapsed(self) -> float:
        return time.time() - self.started

    def save(self, status: str = "running") -> None:
        self.loads.append(os.getloadavg()[0])
        meta = self.data["meta"]
        meta.update(
            status=status,
            elapsed_seconds=self.elapsed(),
            cpu_seconds=time.process_time() - self.cpu,
            load_average_mean=float(np.mean(self.loads)),
            load_average_max=float(np.max(self.loads)),
            load_average_now=list(os.getloadavg()),
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True, allow_nan=True))
        tmp.replace(self.path)


def backbones(domain: str, args):
    from perennial.backbone import ImageBackbone, TextBackbone

    backbone = TextBackbone.load() if domain == "text" else ImageBackbone.load(image_size=64)
    backbone.use_runtime(args.runtime, threads=args.threads)
    return backbone


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, help="default: docs/LEARNING.md (--quick: beside results)"
    )
    parser.add_argument(
        "--results", type=Path, help="default: docs/learning/results.json (--quick: quick/)"
    )
    parser.add_argument("--quick", action="store_true", help="one order, fewer examples")
    parser.add_argument("--streams", default="nouns,verbs,fmnist")
    parser.add_argument("--orders", type=int, default=3)
    parser.add_argument("--budget-minutes", type=float, default=88.0)
    parser.add_argument("--runtime", default="onnx", help="the frozen runtime (services' default)")
    # One thread: on the shared 2-core machine two threads collapse when other jobs hold a core
    # (measured: PET training through MiniLM's last blocks 150 vs 37 examples/s at load 3.5).
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--render", action="store_true", help="only rewrite the report")
    args = parser.parse_args(argv)
    from bench.learning_report import write_report

    folder = Path("docs/learning/quick" if args.quick else "docs/learning")
    args.results = args.results or folder / "results.json"
    args.out = args.out or (folder / "LEARNING.md" if args.quick else Path("docs/LEARNING.md"))
    if args.render:
        write_report(json.loads(args.results.read_text()), args.out, args.results.parent)
        return 0
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S", stream=sys.stderr
    )
    torch.set_num_threads(args.threads)
    orders = [0] if args.quick else list(range(args.orders))
    names = args.streams.split(",")
    specs = {
        n: STREAMS[n].scaled(*QUICK[STREAMS[n].domain]) if args.quick else STREAMS[n] for n in names
    }
    given = " ".join(sys.argv[1:] if argv is None else argv)
    command = "make bench-learning" + (f" BENCH_ARGS='{given}'" if given else "")
    results = Results(
        args.results,
        {
            "command": command,
            "results": str(args.results),
            "quick": args.quick,
            "orders": orders,
            "runtime": args.runtime,
            "threads": args.threads,
            "cpus": os.cpu_count(),
            "budget_minutes": args.budget_minutes,
            "written": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "fsa_rule": FSA_RULE,
            "fsa_grid": {"warmups": FSA_WARMUPS, "widths": FSA_WIDTHS},
            "lae_tuned": LAE_TUNED,
            "lae_pets": {k: str(v) for k, v in LAE_PETS.items()},
            "joint_lrs": JOINT_LRS,
            "joint_max_epochs": JOINT_MAX_EPOCHS,
            "specs": {n: dataclasses.asdict(s) for n, s in specs.items()},
        },
    )
    budget = args.budget_minutes * 60
    loaded: dict[str, tuple] = {}

    def prepare(name: str):
        if name not in loaded:
            spec = specs[name]
            backbone = backbones(spec.domain, args)
            data = load_data(name, spec, orders)
            fm = FeatureMap(backbone, LearnerConfig(learner="fsa"))
            cache = build_cache(backbone, fm, data.inputs)
            info = results.stream(name)["info"]
            info.update(
                classes=len(data.classes),
                examples={p: data.part.count(p) for p in ("train", "val", "test")},
                stages={o: data.orders[o].stages for o in orders},
                cache_seconds=cache.seconds,
                cache_cpu_seconds=cache.cpu_seconds,
            )
            log.info("%s: %d examples cached in %.0f s", name, len(data.inputs), cache.seconds)
            loaded[name] = (backbone, data, cache)
        return loaded[name]

    # 1. frozen-feature learners and FSA's grid, every stream and order (cached features)
    for name in names:
        backbone, data, cache = prepare(name)
        for order in orders:
            for learner, run in run_frozen(data, cache, order, FSA_WIDTHS, backbone).items():
                results.add_run(name, learner, order, run)
            for warmup in FSA_WARMUPS:
                for learner, run in run_fsa(data, cache, order, warmup, backbone).items():
                    results.add_run(name, learner, order, run)
            log.info("%s order %d: cached learners done (%.0f s)", name, order, results.elapsed())
    choice = choose_fsa(results.data["streams"])
    results.data["choices"]["fsa"] = choice
    results.save()
    log.info("FSA chosen on validation: %s", choice["chosen"])
    width = choice["width"]
    chosen = LearnerConfig(learner="fsa", projection_dim=width, **choice["warmup"])

    # 2. real-input throughput and serving cost (order 0) of the library learners on cached runs
    for name in names:
        backbone, data, cache = prepare(name)
        cost = results.stream(name)["cost"]
        test_rows = [i for i, p in enumerate(data.part) if p == "test"][:256]
        limit = 1024 if not args.quick else 256
        for learner_name, config, until in (
            ("simplecil", LearnerConfig(learner="simplecil"), limit),
            ("ranpac", LearnerConfig(learner="ranpac"), limit),
            ("fsa", chosen, None),
        ):
            learner, measured = throughput(data, backbone, config, until)
            if learner_name == "fsa":  # the real learner against its cached run (order 0)
                val_rows = [i for i, p in enumerate(data.part) if p == "val"]
                predicted = predict_sorted(learner, data, val_rows)
                measured["real_final_val"] = float(
                    np.mean([p == data.labels[i] for p, i in zip(predicted, val_rows, strict=True)])
                )
            measured["serving"] = serving_cost(learner, backbone, data, test_rows)
            measured["trainable_parameters"] = learner.trainable_parameters
            cost[learner_name] = measured
            results.save()
            log.info("%s %s: %.1f ex/s", name, learner_name, measured["examples_per_second"])

    # 3. joint PET training to convergence (validation early stopping), once per stream
    for name in names:
        backbone, data, cache = prepare(name)
        epochs = 2 if args.quick else JOINT_MAX_EPOCHS[data.spec.domain]
        joint = run_joint(data, cache, backbone, width, epochs)
        results.stream(name)["joint"] = joint
        results.save()
        log.info("%s joint: %s", name, {k: v for k, v in joint.items() if k != "tried"})

    # 4. LAE / naive (real) and the oracle, cheapest streams first, while the budget allows
    jobs = [
        (order, kind, name)
        for name in names
        for order in orders
        for kind in ("lae", "naive", "oracle")
    ]
    jobs.sort(key=lambda j: (specs[j[2]].domain == "text", j[0], j[2] == "nouns", j[1] == "oracle"))
    per_example: dict[tuple, float] = {}  # measured seconds per stream example, by kind and domain
    for order, kind, name in jobs:
        backbone, data, cache = prepare(name)
        domain = data.spec.domain
        estimate = job_estimate(kind, data, order, results.stream(name).get("joint"), per_example)
        if results.elapsed() + estimate > budget:
            results.data["skipped"].append(
                {"learner": kind, "stream": name, "order": order, "estimate_seconds": estimate}
            )
            results.save()
            log.info("skipped %s %s order %d (estimate %.0f s)", kind, name, order, estimate)
            continue
        with Clock() as clock:
            if kind == "oracle":
                run = run_oracle(data, cache, order, backbone, results.stream(name)["joint"])
            else:
                config = LearnerConfig(
                    learner=kind, pet=LAE_PETS[domain], seed=order, **LAE_TUNED[domain][kind]
                )
                learner, run = run_real(data, order, backbone, config)
                if order == orders[0]:
                    test_rows = [i for i, p in enumerate(data.part) if p == "test"][:256]
                    run["serving"] = serving_cost(learner, backbone, data, test_rows)
        if kind != "oracle":
            per_example[(kind, domain)] = clock.wall / len(data.orders[order].stream)
        run["wall_seconds"] = clock.wall
        results.add_run(name, kind, order, run)
        log.info("%s %s order %d: %.0f s", name, kind, order, clock.wall)
    results.save("finished")
    write_report(results.data, args.out, args.results.parent)
    log.info("done in %.1f min; wrote %s", results.elapsed() / 60, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The streams of `make bench-learning` and their frozen-feature caches.

Every stream has a fixed sample of examples per class (train / validation / test), drawn with
`SAMPLE_SEED` whatever the class order; an order (0, 1, 2) only decides which classes arrive in
which stage and the shuffle within a stage. So the frozen backbone's outputs are computed once
per stream and shared by every order and learner (`Cache`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch

SAMPLE_SEED = 2026  # each class's examples; fixed, so caches hold for every order
CHUNK = 64  # rows per frozen forward while caching


@dataclass(frozen=True)
class Spec:
    """One stream: its backbone domain, classes per stage and examples per class."""

    domain: str  # "text" (MiniLM) or "image" (EfficientNet-Lite0)
    per_stage: int
    train: int
    val: int
    test: int
    min_per_class: int = 0  # text: classes need at least this many glosses

    def scaled(self, train: int, val: int, test: int) -> Spec:
        return Spec(self.domain, self.per_stage, train, val, test, self.min_per_class)


STREAMS = {
    "nouns": Spec("text", 4, 150, 40, 50, min_per_class=240),
    "verbs": Spec("text", 3, 150, 40, 50, min_per_class=240),
    "fmnist": Spec("image", 2, 300, 75, 100),
}
QUICK = {"text": (40, 10, 10), "image": (60, 15, 20)}  # --quick: train / val / test per class


@dataclass
class Order:
    """One class order of a stream: stages, the stream (example indices) and eval groups."""

    stages: list[list[str]]
    stream: list[int]
    ends: list[int]  # stream position after each stage
    groups: dict[str, list[list[int]]]  # part -> per stage: example indices of its classes


@dataclass
class Data:
    """Every example of one stream (inputs, labels, part) and its class orders."""

    name: str
    spec: Spec
    inputs: list
    labels: list[str]
    part: list[str]  # "train" / "val" / "test"
    classes: list[str]
    orders: dict[int, Order] = field(default_factory=dict)


def _order(data: Data, stages, stream: list[int]) -> Order:
    stages = [list(s) for s in stages]
    ends, seen, position = [], set(), 0
    for stage in stages:
        seen |= set(stage)
        while position < len(stream) and data.labels[stream[position]] in seen:
            position += 1
        ends.append(position)
    groups = {
        part: [
            [
                i
                for i, (y, p) in enumerate(zip(data.labels, data.part, strict=True))
                if p == part and y in set(stage)
            ]  # fmt: skip
            for stage in stages
        ]
        for part in ("val", "test")
    }
    return Order(stages, stream, ends, groups)


def _add(data: Data, key, x, label: str, part: str, index: dict) -> None:
    index.setdefault(key, []).append(len(data.inputs))
    data.inputs.append(x)
    data.labels.append(label)
    data.part.append(part)


def text_data(name: str, spec: Spec, orders: list[int]) -> Data:
    from perennial_dev.datasets.wordnet import (
        class_incremental_split,
        read_noun_glosses,
        read_verb_glosses,
    )

    glosses = read_noun_glosses() if name == "nouns" else read_verb_glosses()

    def split(order: int):
        return class_incremental_split(
            glosses,
            classes_per_stage=spec.per_stage,
            train_per_class=spec.train,
            validation_per_class=spec.val,
            test_per_class=spec.test,
            min_per_class=spec.min_per_class,
            seed=order,
            sample_seed=SAMPLE_SEED,
        )

    first = split(orders[0])
    data = Data(name, spec, [], [], [], sorted(first.classes))
    index: dict = {}
    for g in sorted(first.train, key=lambda g: g.synset):
        _add(data, g.synset, g.text, g.label, "train", index)
    for part, per_class in (("val", first.validation), ("test", first.test)):
        for label in data.classes:
            for g in per_class[label]:
                _add(data, g.synset, g.text, g.label, part, index)
    for order in orders:
        s = split(order)
        if sorted(s.classes) != data.classes:
            raise RuntimeError(f"{name}: order {order} has other classes than order {orders[0]}")
        stream = [index[g.synset][0] for g in s.train]
        if sorted(stream) != [i for i, p in enumerate(data.part) if p == "train"]:
            raise RuntimeError(f"{name}: order {order} streams another sample (sample_seed)")
        data.orders[order] = _order(data, s.stages, stream)
    return data


def image_data(name: str, spec: Spec, orders: list[int]) -> Data:
    from perennial_dev.datasets.fashion_mnist import class_incremental_images

    def split(order: int):
        return class_incremental_images(
            classes_per_stage=spec.per_stage,
            train_per_class=spec.train,
            validation_per_class=spec.val,
            test_per_class=spec.test,
            seed=order,
            sample_seed=SAMPLE_SEED,
        )

    def key(x: torch.Tensor, label: str) -> str:
        return label + hashlib.sha1(x.numpy().tobytes()).hexdigest()

    first = split(orders[0])
    data = Data(name, spec, [], [], [], sorted(first.classes))
    index: dict = {}
    for x, label in sorted(first.train, key=lambda pair: key(*pair)):
        _add(data, key(x, label), x, label, "train", index)
    for part, per_class in (("val", first.validation), ("test", first.test)):
        for label in data.classes:
            for x in per_class[label]:
                _add(data, key(x, label), x, label, part, index)
    for order in orders:
        s = split(order)
        free = {k: list(v) for k, v in index.items()}  # identical images: one index each
        stream = [free[key(x, label)].pop(0) for x, label in s.train]
        if sorted(stream) != [i for i, p in enumerate(data.part) if p == "train"]:
            raise RuntimeError(f"{name}: order {order} streams another sample (sample_seed)")
        data.orders[order] = _order(data, s.stages, stream)
    return data


def load_data(name: str, spec: Spec, orders: list[int]) -> Data:
    return (text_data if spec.domain == "text" else image_data)(name, spec, orders)


@dataclass
class Cache:
    """Frozen outputs of every example: pooled multi-layer features (FSA's frozen part; the last
    `dim` columns are the backbone's features, what SimpleCIL and RanPAC use) and the hidden
    state where FSA's PET blocks start (per example, unpadded)."""

    frozen: torch.Tensor  # [N, frozen_dim] float32
    states: list
    dim: int
    seconds: float = 0.0
    cpu_seconds: float = 0.0

    @property
    def final(self) -> torch.Tensor:
        return self.frozen[:, -self.dim :]


def _length(x) -> int:
    return len(x) if isinstance(x, str) else 0


@torch.no_grad()
def build_cache(backbone, features, inputs: list) -> Cache:
    """`features` is a `perennial.learners.fsa.FeatureMap`; texts are batched by length."""
    import time

    count = len(backbone.hidden_names())
    if features.states[-1] != count - 1 or backbone.state_dim(count - 1) != backbone.dim:
        raise RuntimeError("FSA's frozen features must end with the backbone's own features")
    began, cpu = time.perf_counter(), time.process_time()
    order = sorted(range(len(inputs)), key=lambda i: _length(inputs[i]))
    pooled: list = [None] * len(inputs)
    states: list = [None] * len(inputs)
    for first in range(0, len(order), CHUNK):
        rows = order[first : first + CHUNK]
        batch = backbone.prepare([inputs[i] for i in rows])
        frozen, state = features.frozen(batch)
        if first == 0:  # the last columns are exactly what backbone(batch) returns
            own = backbone(batch)
            if not torch.allclose(frozen[:, -backbone.dim :], own, atol=1e-5):
                raise RuntimeError("cached features differ from the backbone's forward")
        for i, row, s in zip(rows, frozen, backbone.unbatch(state, batch), strict=True):
            pooled[i], states[i] = row, s
    return Cache(
        torch.stack(pooled),
        states,
        backbone.dim,
        time.perf_counter() - began,
        time.process_time() - cpu,
    )


@torch.no_grad()
def adapted_features(backbone, features, cache: Cache, rows, module) -> torch.Tensor:
    """[frozen ⊕ adapted] features of `rows` (example indices): the PET's last blocks run from the
    cached frozen state, as `FeatureMap.__call__` does from a fresh one (float64)."""
    rows = list(rows)
    by_length = sorted(range(len(rows)), key=lambda k: len(cache.states[rows[k]]))
    out = torch.zeros(len(rows), backbone.dim)
    for first in range(0, len(rows), CHUNK):
        ks = by_length[first : first + CHUNK]
        state, batch = backbone.rebatch([cache.states[rows[k]] for k in ks])
        out[ks] = features.adapted(state, batch, module)
    return torch.cat([cache.frozen[rows], out], dim=1).double()


def sizes(order: Order) -> list[int]:
    return [len(s) for s in order.stages]


def accuracy(predicted: list[str], labels: list[str]) -> float:
    return float(np.mean([p == y for p, y in zip(predicted, labels, strict=True)]))

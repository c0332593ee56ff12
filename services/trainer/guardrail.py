"""The forgetting guardrail: a per-class holdout reservoir in Redis and the promotion rule.

Holdout selection is deterministic: the n-th example of a class (n = 1, 2, …)
goes to the holdout instead of training when n is a multiple of `every`, into
ring slot (n / every) mod `per_class`. So the reservoir is bounded (classes ×
per_class inputs), follows recent data, and a replay after a crash writes the
same slots with the same inputs. Inputs are texts, or images (image deployments: the
`perennial.v1.Tensor` protobuf, in fields marked as tensors).

Rule: a candidate becomes the head unless its accuracy on the holdout of the
classes the head already knew falls more than `margin` below the head's.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import redis
import torch

from perennial.codec import Example
from perennial.learners import FirstSessionLearner, FirstSessionPredictor
from perennial.v1 import example_pb2

_CHUNK = 16  # holdout rows computed per backbone pass (a paced warm-up's step)
TENSOR_MARK = "\x1ftensor"  # suffix of a holdout field whose value is a Tensor message


@dataclass(frozen=True)
class GuardrailConfig:
    """every: one example in `every` per class is held out (0 = no holdout, guardrail off).
    per_class: holdout texts kept per class.
    margin: tolerated accuracy drop on the head's classes (0.15 = 15 points). Learning new
        classes costs some accuracy on old ones even for the best learner we measured
        (RanPAC forgets ~10 points over 6 stages, docs/LEARNING.md); a margin below that
        would hold every candidate that brings new classes.
    min_holdout: below this many holdout texts the comparison is noise; the candidate is promoted.
    """

    every: int = 10
    per_class: int = 16
    margin: float = 0.15
    min_holdout: int = 32

    def __post_init__(self) -> None:
        if self.every < 0 or self.per_class < 1:
            raise ValueError(
                f"holdout every={self.every}, per_class={self.per_class}: need every >= 0, per_class >= 1"
            )
        if not 0 <= self.margin <= 1:
            raise ValueError(f"guardrail margin must be in [0, 1], got {self.margin}")

    @property
    def enabled(self) -> bool:
        return self.every > 0


@dataclass(frozen=True)
class Verdict:
    """The guardrail's decision on a candidate, with the accuracies behind it."""

    promote: bool
    candidate_accuracy: float
    head_accuracy: float
    evaluated: int  # holdout texts used
    reason: str


class HoldoutReservoir:
    """One adapter's per-class holdout ring in Redis."""

    def __init__(
        self, client: redis.Redis, adapter: str, config: GuardrailConfig, prefix: str = "perennial"
    ):
        self.redis = client
        self.config = config
        self.key = f"{prefix}:{{{adapter}}}:holdout"  # same hash slot as the adapter's snapshots

    def wants(self, count: int) -> bool:
        """Whether the `count`-th example of its class (1-based) is held out."""
        return self.config.enabled and count % self.config.every == 0

    def add(self, example: Example, count: int) -> None:
        slot = (count // self.config.every) % self.config.per_class
        if example.tensor is None:
            self.redis.hset(self.key, f"{example.label}\x1f{slot}", example.text)
            return
        message = example_pb2.Tensor(shape=example.tensor.shape)
        message.values.extend(example.tensor.array().ravel().tolist())
        self.redis.hset(
            self.key, f"{example.label}\x1f{slot}{TENSOR_MARK}", message.SerializeToString()
        )

    def inputs(self, classes: set[str]) -> tuple[list, list[str]]:
        """Holdout inputs (texts, or images as float32 tensors) and labels of `classes`."""
        inputs, labels = [], []
        for field, value in sorted(self.redis.hgetall(self.key).items()):
            name = field.decode()
            label = name.split("\x1f", 1)[0]
            if label not in classes:
                continue
            if name.endswith(TENSOR_MARK):
                message = example_pb2.Tensor.FromString(value)
                values = torch.tensor(list(message.values), dtype=torch.float32)
                inputs.append(values.reshape(tuple(message.shape)))
            else:
                inputs.append(value.decode())
            labels.append(label)
        return inputs, labels


def judge(
    config: GuardrailConfig,
    reservoir: HoldoutReservoir,
    head_classes: list[str],
    candidate: Callable[[list], list[str]],
    head: Callable[[list], list[str]],
) -> Verdict:
    """Compare candidate and head predictors on the holdout of the head's classes."""
    inputs, labels = reservoir.inputs(set(head_classes))
    if len(inputs) < config.min_holdout:
        return Verdict(
            True,
            float("nan"),
            float("nan"),
            0,
            f"only {len(inputs)} holdout examples for the head's classes (< {config.min_holdout})",
        )
    candidate_accuracy = _accuracy(candidate(inputs), labels)
    head_accuracy = _accuracy(head(inputs), labels)
    if candidate_accuracy < head_accuracy - config.margin:
        reason = (
            f"accuracy on previously learned classes fell from {head_accuracy:.3f} to "
            f"{candidate_accuracy:.3f} (margin {config.margin:.3f}, {len(inputs)} holdout examples)"
        )
        return Verdict(False, candidate_accuracy, head_accuracy, len(inputs), reason)
    return Verdict(True, candidate_accuracy, head_accuracy, len(inputs), "within the margin")


class FeatureCache:
    """Holdout rows of FSA versions, ready for their heads: judging a candidate against its head
    costs two small matrix products instead of two backbone passes and two random projections
    over the whole holdout at every snapshot. A row is a holdout input's ReLU random features
    (`RidgeHead.expand`) under one PET and one head's projection (seed, input and output
    sizes); an FSA adapter's rows change only when its PET does (once, at its warm-up).

    Bounded: at most `max_entries` rows (width × 8 bytes each: 8 KB at the default width of
    1024), least recently used dropped first. Rows are float64 as the head expands them, so
    the labels are the predictor's own (`predictor.scores`). Thread-safe: a background PET
    warm-up computes its rows on its own thread (outside the lock)."""

    def __init__(self, max_entries: int = 8192) -> None:
        self.max_entries = max_entries
        self._rows: OrderedDict[tuple[tuple, str], torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self.computed = 0  # rows the backbone computed (the rest came from the cache)

    def labeller(self, predictor: FirstSessionPredictor) -> Callable[[list], list[str]]:
        space = _space(predictor)

        def labels(inputs: list) -> list[str]:
            with torch.inference_mode():
                rows = torch.stack(self._lookup(space, predictor, inputs))
                best = predictor.scores_expanded(rows).argmax(-1).tolist()
            return [predictor.classes[i] for i in best]

        return labels

    def warm(
        self,
        source: FirstSessionLearner | FirstSessionPredictor,
        inputs: list,
        between: Callable[[], None] | None = None,
    ) -> None:
        """Compute the rows of `inputs` under `source`'s PET and head now, as they are held out
        (and all of them when the PET changes), so that the first judgement with enough holdout
        does not compute them all at once: that stalled learning by half a second. `between`
        is called before each chunk of rows (a background warm-up's pacer)."""
        with torch.inference_mode():
            self._lookup(_space(source), source, inputs, between)

    def _lookup(
        self, space: tuple, source, inputs: list, between: Callable[[], None] | None = None
    ) -> list[torch.Tensor]:
        keys = [_input_key(x) for x in inputs]
        first = dict(zip(keys, inputs, strict=True))  # one input per key
        with self._lock:
            rows = {k: self._rows.get((space, k)) for k in first}
        missing = [k for k, row in rows.items() if row is None]
        for start in range(0, len(missing), _CHUNK):
            if between is not None:
                between()
            chunk = missing[start : start + _CHUNK]
            features = source.features([first[k] for k in chunk], source.module)
            rows.update(zip(chunk, source.head.expand(features), strict=True))
        with self._lock:
            self.computed += len(missing)
            for key, row in rows.items():
                self._rows[(space, key)] = row
                self._rows.move_to_end((space, key))
            while len(self._rows) > self.max_entries:
                self._rows.popitem(last=False)
        return [rows[k] for k in keys]


def _space(source: FirstSessionLearner | FirstSessionPredictor) -> tuple:
    """What a row depends on besides its input: the PET's weights and the head's projection."""
    head = source.head
    return (_fingerprint(source.module), head.seed, head.dim, head.width)


def _input_key(value) -> str:
    """A text is its own key; an image's is the digest of its shape and values."""
    if isinstance(value, str):
        return value
    array = value.detach().contiguous().cpu().numpy()
    return "\x00" + hashlib.sha256(repr(array.shape).encode() + array.tobytes()).hexdigest()


def _fingerprint(module: torch.nn.Module | None) -> str:
    """Identity of a PET's weights (the frozen features have none: "frozen")."""
    if module is None:
        return "frozen"
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def _accuracy(predicted: list[str], labels: list[str]) -> float:
    return sum(p == t for p, t in zip(predicted, labels, strict=True)) / len(labels)

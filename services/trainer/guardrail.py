"""The forgetting guardrail: a per-class holdout reservoir in Redis and the promotion rule.

Holdout selection is deterministic: the n-th example of a class (n = 1, 2, …)
goes to the holdout instead of training when n is a multiple of `every`, into
ring slot (n / every) mod `per_class`. So the reservoir is bounded (classes ×
per_class texts), follows recent data, and a replay after a crash writes the
same slots with the same texts.

Rule: a candidate becomes the head unless its accuracy on the holdout of the
classes the head already knew falls more than `margin` below the head's.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import redis
import torch

from perennial.codec import Example
from perennial.learners import FirstSessionPredictor


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
        self.redis.hset(self.key, f"{example.label}\x1f{slot}", example.text)

    def texts(self, classes: set[str]) -> tuple[list[str], list[str]]:
        """Holdout texts and labels of `classes`."""
        texts, labels = [], []
        for field, text in sorted(self.redis.hgetall(self.key).items()):
            label = field.decode().split("\x1f", 1)[0]
            if label in classes:
                texts.append(text.decode())
                labels.append(label)
        return texts, labels


def judge(
    config: GuardrailConfig,
    reservoir: HoldoutReservoir,
    head_classes: list[str],
    candidate: Callable[[list[str]], list[str]],
    head: Callable[[list[str]], list[str]],
) -> Verdict:
    """Compare candidate and head predictors on the holdout of the head's classes."""
    texts, labels = reservoir.texts(set(head_classes))
    if len(texts) < config.min_holdout:
        return Verdict(
            True,
            float("nan"),
            float("nan"),
            0,
            f"only {len(texts)} holdout texts for the head's classes (< {config.min_holdout})",
        )
    candidate_accuracy = _accuracy(candidate(texts), labels)
    head_accuracy = _accuracy(head(texts), labels)
    if candidate_accuracy < head_accuracy - config.margin:
        reason = (
            f"accuracy on previously learned classes fell from {head_accuracy:.3f} to "
            f"{candidate_accuracy:.3f} (margin {config.margin:.3f}, {len(texts)} holdout texts)"
        )
        return Verdict(False, candidate_accuracy, head_accuracy, len(texts), reason)
    return Verdict(True, candidate_accuracy, head_accuracy, len(texts), "within the margin")


class FeatureCache:
    """Features of holdout texts under each PET, so judging an FSA candidate against its head
    costs two matrix products instead of two backbone passes over the whole holdout at every
    snapshot: an FSA adapter's features change only when its PET does (once, at its warm-up).

    Bounded: at most `max_entries` (PET, text) rows, least recently used dropped first. Rows
    are stored as the float32 the backbone computed, so scores equal `predictor.scores`."""

    def __init__(self, max_entries: int = 8192) -> None:
        self.max_entries = max_entries
        self._rows: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self.computed = 0  # rows the backbone computed (the rest came from the cache)

    def labeller(self, predictor: FirstSessionPredictor) -> Callable[[list[str]], list[str]]:
        pet = _fingerprint(predictor.module)

        def labels(texts: list[str]) -> list[str]:
            rows = {t: self._rows.get((pet, t)) for t in dict.fromkeys(texts)}
            missing = [t for t, row in rows.items() if row is None]
            with torch.inference_mode():
                for start in range(0, len(missing), 64):
                    chunk = missing[start : start + 64]
                    features = predictor.features(chunk, predictor.module).float()
                    rows.update(zip(chunk, features, strict=True))
                self.computed += len(missing)
                for text, row in rows.items():
                    self._rows[(pet, text)] = row
                    self._rows.move_to_end((pet, text))
                while len(self._rows) > self.max_entries:
                    self._rows.popitem(last=False)
                features = torch.stack([rows[t] for t in texts]).double()
                best = predictor.scores_features(features).argmax(-1).tolist()
            return [predictor.classes[i] for i in best]

        return labels


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

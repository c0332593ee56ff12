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

from collections.abc import Callable
from dataclasses import dataclass

import redis

from perennial.codec import Example


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


def _accuracy(predicted: list[str], labels: list[str]) -> float:
    return sum(p == t for p, t in zip(predicted, labels, strict=True)) / len(labels)

"""Forgetting, live: the accuracy matrix over class-arrival stages of a stream.

A stream has no task boundaries, so stages are class-arrival windows: each
evaluation (the trainer evaluates its per-class holdout after every snapshot)
that sees classes no earlier evaluation saw opens a new stage, and those classes
form that stage's class group. R[t, i] is the accuracy on group i at the last
evaluation of stage t (the current stage's row is overwritten by each new
evaluation until the next stage opens). From R (DESIGN.md, with T the current stage):

- accuracy on seen classes A_t: mean accuracy over every class seen by stage t;
- average incremental accuracy: mean over stages of A_t;
- average forgetting: mean over i < T of (max_{l<T} R[l, i] − R[T, i]);
- backward transfer: mean over i < T of (R[T, i] − R[i, i]).

With one stage there is nothing to forget: forgetting and backward transfer are 0.
Group accuracy is the mean of its classes' accuracies (class-balanced); the formulas
are `perennial.evaluation`'s, shared with the offline benchmarks.

>>> matrix = AccuracyMatrix()
>>> matrix.record({"cat": 0.9, "dog": 0.8})
>>> matrix.record({"cat": 0.8, "dog": 0.8, "eel": 0.9})
>>> matrix.record({"cat": 0.6, "dog": 0.6, "eel": 0.9})
>>> [[round(a, 2) for a in row] for row in matrix.rows]
[[0.85], [0.6, 0.9]]
>>> round(matrix.average_forgetting, 2), round(matrix.backward_transfer, 2)
(0.25, -0.25)
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from perennial import evaluation


class AccuracyMatrix:
    """R[t, i]: accuracy on class group i after stage t, built from per-class evaluations.

    Parameters
    ----------
    max_stages
        Bound on stages (and so on metric label values): past it, new classes join
        the last group.
    """

    def __init__(self, max_stages: int = 32) -> None:
        if max_stages < 1:
            raise ValueError(f"max_stages must be >= 1, got {max_stages}")
        self.max_stages = max_stages
        self.groups: list[list[str]] = []
        self._group_of: dict[str, int] = {}
        self._rows: list[list[float]] = []

    @property
    def stages(self) -> int:
        return len(self._rows)

    @property
    def rows(self) -> list[list[float]]:
        """The lower-triangular matrix: row t has one accuracy per group 0..t."""
        return [list(row) for row in self._rows]

    def record(self, accuracy: Mapping[str, float]) -> None:
        """One evaluation: accuracy per class on the holdout of every class seen so far."""
        if not accuracy:
            return
        new = [label for label in accuracy if label not in self._group_of]
        if new:
            if len(self.groups) < self.max_stages:
                self.groups.append([])
                self._rows.append([])
            for label in new:
                self._group_of[label] = len(self.groups) - 1
                self.groups[-1].append(label)
        row = []
        for group in self.groups:
            values = [accuracy[label] for label in group if label in accuracy]
            row.append(float(np.mean(values)) if values else float("nan"))
        self._rows[-1] = row

    def square(self) -> np.ndarray:
        """R as a square array, NaN above the diagonal (`perennial.evaluation`'s input)."""
        matrix = np.full((self.stages, self.stages), np.nan)
        for t, row in enumerate(self._rows):
            matrix[t, : len(row)] = row
        return matrix

    def _sizes(self) -> list[int]:
        return [len(group) for group in self.groups]

    @property
    def seen_accuracy(self) -> float:
        """A_T: accuracy over every class seen so far (latest evaluation)."""
        return evaluation.final_accuracy(self.square(), self._sizes()) if self.stages else 0.0

    @property
    def average_incremental_accuracy(self) -> float:
        return (
            evaluation.average_incremental_accuracy(self.square(), self._sizes())
            if self.stages
            else 0.0
        )

    @property
    def average_forgetting(self) -> float:
        return evaluation.forgetting(self.square()) if self.stages else 0.0

    @property
    def backward_transfer(self) -> float:
        return evaluation.backward_transfer(self.square()) if self.stages else 0.0

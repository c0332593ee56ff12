"""Continual-learning metrics over an accuracy matrix.

R[t, i] is the accuracy on the test examples of class group i (the classes that
arrived in stage i) after training through stage t, predicting among every class
seen so far; entries with i > t are undefined (NaN). T is the last stage. With
equally many test examples per class, the accuracy on all seen classes is the
class-count-weighted mean of a row.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _square(matrix: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    r = np.asarray(matrix, dtype=float)
    if r.ndim != 2 or r.shape[0] != r.shape[1] or r.shape[0] == 0:
        raise ValueError(f"accuracy matrix must be square and non-empty, got shape {r.shape}")
    return r


def seen_accuracy(matrix, sizes: Sequence[int] | None = None) -> np.ndarray:
    """A_t = Σ_{i≤t} n_i·R[t,i] / Σ_{i≤t} n_i (n_i = classes in group i; default all equal)."""
    r = _square(matrix)
    n = np.ones(len(r)) if sizes is None else np.asarray(sizes, dtype=float)
    return np.array([np.dot(r[t, : t + 1], n[: t + 1]) / n[: t + 1].sum() for t in range(len(r))])


def average_incremental_accuracy(matrix, sizes: Sequence[int] | None = None) -> float:
    """Ā = (1/(T+1)) Σ_t A_t."""
    return float(seen_accuracy(matrix, sizes).mean())


def final_accuracy(matrix, sizes: Sequence[int] | None = None) -> float:
    """A_T: accuracy on all classes after the last stage."""
    return float(seen_accuracy(matrix, sizes)[-1])


def forgetting(matrix) -> float:
    """F = mean_{i<T} ( max_{l<T} R[l,i] − R[T,i] ) (max over l ≥ i, where R is defined);
    0 for a single stage."""
    r = _square(matrix)
    last = len(r) - 1
    if last == 0:
        return 0.0
    return float(np.mean([np.max(r[i:last, i]) - r[last, i] for i in range(last)]))


def backward_transfer(matrix) -> float:
    """BWT = mean_{i<T} ( R[T,i] − R[i,i] ): negative when learning later stages hurt earlier ones."""
    r = _square(matrix)
    last = len(r) - 1
    if last == 0:
        return 0.0
    return float(np.mean([r[last, i] - r[i, i] for i in range(last)]))


def forward_transfer(matrix, baseline: Sequence[float] | None = None) -> float:
    """FWT = mean_{i≥1} ( R[i−1,i] − b_i ), b_i the accuracy of an untrained model on group i
    (default 0). In class-incremental learning a class cannot be predicted before it
    arrives, so R[i−1,i] = 0 and FWT is 0 − b̄; it is reported for completeness."""
    r = _square(matrix)
    if len(r) == 1:
        return 0.0
    b = np.zeros(len(r)) if baseline is None else np.asarray(baseline, dtype=float)
    return float(np.mean([r[i - 1, i] - b[i] for i in range(1, len(r))]))


def summary(matrix, sizes: Sequence[int] | None = None) -> dict[str, float]:
    """All scalar metrics of one run, keyed by name."""
    return {
        "final_accuracy": final_accuracy(matrix, sizes),
        "average_incremental_accuracy": average_incremental_accuracy(matrix, sizes),
        "forgetting": forgetting(matrix),
        "backward_transfer": backward_transfer(matrix),
        "forward_transfer": forward_transfer(matrix),
    }

"""RanPAC's head: ReLU random features and ridge regression from additive statistics.

h = ReLU(x·P) with a fixed random Gaussian P (d×M, regenerated from its seed, never stored);
G = Σ h hᵀ and Q = Σ h yᵀ (one-hot y) are sums, so the head is order-invariant and task-free.
Every fifth example (by stream position) goes to a held-out part of the statistics; the ridge
strength λ is the grid value with the lowest held-out squared error,
err(W) = tr(WᵀG_v W) − 2 tr(WᵀQ_v), computed from one eigendecomposition of the training part
(no examples stored). The head is W = (G + λ·s·I)⁻¹Q over both parts (s: the Gram scale).

Selecting λ costs an eigendecomposition of an M×M matrix, solving the head one Cholesky
factorisation: `select_ridge` runs when the learner says so (new classes, every `ridge_every`
examples), `solve` whenever the statistics changed. `SolvedHead` is what serving needs: the
solved W alone (the statistics stay with the trainer), scored exactly as `RidgeHead.scores`.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

HELD_OUT_EVERY = 5


@functools.lru_cache(maxsize=8)
def projection(seed: int, dim: int, width: int) -> torch.Tensor:
    """The random projection P [dim, width] of `seed`: numpy's PCG64 generator draws the same
    numbers on every platform, so trainer and inference regenerate the same P."""
    rng = np.random.Generator(np.random.PCG64(seed))
    return torch.from_numpy(rng.standard_normal((dim, width)))


class RidgeHead:
    """Ridge regression on ReLU random features from additive statistics, λ held-out-validated."""

    def __init__(self, dim: int, width: int, seed: int, grid: tuple[float, ...]) -> None:
        self.dim, self.width, self.seed, self.grid = dim, width, seed, grid
        self.gram = torch.zeros(2, width, width, dtype=torch.float64)  # [train part, held-out part]
        self.targets = torch.zeros(2, width, 0, dtype=torch.float64)
        self.ridge = grid[0]
        self._solution: torch.Tensor | None = None
        self._last: torch.Tensor | None = None  # the newest solution, kept while data arrives
        self._expanded: tuple[torch.Tensor, torch.Tensor] | None = None  # (features, ReLU(x·P))

    @property
    def projection(self) -> torch.Tensor:
        return projection(self.seed, self.dim, self.width)

    @property
    def classes(self) -> int:
        return self.targets.shape[2]

    def grow(self, classes: int) -> None:
        """Add target columns up to `classes`."""
        if classes > self.classes:
            extra = self.targets.new_zeros(2, self.width, classes - self.classes)
            self.targets = torch.cat([self.targets, extra], dim=2)
            self._solution = None

    def expand(self, features: torch.Tensor) -> torch.Tensor:
        # The trainer scores a micro-batch with the last solution, then adds it: one expansion.
        if self._expanded is not None and self._expanded[0] is features:
            return self._expanded[1]
        h = torch.relu(features.double() @ self.projection)
        self._expanded = (features, h)
        return h

    def add(self, features: torch.Tensor, targets: torch.Tensor, positions: torch.Tensor) -> None:
        """Add examples (features [N, dim], class indices, stream positions) to the statistics."""
        h = self.expand(features)
        y = F.one_hot(targets, self.classes).double()
        held_out = positions % HELD_OUT_EVERY == HELD_OUT_EVERY - 1
        for part, rows in ((0, ~held_out), (1, held_out)):
            if rows.any():
                # Only the lower triangle is ever read (Cholesky and eigh read nothing else;
                # `_symmetric` mirrors it), so the upper one may differ in its last bits (h.T @ h
                # is not exactly symmetric on every BLAS) and a restored Gram matrix, stored as
                # its lower triangle, is exactly the live one. One pass over M×M per batch.
                self.gram[part].addmm_(h[rows].T, h[rows])
                self.targets[part] += h[rows].T @ y[rows]
        self._solution = None

    def select_ridge(self) -> float:
        """Choose λ from the grid by the held-out error (unchanged while nothing is held out)."""
        if not self.targets[1].abs().sum() > 0:
            return self.ridge
        train_gram, train_targets = self.gram[0], self.targets[0]
        scale = max(float(train_gram.diagonal().mean()), 1e-12)
        values, vectors = torch.linalg.eigh(train_gram)
        basis_targets = vectors.T @ train_targets
        held_gram = vectors.T @ _symmetric(self.gram[1]) @ vectors
        held_targets = vectors.T @ self.targets[1]
        best, best_error = self.grid[0], float("inf")
        for ridge in self.grid:
            w = basis_targets / (values + ridge * scale * 1e-3)[:, None]
            error = float((w * (held_gram @ w)).sum() - 2 * (w * held_targets).sum())
            if error < best_error:
                best, best_error = ridge, error
        if best != self.ridge:
            self.ridge, self._solution = best, None
        return best

    def solve(self) -> torch.Tensor:
        """The head W [width, classes] for the current statistics and λ (cached)."""
        if self._solution is None:
            gram, targets = self.gram.sum(0), self.targets.sum(0)
            scale = max(float(gram.diagonal().mean()), 1e-12)
            gram.diagonal().add_(self.ridge * scale * 1e-3)
            self._solution = torch.cholesky_solve(targets, torch.linalg.cholesky(gram))
            self._last = self._solution
        return self._solution

    def last_scores(self, features: torch.Tensor) -> torch.Tensor | None:
        """Ridge outputs of the newest solved head (None before the first solve): what the
        version last built from these statistics predicts, without solving again."""
        if self._last is None or self._last.shape[0] != self.width:
            return None
        return self.expand(features) @ self._last

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """Ridge outputs [N, classes]."""
        return self.expand(features) @ self.solve()

    def solved(self) -> SolvedHead:
        """The head for the current statistics, detached from them (what a version serves)."""
        return SolvedHead(self.dim, self.width, self.seed, self.solve().clone())

    def state(self, prefix: str) -> dict[str, torch.Tensor]:
        """The statistics (the Gram matrices' lower triangles, all that is read: half the bytes
        and still exact)."""
        rows, cols = torch.tril_indices(self.width, self.width)
        return {
            f"{prefix}gram_lower": self.gram[:, rows, cols].clone(),
            f"{prefix}targets": self.targets.clone(),
        }

    def load(self, tensors: dict[str, torch.Tensor], prefix: str, ridge: float) -> None:
        if f"{prefix}gram_lower" in tensors:
            rows, cols = torch.tril_indices(self.width, self.width)
            half = tensors[f"{prefix}gram_lower"].double()
        else:  # an older state: the upper triangle of a Gram matrix symmetrised per batch
            rows, cols = torch.triu_indices(self.width, self.width)
            half = tensors[f"{prefix}gram_upper"].double()
        self.gram = torch.zeros(2, self.width, self.width, dtype=torch.float64)
        self.gram[:, rows, cols] = half
        self.gram[:, cols, rows] = half
        self.targets = tensors[f"{prefix}targets"].double().clone()
        self.ridge, self._solution = ridge, None


def _symmetric(gram: torch.Tensor) -> torch.Tensor:
    """The symmetric matrix of `gram`'s lower triangle."""
    return torch.tril(gram) + torch.tril(gram, -1).T


class SolvedHead:
    """A solved ridge head W [width, classes] on the ReLU random features of `seed`: what a
    served version holds instead of the M×M statistics (solved once, in the trainer)."""

    def __init__(self, dim: int, width: int, seed: int, weights: torch.Tensor) -> None:
        if weights.shape[0] != width:
            raise ValueError(f"a solved head of width {width} has {weights.shape[0]} rows")
        self.dim, self.width, self.seed, self.weights = dim, width, seed, weights.double()

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """Ridge outputs [N, classes], equal to `RidgeHead.scores` of the statistics it came from."""
        return (
            torch.relu(features.double() @ projection(self.seed, self.dim, self.width))
            @ self.weights
        )

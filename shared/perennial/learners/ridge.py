"""RanPAC's head: ReLU random features and ridge regression from additive statistics.

h = ReLU(x·P) with a fixed random Gaussian P (d×M, regenerated from its seed, never stored);
G = Σ h hᵀ and Q = Σ h yᵀ (one-hot y) are sums, so the head is order-invariant and task-free.
Every fifth example (by stream position) goes to a held-out part of the statistics; the ridge
strength λ is the grid value with the lowest held-out squared error,
err(W) = tr(WᵀG_v W) − 2 tr(WᵀQ_v), computed from one eigendecomposition of the training part
(no examples stored). The head is W = (G + λ·s·I)⁻¹Q over both parts (s: the Gram scale).

Selecting λ costs an eigendecomposition of an M×M matrix (about 0.25 s at M = 1024 on one
core), solving the head one Cholesky factorisation: `select_ridge` runs when the learner says
so (new classes, every `ridge_every` examples), `solve` whenever the statistics changed. The
learners choose λ in the background, on a copy of the statistics taken at that moment, while
learning goes on; whatever reads λ next (`solve`, `ridge`) waits for that choice, so the heads
are exactly those of choosing in line. `solution(wait=False)` is the exception, for a trainer's
timed versions: solved with the λ chosen before, it never waits. `SolvedHead` is what serving
needs: the solved W alone (the statistics stay with the trainer), scored exactly as
`RidgeHead.scores`.
"""

from __future__ import annotations

import functools
from concurrent.futures import Future, ThreadPoolExecutor

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
        self._ridge = grid[0]
        self._pending: Future[float | None] | None = None  # a choice of λ under way
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

    @property
    def ridge(self) -> float:
        """λ, as chosen by the last `select_ridge` (waiting for it if it is under way)."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._set_ridge(pending.result())
        return self._ridge

    @property
    def settled(self) -> bool:
        """Whether reading λ (or solving) would not wait for a choice under way."""
        return self._pending is None or self._pending.done()

    def select_ridge(self, background: bool = False) -> float:
        """Choose λ from the grid by the held-out error (unchanged while nothing is held out).
        With `background`, on a copy of the statistics in the selection thread; the next read
        of λ gets that choice (a newer call supersedes it). Returns λ as known now."""
        if background:
            if self._pending is not None:
                self._pending.cancel()  # superseded: nothing read λ in between
            gram, targets = self.gram.clone(), self.targets.clone()
            threads = torch.get_num_threads()  # OpenMP's count is per thread: the same there
            self._pending = _selector().submit(_choose_ridge, self.grid, gram, targets, threads)
            return self._ridge
        self._pending = None
        self._set_ridge(_choose_ridge(self.grid, self.gram, self.targets))
        return self._ridge

    def _set_ridge(self, ridge: float | None) -> None:
        if ridge is not None and ridge != self._ridge:
            self._ridge, self._solution = ridge, None

    def solve(self) -> torch.Tensor:
        """The head W [width, classes] for the current statistics and λ (cached; waits for a
        choice of λ under way)."""
        ridge = self.ridge  # settles a choice under way first (a new λ drops the cached W)
        if self._solution is None:
            self._solution = self._solve(ridge)
        return self._solution

    def solution(self, wait: bool = True) -> tuple[float, torch.Tensor]:
        """(λ, W) for the current statistics. `wait=False` does not wait for a choice of λ under
        way: W is solved with the λ chosen before it (what a version published meanwhile holds)."""
        if wait or self.settled:
            return self.ridge, self.solve()
        return self._ridge, self._solve(self._ridge)

    def _solve(self, ridge: float) -> torch.Tensor:
        gram, targets = self.gram.sum(0), self.targets.sum(0)
        scale = max(float(gram.diagonal().mean()), 1e-12)
        gram.diagonal().add_(ridge * scale * 1e-3)
        self._last = torch.cholesky_solve(targets, torch.linalg.cholesky(gram))
        return self._last

    def last_scores(self, features: torch.Tensor) -> torch.Tensor | None:
        """Ridge outputs of the newest solved head (None before the first solve): what the
        version last built from these statistics predicts, without solving again."""
        if self._last is None or self._last.shape[0] != self.width:
            return None
        return self.expand(features) @ self._last

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """Ridge outputs [N, classes]."""
        return self.scores_expanded(self.expand(features))

    def scores_expanded(self, h: torch.Tensor) -> torch.Tensor:
        """Ridge outputs [N, classes] of rows already expanded (`expand`)."""
        return h @ self.solve()

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
        self._ridge, self._pending, self._solution = ridge, None, None


@functools.cache
def _selector() -> ThreadPoolExecutor:
    """The thread that chooses λ beside learning (started on first use)."""
    return ThreadPoolExecutor(1, thread_name_prefix="ridge-selection")


def _choose_ridge(
    grid: tuple[float, ...], gram: torch.Tensor, targets: torch.Tensor, threads: int = 0
) -> float | None:
    """The grid value with the lowest held-out error for statistics `gram` [2, M, M] and
    `targets` [2, M, C] (training part, held-out part); None while nothing is held out."""
    if not targets[1].abs().sum() > 0:
        return None
    if threads:
        torch.set_num_threads(threads)
    train_gram, train_targets = gram[0], targets[0]
    scale = max(float(train_gram.diagonal().mean()), 1e-12)
    values, vectors = torch.linalg.eigh(train_gram)
    basis_targets = vectors.T @ train_targets
    held_gram = vectors.T @ _symmetric(gram[1]) @ vectors
    held_targets = vectors.T @ targets[1]
    best, best_error = grid[0], float("inf")
    for ridge in grid:
        w = basis_targets / (values + ridge * scale * 1e-3)[:, None]
        error = float((w * (held_gram @ w)).sum() - 2 * (w * held_targets).sum())
        if error < best_error:
            best, best_error = ridge, error
    return best


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

    def expand(self, features: torch.Tensor) -> torch.Tensor:
        """The ReLU random features h [N, width] of `features` [N, dim], float64."""
        return torch.relu(features.double() @ projection(self.seed, self.dim, self.width))

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        """Ridge outputs [N, classes], equal to `RidgeHead.scores` of the statistics it came from."""
        return self.scores_expanded(self.expand(features))

    def scores_expanded(self, h: torch.Tensor) -> torch.Tensor:
        """Ridge outputs [N, classes] of rows already expanded (`expand`)."""
        return h @ self.weights

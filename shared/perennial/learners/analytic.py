"""Learners with an analytic head on frozen backbone features: SimpleCIL and RanPAC.

Both are naturally task-free: each example only adds to running statistics, and
the order of the stream does not matter, so nothing is forgotten by the head
itself (old classes can only lose accuracy to new, confusable classes).

- SimpleCIL (Zhou et al. 2023): the prototype of a class is the mean of its
  features; scores are cosine similarities to the prototypes (softmax with a
  temperature for a distribution).
- RanPAC (McDonnell et al. 2023): h = ReLU(f·W) with a fixed random Gaussian W
  (d×M); statistics G = Σ h hᵀ and Q = Σ h yᵀ (one-hot y) are additive; the head
  is the ridge solution (G + λI)⁻¹Q. λ is picked from a grid by the squared error
  on a held-out fifth of the stream, computed from that fifth's own G and Q (no
  examples stored): err(W) = tr(WᵀG_v W) − 2 tr(WᵀQ_v) + const. Scores are a
  softmax of the ridge outputs (times `temperature`).

Features come from the bare backbone (no PET active). `learn_features` lets a
benchmark feed cached features; it is exactly what `learn` does after encoding.
The linear algebra is a few lines of torch (Cholesky solve), so no extra library.
"""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F

from perennial.learners.config import LearnerConfig, check_runtime
from perennial.pet import activate

_HELD_OUT_EVERY = 5  # every fifth example's statistics validate the ridge strength


class _FeatureLearner:
    """Shared bookkeeping: classes, counters, feature extraction, state round trip."""

    name = ""

    def __init__(self, backbone, config: LearnerConfig | None = None) -> None:
        config = config or LearnerConfig(learner=self.name)
        if config.learner != self.name:
            raise ValueError(
                f"{type(self).__name__} runs learner {self.name!r}, got {config.learner!r}"
            )
        self.backbone = backbone
        self.config = config
        self.classes: list[str] = []
        self.steps = 0
        self.examples = 0

    @torch.no_grad()
    def features(self, inputs) -> torch.Tensor:
        with activate(None):
            return self.backbone(self.backbone.prepare(inputs)).double()

    def learn(self, inputs, labels: list[str]) -> float:
        """Add a micro-batch to the statistics; returns 0.0 (there is no loss)."""
        if len(inputs) != len(labels) or not len(inputs):
            raise ValueError(
                f"need equally many inputs and labels, got {len(inputs)} and {len(labels)}"
            )
        self.learn_features(self.features(inputs), labels)
        return 0.0

    def learn_features(self, features: torch.Tensor, labels: list[str]) -> None:
        targets = torch.tensor([self._class_index(label) for label in labels])
        self._update(features.double(), targets)
        self.steps += 1
        self.examples += len(labels)

    def _class_index(self, label: str) -> int:
        if label not in self.classes:
            self.classes.append(label)
            self._grow()
        return self.classes.index(label)

    @torch.no_grad()
    def scores(self, inputs) -> torch.Tensor:
        return self.scores_features(self.features(inputs))

    def predict(self, inputs) -> list[str]:
        return [self.classes[i] for i in self.scores(inputs).argmax(-1).tolist()]

    def _metadata(self) -> dict[str, str]:
        return {
            "classes": json.dumps(self.classes),
            "learner": json.dumps(self.config.to_dict(), sort_keys=True),
            "steps": str(self.steps),
            "examples": str(self.examples),
            "runtime": self.backbone.runtime,  # the statistics hold features of this runtime
        }

    def _restore_counters(self, metadata: dict[str, str]) -> None:
        self.classes = json.loads(metadata["classes"])
        self.steps = int(metadata["steps"])
        self.examples = int(metadata["examples"])

    @classmethod
    def from_state(cls, backbone, tensors: dict[str, torch.Tensor], metadata: dict[str, str]):
        check_runtime(backbone, metadata)
        learner = cls(backbone, LearnerConfig.from_dict(json.loads(metadata["learner"])))
        learner._restore_counters(metadata)
        learner._load(tensors)
        return learner

    @classmethod
    def predictor_from_state(
        cls, backbone, tensors: dict[str, torch.Tensor], metadata: dict[str, str]
    ):
        return _Predictor(cls.from_state(backbone, tensors, metadata))

    # subclass hooks
    def _grow(self) -> None: ...
    def _update(self, features: torch.Tensor, targets: torch.Tensor) -> None: ...
    def _load(self, tensors: dict[str, torch.Tensor]) -> None: ...
    def scores_features(self, features: torch.Tensor) -> torch.Tensor: ...


class _Predictor:
    """Serving view of an analytic learner: `scores(backbone, inputs)` and `classes`."""

    def __init__(self, learner: _FeatureLearner) -> None:
        self.learner = learner
        self.classes = learner.classes
        if learner.classes:  # solve the head now, at load, not on the first request
            learner.scores_features(torch.zeros(1, learner.backbone.dim, dtype=torch.float64))

    def scores(self, backbone, inputs) -> torch.Tensor:
        with activate(None):
            features = backbone(backbone.prepare(inputs)).double()
        return self.learner.scores_features(features).float()


class SimpleCIL(_FeatureLearner):
    """Running class means of frozen features; cosine similarity to the means."""

    name = "simplecil"

    def __init__(self, backbone, config: LearnerConfig | None = None) -> None:
        super().__init__(backbone, config)
        self.sums = torch.zeros(0, backbone.dim, dtype=torch.float64)
        self.counts = torch.zeros(0, dtype=torch.float64)

    @property
    def trainable_parameters(self) -> int:
        return self.sums.numel()

    def _grow(self) -> None:
        self.sums = torch.cat([self.sums, self.sums.new_zeros(1, self.sums.shape[1])])
        self.counts = torch.cat([self.counts, self.counts.new_zeros(1)])

    def _update(self, features: torch.Tensor, targets: torch.Tensor) -> None:
        self.sums.index_add_(0, targets, features)
        self.counts.index_add_(0, targets, torch.ones(len(targets), dtype=torch.float64))

    def scores_features(self, features: torch.Tensor) -> torch.Tensor:
        means = self.sums / self.counts.clamp(min=1)[:, None]
        cosine = F.normalize(features.double(), dim=-1) @ F.normalize(means, dim=-1).T
        return F.softmax(self.config.temperature * cosine, dim=-1)

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        return {"sums": self.sums.clone(), "counts": self.counts.clone()}, self._metadata()

    def _load(self, tensors: dict[str, torch.Tensor]) -> None:
        self.sums, self.counts = (
            tensors["sums"].double().clone(),
            tensors["counts"].double().clone(),
        )


class RanPAC(_FeatureLearner):
    """Random projection + ReLU features, ridge-regression head from additive Gram statistics."""

    name = "ranpac"

    def __init__(self, backbone, config: LearnerConfig | None = None) -> None:
        super().__init__(backbone, config)
        generator = torch.Generator().manual_seed(self.config.seed)
        m = self.config.projection_dim
        self.projection = torch.randn(backbone.dim, m, generator=generator, dtype=torch.float64)
        # [train part, held-out part]: G and Q for each, so λ can be validated.
        self.gram = torch.zeros(2, m, m, dtype=torch.float64)
        self.targets = torch.zeros(2, m, 0, dtype=torch.float64)
        self._solution: tuple[int, torch.Tensor] | None = None  # (examples, head) cache
        self.ridge = float("nan")

    @property
    def trainable_parameters(self) -> int:
        return self.config.projection_dim * len(self.classes)

    def _grow(self) -> None:
        self.targets = torch.cat(
            [self.targets, self.targets.new_zeros(2, self.targets.shape[1], 1)], dim=2
        )

    def expand(self, features: torch.Tensor) -> torch.Tensor:
        return torch.relu(features.double() @ self.projection)

    def _update(self, features: torch.Tensor, targets: torch.Tensor) -> None:
        h = self.expand(features)
        y = F.one_hot(targets, len(self.classes)).double()
        held_out = (
            torch.arange(len(targets)) + self.examples
        ) % _HELD_OUT_EVERY == _HELD_OUT_EVERY - 1
        for part, rows in ((0, ~held_out), (1, held_out)):
            if rows.any():
                # h.T @ h is not exactly symmetric on every CPU's BLAS; symmetrising each increment
                # makes the live Gram matrix exactly what its stored upper triangle restores.
                increment = h[rows].T @ h[rows]
                self.gram[part] += (increment + increment.T) * 0.5
                self.targets[part] += h[rows].T @ y[rows]

    def head(self) -> torch.Tensor:
        """The ridge head [M, C] for the current statistics (cached until new data)."""
        if self._solution is not None and self._solution[0] == self.examples:
            return self._solution[1]
        eye = torch.eye(self.config.projection_dim, dtype=torch.float64)
        scale = max(float(self.gram[0].diagonal().mean()), 1e-12)  # λ relative to the Gram scale
        best, best_error = self.config.ridge_grid[0], float("inf")
        if self.targets[1].abs().sum() > 0:
            for ridge in self.config.ridge_grid:
                w = torch.linalg.solve(self.gram[0] + ridge * scale * 1e-3 * eye, self.targets[0])
                error = float((w * (self.gram[1] @ w)).sum() - 2 * (w * self.targets[1]).sum())
                if error < best_error:
                    best, best_error = ridge, error
        total_gram, total_targets = self.gram.sum(0), self.targets.sum(0)
        scale = max(float(total_gram.diagonal().mean()), 1e-12)
        head = torch.linalg.solve(total_gram + best * scale * 1e-3 * eye, total_targets)
        self.ridge = best
        self._solution = (self.examples, head)
        return head

    def scores_features(self, features: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.config.temperature * (self.expand(features) @ self.head()), dim=-1)

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """Projection, targets and the Gram matrices' upper triangles (they are symmetric:
        half the snapshot, still exact)."""
        rows, cols = torch.triu_indices(*self.gram.shape[1:])
        tensors = {
            "projection": self.projection.clone(),
            "gram_upper": self.gram[:, rows, cols].clone(),
            "targets": self.targets.clone(),
        }
        return tensors, self._metadata()

    def _load(self, tensors: dict[str, torch.Tensor]) -> None:
        self.projection = tensors["projection"].double().clone()
        m = self.projection.shape[1]
        rows, cols = torch.triu_indices(m, m)
        upper = tensors["gram_upper"].double()
        self.gram = torch.zeros(2, m, m, dtype=torch.float64)
        self.gram[:, rows, cols] = upper
        self.gram[:, cols, rows] = upper
        self.targets = tensors["targets"].double().clone()

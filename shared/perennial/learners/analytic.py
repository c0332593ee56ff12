"""Learners with an analytic head on frozen backbone features: SimpleCIL and RanPAC.

Both are naturally task-free: each example only adds to running statistics, and
the order of the stream does not matter, so nothing is forgotten by the head
itself (old classes can only lose accuracy to new, confusable classes).

- SimpleCIL (Zhou et al. 2023): the prototype of a class is the mean of its
  features; scores are cosine similarities to the prototypes (softmax with a
  temperature for a distribution).
- RanPAC (McDonnell et al. 2023) without its first-session adaptation (that is the
  `fsa` learner): ReLU random features and a ridge head from additive statistics, λ
  validated on a held-out fifth of the stream (`perennial.learners.ridge`). Scores are a
  softmax of the ridge outputs (times `temperature`).

Features come from the bare backbone (no PET active). `learn_features` lets a
benchmark feed cached features; it is exactly what `learn` does after encoding.
The linear algebra is a few lines of torch (Cholesky solve), so no extra library.
"""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F

from perennial.learners.config import LearnerConfig, check_runtime, snapshot_metadata
from perennial.learners.ridge import RidgeHead
from perennial.pet import activate


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
        return snapshot_metadata(self)

    def _restore_counters(self, metadata: dict[str, str]) -> None:
        self.classes = json.loads(metadata["classes"])
        self.steps = int(metadata["steps"])
        self.examples = int(metadata["examples"])

    @classmethod
    def from_state(cls, backbone, tensors: dict[str, torch.Tensor], metadata: dict[str, str]):
        check_runtime(backbone, metadata)
        learner = cls(backbone, LearnerConfig.from_dict(json.loads(metadata["learner"])))
        learner._restore_counters(metadata)
        learner._load(tensors, metadata)
        return learner

    @classmethod
    def predictor_from_state(
        cls, backbone, tensors: dict[str, torch.Tensor], metadata: dict[str, str]
    ):
        return _Predictor(cls.from_state(backbone, tensors, metadata))

    # subclass hooks
    def _grow(self) -> None: ...
    def _update(self, features: torch.Tensor, targets: torch.Tensor) -> None: ...
    def _load(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None: ...
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

    def _load(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
        self.sums, self.counts = (
            tensors["sums"].double().clone(),
            tensors["counts"].double().clone(),
        )


class RanPAC(_FeatureLearner):
    """Random projection + ReLU features, ridge-regression head from additive Gram statistics
    (`perennial.learners.ridge.RidgeHead`) on the frozen backbone's features."""

    name = "ranpac"

    def __init__(self, backbone, config: LearnerConfig | None = None) -> None:
        super().__init__(backbone, config)
        c = self.config
        self.ridge_head = RidgeHead(backbone.dim, c.projection_dim, c.seed, c.ridge_grid)
        self._selected = (0, 0)  # (examples, classes) at the last choice of λ

    @property
    def projection(self) -> torch.Tensor:
        return self.ridge_head.projection

    @property
    def ridge(self) -> float:
        return self.ridge_head.ridge

    @property
    def trainable_parameters(self) -> int:
        return self.config.projection_dim * len(self.classes)

    def _grow(self) -> None:
        self.ridge_head.grow(len(self.classes))

    def _update(self, features: torch.Tensor, targets: torch.Tensor) -> None:
        positions = torch.arange(len(targets)) + self.examples
        self.ridge_head.add(features, targets, positions)
        self._selected = select_when_due(self.ridge_head, self._selected, self.examples + len(targets),
                                         len(self.classes), self.config.ridge_every)  # fmt: skip

    def head(self) -> torch.Tensor:
        """The ridge head [M, C] for the current statistics (cached until new data)."""
        return self.ridge_head.solve()

    def scores_features(self, features: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.config.temperature * self.ridge_head.scores(features), dim=-1)

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        metadata = {**self._metadata(), "ridge": json.dumps([self.ridge, *self._selected])}
        return self.ridge_head.state(""), metadata

    def _load(self, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
        ridge, *selected = json.loads(metadata["ridge"])
        self.ridge_head.load(tensors, "", ridge)
        self._selected = tuple(selected)


def select_when_due(
    head: RidgeHead,
    selected: tuple[int, int],
    examples: int,
    classes: int,
    every: int,
    queued: int = 0,
) -> tuple[int, int]:
    """Choose λ again when classes arrived or `every` examples passed since the last choice, at
    example counts the stream decides (not at the times something asked for a prediction), so a
    replay of the same micro-batches chooses the same λ. The choice runs beside learning; the
    next solve waits for it. `queued`: examples to be added before anything reads λ (a
    catch-up's backlog); from `every` on, another choice falls due among them and supersedes
    this one, which is then not computed (λ, when read, is the same)."""
    if classes != selected[1] or examples - selected[0] >= every:
        if queued < every:
            head.select_ridge(background=True)
        return examples, classes
    return selected

"""Continual learners on a task-free stream, one interface, chosen by configuration.

Every learner has `learn(inputs, labels) -> loss`, `classes`, `examples`, `steps`,
`predict(inputs)`, `state() -> (tensors, metadata)` (the metadata names the backbone:
`backbone.signature`) and `from_state(...)`;
`load_predictor(backbone, tensors, metadata)` rebuilds from a snapshot what
serving needs: an object with `.scores(backbone, inputs) -> [N, C]` and `.classes`.
The learners and their knobs: `perennial.learners.config`.
"""

from __future__ import annotations

import json
from typing import Protocol

import torch

from perennial.learners.analytic import RanPAC, SimpleCIL
from perennial.learners.config import DEFAULT_LEARNER, LearnerConfig, check_backbone
from perennial.learners.fsa import FirstSessionLearner, FirstSessionPredictor
from perennial.learners.lae import Ensemble, LAELearner

__all__ = [
    "DEFAULT_LEARNER",
    "LEARNERS",
    "Ensemble",
    "FirstSessionLearner",
    "FirstSessionPredictor",
    "LAELearner",
    "Learner",
    "LearnerConfig",
    "Predictor",
    "RanPAC",
    "SimpleCIL",
    "build_learner",
    "load_predictor",
    "restore_learner",
    "serving_state",
]

LEARNERS = {
    "lae": LAELearner,
    "naive": LAELearner,
    "simplecil": SimpleCIL,
    "ranpac": RanPAC,
    "fsa": FirstSessionLearner,
}


class Predictor(Protocol):
    """What serving needs from a snapshot."""

    classes: list[str]

    def scores(self, backbone, inputs) -> torch.Tensor: ...


class Learner(Protocol):
    """What the trainer needs from a learner."""

    classes: list[str]
    steps: int
    examples: int

    def learn(self, inputs, labels: list[str]) -> float: ...

    def predict(self, inputs) -> list[str]: ...

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]: ...


def serving_state(
    learner: Learner, wait: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """What a served version of `learner` holds: its serving view when it has one (FSA: the
    solved head and the PET, a few hundred KB), else its whole `state()`. Publish it with
    `SnapshotStore.publish`; `load_predictor` reads either. `wait=False` (a trainer's timed
    versions): a serving view does not wait for a choice of λ under way."""
    serving = getattr(learner, "serving", None)
    return serving(wait=wait) if serving is not None else learner.state()


def build_learner(backbone, config: LearnerConfig | None = None) -> Learner:
    """A fresh learner of `config.learner` on `backbone`."""
    config = config or LearnerConfig()
    return LEARNERS[config.learner](backbone, config)


def _config(metadata: dict[str, str]) -> LearnerConfig:
    return LearnerConfig.from_dict(json.loads(metadata["learner"]))


def restore_learner(
    backbone, tensors: dict[str, torch.Tensor], metadata: dict[str, str]
) -> Learner:
    """The learner a `state()` snapshot came from, ready to continue exactly."""
    check_backbone(backbone, metadata)
    return LEARNERS[_config(metadata).learner].from_state(backbone, tensors, metadata)


def load_predictor(
    backbone, tensors: dict[str, torch.Tensor], metadata: dict[str, str]
) -> Predictor:
    """Serving's single entry point: the predictor in a snapshot, frozen."""
    check_backbone(backbone, metadata)
    return LEARNERS[_config(metadata).learner].predictor_from_state(backbone, tensors, metadata)

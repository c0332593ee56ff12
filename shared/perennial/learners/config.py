"""The configuration every learner takes, and the names of the learners.

Learners (`LearnerConfig.learner`):
- "lae": Learning–Accumulation–Ensemble with any PET method (perennial.learners.lae);
- "naive": sequential fine-tuning of PET + head on the stream (the forgetting lower bound);
- "simplecil": frozen features, running class means, cosine scores;
- "ranpac": frozen features, random projection + ReLU, ridge head from Gram statistics;
- "fsa": first-session adaptation: a PET learns on the stream's first window, then a RanPAC
  head learns from [frozen multi-layer ⊕ adapted] features (perennial.learners.fsa).
The default is the best task-free learner measured by `make bench-learning`
(docs/LEARNING.md).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from perennial.errors import FailedPrecondition
from perennial.pet import LoRAConfig, PETConfig, config_from_dict

LEARNER_NAMES = ("lae", "naive", "simplecil", "ranpac", "fsa")
DEFAULT_LEARNER = "fsa"
"""The best task-free learner by measurement on validation streams (docs/LEARNING.md)."""


@dataclass(frozen=True)
class LearnerConfig:
    """Every knob of every learner, with documented defaults.

    learner: which learner (LEARNER_NAMES).
    pet: the PET method and its hyperparameters (LAE, naive and FSA).
    lr: Adam learning rate for the online PET module and the head (LAE, naive).
    ema_decay: offline ← decay·offline + (1−decay)·online after each optimizer step.
        LAE uses 0.9999 with thousands of steps per task; our streams bring new classes
        every ~10–100 steps (batches of 16), so the offline module averages over
        ~1/(1−decay) = 1000 steps. Measured on WordNet (12 classes, 3 stages): 0.55
        accuracy on seen classes vs 0.33 with lr=1e-3, window=256, decay=0.99.
    ema_warmup: for the first `ema_warmup` steps the offline module copies the online
        one (nothing worth averaging yet); EMA starts afterwards.
    loss_window: the loss covers classes seen in the last `loss_window` examples (the
        stream's stand-in for LAE's current-task logits); absent classes are masked.
    min_loss_classes: the loss always covers at least this many of the most recently
        seen classes (a softmax over one class has no gradient).
    freeze_steps: after a new class appears, the PET module stays frozen (head-only
        training) for this many steps, so the new zero-initialised head row does not
        drag the features (LAE's warm-up after a task boundary).
    projection_dim: RanPAC's and FSA's random-projection width M (Gram matrix is M×M float64:
        8 MiB per adapter at 1024, 32 MiB at 2048, in memory and in every snapshot).
    ridge_grid: RanPAC's candidate ridge strengths; the one with the lowest squared
        error on a held-out fifth of the stream's statistics is used.
    ridge_every: choose λ again after this many examples (and whenever classes arrive);
        choosing costs an M×M eigendecomposition, solving with the chosen λ a Cholesky.
    temperature: SimpleCIL's cosine-logit scale, RanPAC's and FSA's ridge-output scale, for
        their softmax scores.
    warmup_examples / warmup_min_classes / warmup_min_count / warmup_cap: FSA's first window
        closes at the first micro-batch end with at least `warmup_examples` examples and
        `warmup_min_classes` classes of `warmup_min_count` examples each, or at `warmup_cap`.
    warmup_epochs / warmup_lr: FSA's PET training on that window (Adam, batches of 16). The
        window, epochs and rate are chosen on validation streams by `make bench-learning`
        (docs/LEARNING.md); the cap is 4 times the window, as the trainer sets it.
    adapt_blocks: FSA's PET sits in the last `adapt_blocks` blocks (0: the backbone's default).
    feature_states: hidden states FSA pools into its frozen features (indices into the
        backbone's hidden states, negative from the end; empty: the backbone's default).
    seed: seeds parameter initialisation and projections; CPU training is deterministic.
    """

    learner: str = DEFAULT_LEARNER
    pet: PETConfig = field(default_factory=LoRAConfig)
    lr: float = 3e-4
    ema_decay: float = 0.999
    ema_warmup: int = 0
    loss_window: int = 16
    min_loss_classes: int = 2
    freeze_steps: int = 0
    projection_dim: int = 1024
    ridge_grid: tuple[float, ...] = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0, 1e4)
    ridge_every: int = 256
    warmup_examples: int = 1024
    warmup_min_classes: int = 4
    warmup_min_count: int = 8
    warmup_cap: int = 4096
    warmup_epochs: int = 5
    warmup_lr: float = 3e-4
    adapt_blocks: int = 0
    feature_states: tuple[int, ...] = ()
    temperature: float = 16.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.learner not in LEARNER_NAMES:
            raise ValueError(
                f"learner must be one of {sorted(LEARNER_NAMES)}, got {self.learner!r}"
            )
        if not 0 < self.lr < 1:
            raise ValueError(f"lr must be in (0, 1), got {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        for name in ("ema_warmup", "freeze_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.loss_window < 1:
            raise ValueError(f"loss_window must be >= 1, got {self.loss_window}")
        if self.min_loss_classes < 1:
            raise ValueError(f"min_loss_classes must be >= 1, got {self.min_loss_classes}")
        for name in ("warmup_examples", "warmup_min_classes", "warmup_min_count", "warmup_cap",
                     "warmup_epochs"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.warmup_lr < 1:
            raise ValueError(f"warmup_lr must be in (0, 1), got {self.warmup_lr}")
        if self.adapt_blocks < 0:
            raise ValueError(
                f"adapt_blocks must be >= 0 (0: the backbone's default), got {self.adapt_blocks}"
            )
        if self.ridge_every < 1:
            raise ValueError(f"ridge_every must be >= 1, got {self.ridge_every}")
        if self.projection_dim < 1:
            raise ValueError(f"projection_dim must be >= 1, got {self.projection_dim}")
        if not self.ridge_grid or min(self.ridge_grid) <= 0:
            raise ValueError(f"ridge_grid must hold positive values, got {self.ridge_grid}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    def to_dict(self) -> dict:
        return {**asdict(self), "pet": self.pet.to_dict()}

    @classmethod
    def from_dict(cls, fields: dict) -> LearnerConfig:
        fields = dict(fields)
        fields["pet"] = config_from_dict(fields["pet"])
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
        return cls(**fields)


def check_backbone(backbone, metadata: dict[str, str]) -> None:
    """Refuse a snapshot made on another backbone than `backbone` (text vs image, or images
    resized to another size): its weights and statistics belong to other features. Snapshots
    from before the backbone was recorded were all made on the text backbone."""
    made_with = metadata.get("backbone", "text")
    if made_with != backbone.signature:
        raise FailedPrecondition(
            f"the snapshot was made on the {made_with!r} backbone, this service runs "
            f"{backbone.signature!r}: set {_backbone_settings(made_with)} on the trainer and "
            "inference (they must agree), or use another adapter id"
        )


def _backbone_settings(signature: str) -> str:
    kind, _, size = signature.partition("-")
    return f"PERENNIAL_BACKBONE={kind}" + (f" and PERENNIAL_IMAGE_SIZE={size}" if size else "")


def snapshot_metadata(learner) -> dict[str, str]:
    """What every learner's snapshot says about it: classes, configuration, counters, and the
    backbone and runtime its features came from (statistics hold features of those)."""
    return {
        "classes": json.dumps(learner.classes),
        "learner": json.dumps(learner.config.to_dict(), sort_keys=True),
        "steps": str(learner.steps),
        "examples": str(learner.examples),
        "runtime": learner.backbone.runtime,
        "backbone": learner.backbone.signature,
    }


def check_runtime(backbone, metadata: dict[str, str]) -> None:
    """Refuse a snapshot whose features came from another backbone runtime than `backbone`'s:
    an analytic head's statistics are only valid for the features they were summed from."""
    made_with = metadata.get("runtime", "torch")
    if made_with != backbone.runtime:
        raise FailedPrecondition(
            f"the snapshot's features were computed with runtime {made_with!r}, this backbone runs "
            f"{backbone.runtime!r}: set PERENNIAL_RUNTIME={made_with} (trainer and inference must agree)"
        )

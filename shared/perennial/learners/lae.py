"""The Learning–Accumulation–Ensemble (LAE) learner on a task-free stream, and naive
sequential fine-tuning (the same machinery with masking, EMA and ensemble switched off).

- Learning: an *online* PET module and the class head train on micro-batches
  (Adam, constant learning rate).
- Accumulation: an *offline* PET module is an exponential moving average of the
  online one after every optimizer step (a copy during the first `ema_warmup`
  steps). Only PET weights are averaged; the head is shared.
- Ensemble: scores are the elementwise max of the two modules' softmaxes,
  `argmax_c max(softmax(z_on)_c, softmax(z_off)_c)`.

Class-incremental head: one linear head whose rows grow when a new label first
appears. On a stream without task boundaries the loss covers only the classes
seen in a recent window of examples (absent classes are masked), and the PET
module is frozen (head-only training) for `freeze_steps` steps after a new class.
"naive" instead uses every seen class in the loss and predicts with the online
module alone.
"""

from __future__ import annotations

import json
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from perennial.learners.config import LearnerConfig
from perennial.pet import PETConfig, PETModule, activate, create_module, inject

_PARTS = ("online", "offline", "head")


def ensemble_probabilities(online: torch.Tensor, offline: torch.Tensor) -> torch.Tensor:
    """LAE's ensemble rule on two modules' logits [N, C]: the elementwise max of the two
    softmaxes, renormalised (the argmax is unchanged; each row is a distribution for clients)."""
    best = torch.maximum(F.softmax(online, dim=-1), F.softmax(offline, dim=-1))
    return best / best.sum(-1, keepdim=True)


class Ensemble(nn.Module):
    """What serving needs: online and offline PET modules, the shared head, class names.

    With `offline=None` (naive fine-tuning) the scores are the online module's softmax.
    """

    def __init__(
        self, online: PETModule, offline: PETModule | None, head: nn.Linear, classes: list[str]
    ):
        super().__init__()
        self.online, self.offline, self.head = online, offline, head
        self.classes = classes

    def scores(self, backbone, inputs) -> torch.Tensor:
        """[N, C] ensemble scores (`ensemble_probabilities`), or the online softmax (naive)."""
        batch = backbone.prepare(inputs)
        with activate(self.online):
            online = self.head(backbone(batch))
        if self.offline is None:
            return F.softmax(online, dim=-1)
        with activate(self.offline):
            offline = self.head(backbone(batch))
        return ensemble_probabilities(online, offline)

    def tensors(self) -> dict[str, torch.Tensor]:
        parts = {"online": self.online, "head": self.head}
        if self.offline is not None:
            parts["offline"] = self.offline
        return _prefixed(parts)

    @classmethod
    def from_tensors(
        cls, backbone, config: PETConfig, tensors: dict[str, torch.Tensor], classes: list[str]
    ) -> Ensemble:
        shapes = inject(backbone.encoder, config)
        has_offline = any(k.startswith("offline.") for k in tensors)
        online = create_module(config, shapes)
        offline = create_module(config, shapes) if has_offline else None
        model = cls(online, offline, _zero_linear(backbone.dim, len(classes)), classes)
        model.load_state_dict({k: v for k, v in tensors.items() if k.split(".")[0] in _PARTS})
        for pet in (online, offline):  # PETs run inside the backbone; the head stays on the CPU
            if pet is not None:
                pet.to(backbone.device)
        return model.requires_grad_(False)


def _zero_linear(dim: int, classes: int) -> nn.Linear:
    with warnings.catch_warnings():  # a head with no classes yet is expected
        warnings.filterwarnings("ignore", "Initializing zero-element tensors")
        head = nn.Linear(dim, classes)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
    return head


def _prefixed(modules: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.{name}": tensor.detach().contiguous()
        for prefix, module in modules.items()
        for name, tensor in module.state_dict().items()
    }


class LAELearner:
    """Online/offline PET modules + growing head, trained one micro-batch at a time
    (`config.learner` "lae"), or plain sequential fine-tuning ("naive")."""

    def __init__(self, backbone, config: LearnerConfig | None = None) -> None:
        config = config or LearnerConfig(learner="lae")
        if config.learner not in ("lae", "naive"):
            raise ValueError(f"LAELearner runs learner 'lae' or 'naive', got {config.learner!r}")
        self.backbone = backbone
        self.config = config
        self.naive = config.learner == "naive"
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(config.seed)
        shapes = inject(backbone.encoder, config.pet)
        self.online = create_module(config.pet, shapes).to(
            backbone.device
        )  # PETs run inside the backbone
        torch.random.set_rng_state(generator_state)
        self.offline: PETModule | None = None
        if not self.naive:
            self.offline = (
                create_module(config.pet, shapes).to(backbone.device).requires_grad_(False)
            )
            self.offline.load_state_dict(self.online.state_dict())
        self.head = _zero_linear(backbone.dim, 0)
        self.classes: list[str] = []
        self.steps = 0
        self.examples = 0
        self._last_seen: dict[int, int] = {}  # class index -> example count when last seen
        self._frozen_until = 0  # PET trains again from this step on
        self.optimizer = torch.optim.Adam(
            [{"params": list(self.online.parameters())}, {"params": list(self.head.parameters())}],
            lr=config.lr,
        )

    @property
    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.online.parameters()) + sum(
            p.numel() for p in self.head.parameters()
        )

    # -- learning -----------------------------------------------------------------
    def learn(self, inputs, labels: list[str]) -> float:
        """One optimizer step on a micro-batch; returns the loss."""
        if len(inputs) != len(labels) or not len(inputs):
            raise ValueError(
                f"need equally many inputs and labels, got {len(inputs)} and {len(labels)}"
            )
        known = len(self.classes)
        targets = torch.tensor([self._class_index(label) for label in labels])
        if len(self.classes) > known and self.config.freeze_steps:
            self._frozen_until = self.steps + self.config.freeze_steps
        with activate(self.online):
            logits = self.head(self.backbone(self.backbone.prepare(inputs)))
        absent = self._absent_classes(targets.tolist())
        loss = F.cross_entropy(logits.masked_fill(absent, float("-inf")), targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.steps < self._frozen_until:
            for param in self.online.parameters():
                param.grad = None  # Adam skips parameters without a gradient
        self._hold_absent_classes(absent)
        self.optimizer.step()
        self._accumulate()
        self.steps += 1
        self.examples += len(labels)
        return float(loss.detach())

    def _absent_classes(self, targets: list[int]) -> torch.Tensor:
        """Mask of classes outside the loss: not seen in the last `loss_window` examples
        and not among the `min_loss_classes` most recently seen (one class alone gives no
        signal). Naive fine-tuning masks nothing."""
        for position, target in enumerate(targets, start=self.examples + 1):
            self._last_seen[target] = position
        if self.naive:
            return torch.zeros(len(self.classes), dtype=torch.bool)
        newest = self.examples + len(targets)
        by_recency = sorted(self._last_seen, key=self._last_seen.__getitem__, reverse=True)
        active = set(by_recency[: self.config.min_loss_classes])
        active.update(
            c for c, seen in self._last_seen.items() if seen > newest - self.config.loss_window
        )
        absent = torch.ones(len(self.classes), dtype=torch.bool)
        absent[sorted(active)] = False
        return absent

    @torch.no_grad()
    def _hold_absent_classes(self, absent: torch.Tensor) -> None:
        """Clear Adam's momentum for masked classes so their head rows stay put."""
        for param in self.head.parameters():
            state = self.optimizer.state.get(param)
            if state:
                state["exp_avg"][absent] = 0.0

    @torch.no_grad()
    def _accumulate(self) -> None:
        if self.offline is None:
            return
        decay = self.config.ema_decay if self.steps >= self.config.ema_warmup else 0.0
        for offline, online in zip(
            self.offline.parameters(), self.online.parameters(), strict=True
        ):
            offline.mul_(decay).add_(online, alpha=1 - decay)

    def _class_index(self, label: str) -> int:
        try:
            return self.classes.index(label)
        except ValueError:
            self._grow_head(label)
            return len(self.classes) - 1

    def _grow_head(self, label: str) -> None:
        """Add a zero-initialised row for `label`, carrying Adam's state over."""
        old = self.head
        new = _zero_linear(self.backbone.dim, old.out_features + 1)
        with torch.no_grad():
            new.weight[: old.out_features] = old.weight
            new.bias[: old.out_features] = old.bias
        for old_param, new_param in ((old.weight, new.weight), (old.bias, new.bias)):
            state = self.optimizer.state.pop(old_param, None)
            if state:
                for name in ("exp_avg", "exp_avg_sq"):
                    padding = torch.zeros((1, *state[name].shape[1:]))
                    state[name] = torch.cat([state[name], padding])
                self.optimizer.state[new_param] = state
        self.optimizer.param_groups[1]["params"] = list(new.parameters())
        self.head = new
        self.classes.append(label)

    # -- prediction and persistence -------------------------------------------------
    def ensemble(self) -> Ensemble:
        return Ensemble(self.online, self.offline, self.head, self.classes)

    @torch.no_grad()
    def scores(self, inputs) -> torch.Tensor:
        return self.ensemble().scores(self.backbone, inputs)

    @torch.no_grad()
    def predict(self, inputs) -> list[str]:
        return [self.classes[i] for i in self.scores(inputs).argmax(-1).tolist()]

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """Everything needed to resume exactly: tensors and string metadata."""
        tensors = self.ensemble().tensors()
        params = [*self.online.parameters(), *self.head.parameters()]
        for index, param in enumerate(params):
            for name, value in self.optimizer.state.get(param, {}).items():
                tensors[f"optimizer.{index}.{name}"] = value.detach().clone().reshape(value.shape)
        metadata = {
            "classes": json.dumps(self.classes),
            "learner": json.dumps(self.config.to_dict(), sort_keys=True),
            "steps": str(self.steps),
            "examples": str(self.examples),
            "frozen_until": str(self._frozen_until),
            "last_seen": json.dumps(sorted(self._last_seen.items())),
            "backbone": self.backbone.signature,
        }
        return tensors, metadata

    @classmethod
    def from_state(
        cls, backbone, tensors: dict[str, torch.Tensor], metadata: dict[str, str]
    ) -> LAELearner:
        learner = cls(backbone, LearnerConfig.from_dict(json.loads(metadata["learner"])))
        for label in json.loads(metadata["classes"]):
            learner._grow_head(label)
        learner.ensemble().load_state_dict(
            {k: v for k, v in tensors.items() if k.split(".")[0] in _PARTS}
        )
        params = [*learner.online.parameters(), *learner.head.parameters()]
        for index, param in enumerate(params):
            state = {
                name.split(".", 2)[2]: value
                for name, value in tensors.items()
                if name.startswith(f"optimizer.{index}.")
            }
            if state:
                learner.optimizer.state[param] = state
        learner.steps = int(metadata["steps"])
        learner.examples = int(metadata["examples"])
        learner._frozen_until = int(metadata.get("frozen_until", "0"))
        learner._last_seen = {c: seen for c, seen in json.loads(metadata["last_seen"])}
        return learner

    @classmethod
    def predictor_from_state(
        cls, backbone, tensors: dict[str, torch.Tensor], metadata: dict[str, str]
    ) -> Ensemble:
        config = LearnerConfig.from_dict(json.loads(metadata["learner"]))
        return Ensemble.from_tensors(backbone, config.pet, tensors, json.loads(metadata["classes"]))

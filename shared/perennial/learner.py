"""The Learning–Accumulation–Ensemble (LAE) learner on a task-free stream.

- Learning: an *online* PET module and the class head train on micro-batches
  (Adam, constant learning rate).
- Accumulation: an *offline* PET module is an exponential moving average of the
  online one after every optimizer step. Only PET weights are averaged; the
  head is shared.
- Ensemble: scores are the elementwise max of the two modules' softmaxes,
  `argmax_c max(softmax(z_on)_c, softmax(z_off)_c)`.

Class-incremental head: one linear head whose rows grow when a new label first
appears. On a stream without task boundaries, the loss covers only the classes
seen in a recent window of examples (absent classes are masked), so learning
new classes does not push the old ones' logits down.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from perennial.backbone import TextBackbone
from perennial.pet import LoRAConfig, PETModule, activate, inject


@dataclass(frozen=True)
class LearnerConfig:
    """Every knob of the learner, with defaults tuned for a stream of ~10–100 examples/s.

    lr: Adam learning rate for the online PET module and the head.
    ema_decay: offline ← decay·offline + (1−decay)·online after each step. The LAE
        paper uses 0.9999 with thousands of steps per task; our streams bring new
        classes every ~100 steps, so the offline module remembers ~1000 steps.
    loss_window: the loss covers classes seen in the last `loss_window` examples
        (about one micro-batch: the stream's stand-in for LAE's current-task logits).
    min_loss_classes: the loss always covers at least this many of the most recently
        seen classes (a softmax over one class has no gradient).
    Defaults measured on the WordNet stream (12 classes, 3 stages): accuracy on seen
    classes 0.55 vs 0.33 with lr=1e-3, window=256, decay=0.99.
    seed: seeds parameter initialisation; CPU training is deterministic under it.
    """

    lora: LoRAConfig = field(default_factory=LoRAConfig)
    lr: float = 3e-4
    ema_decay: float = 0.999
    loss_window: int = 16
    min_loss_classes: int = 2
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.lr < 1:
            raise ValueError(f"lr must be in (0, 1), got {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.loss_window < 1:
            raise ValueError(f"loss_window must be >= 1, got {self.loss_window}")
        if self.min_loss_classes < 1:
            raise ValueError(f"min_loss_classes must be >= 1, got {self.min_loss_classes}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, fields: dict) -> LearnerConfig:
        return cls(**{**fields, "lora": LoRAConfig.from_dict(fields["lora"])})


class Ensemble(nn.Module):
    """What serving needs: online and offline PET modules, the shared head, class names."""

    def __init__(self, online: PETModule, offline: PETModule, head: nn.Linear, classes: list[str]):
        super().__init__()
        self.online, self.offline, self.head = online, offline, head
        self.classes = classes

    def scores(self, backbone: TextBackbone, texts: list[str]) -> torch.Tensor:
        """[N, C] ensemble scores: the elementwise max of both softmaxes, renormalised.

        Renormalising keeps the argmax and makes each row a distribution for clients.
        """
        batch = backbone.tokenize(texts)
        with activate(self.online):
            online = F.softmax(self.head(backbone(batch)), dim=-1)
        with activate(self.offline):
            offline = F.softmax(self.head(backbone(batch)), dim=-1)
        best = torch.maximum(online, offline)
        return best / best.sum(-1, keepdim=True)

    def tensors(self) -> dict[str, torch.Tensor]:
        return _prefixed({"online": self.online, "offline": self.offline, "head": self.head})

    @classmethod
    def from_tensors(
        cls, backbone: TextBackbone, config: LoRAConfig, tensors: dict[str, torch.Tensor], classes: list[str]
    ) -> Ensemble:
        shapes = inject(backbone.encoder, config)
        online, offline = PETModule(config, shapes), PETModule(config, shapes)
        head = _zero_linear(backbone.dim, len(classes))
        model = cls(online, offline, head, classes)
        model.load_state_dict({k: v for k, v in tensors.items() if k.split(".")[0] in _PARTS})
        return model.requires_grad_(False)


_PARTS = ("online", "offline", "head")


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
    """Online/offline PET modules + growing head, trained one micro-batch at a time."""

    def __init__(self, backbone: TextBackbone, config: LearnerConfig = LearnerConfig()) -> None:
        self.backbone = backbone
        self.config = config
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(config.seed)
        shapes = inject(backbone.encoder, config.lora)
        self.online = PETModule(config.lora, shapes)
        torch.random.set_rng_state(generator_state)
        self.offline = PETModule(config.lora, shapes).requires_grad_(False)
        self.offline.load_state_dict(self.online.state_dict())
        self.head = _zero_linear(backbone.dim, 0)
        self.classes: list[str] = []
        self.steps = 0
        self.examples = 0
        self._last_seen: dict[int, int] = {}  # class index -> example count when last seen
        self.optimizer = torch.optim.Adam(
            [{"params": list(self.online.parameters())}, {"params": list(self.head.parameters())}],
            lr=config.lr,
        )

    # -- learning -----------------------------------------------------------------
    def learn(self, texts: list[str], labels: list[str]) -> float:
        """One optimizer step on a micro-batch; returns the loss."""
        if len(texts) != len(labels) or not texts:
            raise ValueError(f"need equally many texts and labels, got {len(texts)} and {len(labels)}")
        targets = torch.tensor([self._class_index(label) for label in labels])
        with activate(self.online):
            logits = self.head(self.backbone(self.backbone.tokenize(texts)))
        absent = self._absent_classes(targets.tolist())
        loss = F.cross_entropy(logits.masked_fill(absent, float("-inf")), targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._hold_absent_classes(absent)
        self.optimizer.step()
        self._accumulate()
        self.steps += 1
        self.examples += len(texts)
        return float(loss.detach())

    def _absent_classes(self, targets: list[int]) -> torch.Tensor:
        """Mask of classes outside the loss: not seen in the last `loss_window` examples
        and not among the `min_loss_classes` most recently seen (one class alone gives no signal)."""
        for position, target in enumerate(targets, start=self.examples + 1):
            self._last_seen[target] = position
        newest = self.examples + len(targets)
        by_recency = sorted(self._last_seen, key=self._last_seen.__getitem__, reverse=True)
        active = set(by_recency[: self.config.min_loss_classes])
        active.update(c for c, seen in self._last_seen.items() if seen > newest - self.config.loss_window)
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
        decay = self.config.ema_decay
        for offline, online in zip(self.offline.parameters(), self.online.parameters(), strict=True):
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
    def predict(self, texts: list[str]) -> list[str]:
        scores = self.ensemble().scores(self.backbone, texts)
        return [self.classes[i] for i in scores.argmax(-1).tolist()]

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """Everything needed to resume exactly: tensors and string metadata."""
        tensors = self.ensemble().tensors()
        params = [*self.online.parameters(), *self.head.parameters()]
        for index, param in enumerate(params):
            for name, value in self.optimizer.state.get(param, {}).items():
                tensors[f"optimizer.{index}.{name}"] = value.detach().clone().reshape(value.shape)
        metadata = {
            "classes": json.dumps(self.classes),
            "learner": json.dumps(self.config.to_dict()),
            "steps": str(self.steps),
            "examples": str(self.examples),
            "last_seen": json.dumps(sorted(self._last_seen.items())),
        }
        return tensors, metadata

    @classmethod
    def from_state(
        cls, backbone: TextBackbone, tensors: dict[str, torch.Tensor], metadata: dict[str, str]
    ) -> LAELearner:
        learner = cls(backbone, LearnerConfig.from_dict(json.loads(metadata["learner"])))
        for label in json.loads(metadata["classes"]):
            learner._grow_head(label)
        ensemble = learner.ensemble()
        ensemble.load_state_dict({k: v for k, v in tensors.items() if k.split(".")[0] in _PARTS})
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
        learner._last_seen = {c: seen for c, seen in json.loads(metadata["last_seen"])}
        return learner

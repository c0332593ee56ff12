"""Parameter-efficient tuning (PET) modules attached to a frozen backbone.

Design: `inject` wraps the backbone's target layers once. A wrapped layer holds
no adapter weights of its own; it asks the *active* PET module (a context
variable, set with `activate`) for its contribution. So one frozen backbone
serves any number of adapters and versions, concurrently from many threads,
and a PET module is a plain `nn.Module` whose `state_dict` is the whole adapter
(saved as safetensors, never pickled).

LoRA (as in the LAE reference code): low-rank updates of chosen linear layers
(default K and V of self-attention) in the first blocks, with a learnable output
scale initialised to 1.0 and the up-projection B initialised to zero, so a new
module leaves the backbone's function unchanged.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

_ACTIVE: ContextVar[PETModule | None] = ContextVar("perennial_active_pet", default=None)


@contextlib.contextmanager
def activate(module: PETModule | None) -> Iterator[None]:
    """Run the backbone with `module`'s adapters (None = the bare backbone)."""
    token = _ACTIVE.set(module)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


@dataclass(frozen=True)
class LoRAConfig:
    """LoRA hyperparameters.

    rank: inner dimension of the update B·A (LAE uses 5).
    target_modules: names of the linear layers to adapt inside each block
        (BERT: "query", "key", "value", "dense"); LAE adapts K and V.
    layers: indices of the encoder blocks to adapt; LAE adapts the first blocks.
    init_scale: initial value of the learnable output scale (LAE: 1.0).
    """

    rank: int = 8
    target_modules: tuple[str, ...] = ("key", "value")
    layers: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
    init_scale: float = 1.0
    method: str = field(default="lora", init=False)

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if not self.target_modules:
            raise ValueError("LoRA target_modules is empty; name at least one linear layer")
        if not self.layers or min(self.layers) < 0:
            raise ValueError(f"LoRA layers must be non-negative block indices, got {self.layers}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, fields: dict) -> LoRAConfig:
        fields = {k: v for k, v in fields.items() if k != "method"}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


_BLOCK = re.compile(r"(?:^|\.)layer\.(\d+)\.")


def _targets(backbone: nn.Module, config: LoRAConfig) -> dict[str, nn.Linear]:
    found = {}
    for name, module in backbone.named_modules():
        block = _BLOCK.search(name)
        if (
            block
            and int(block.group(1)) in config.layers
            and name.rsplit(".", 1)[-1] in config.target_modules
            and isinstance(module, (nn.Linear, LoRALinear))
        ):
            found[name] = module
    if not found:
        raise ValueError(
            f"no layer of the backbone matches target_modules={config.target_modules} "
            f"in blocks {config.layers}"
        )
    return found


class LoRALinear(nn.Module):
    """A frozen linear layer plus the active PET module's low-rank update, if any."""

    def __init__(self, base: nn.Linear, path: str) -> None:
        super().__init__()
        self.base = base
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        module = _ACTIVE.get()
        if module is not None:
            out = out + module.delta(self.path, x)
        return out


def inject(backbone: nn.Module, config: LoRAConfig) -> dict[str, tuple[int, int]]:
    """Wrap the target layers of `backbone` (idempotent); return {path: (in, out)}."""
    shapes = {}
    for path, module in _targets(backbone, config).items():
        if isinstance(module, nn.Linear):
            parent_path, _, child = path.rpartition(".")
            setattr(backbone.get_submodule(parent_path), child, LoRALinear(module, path))
            linear = module
        else:
            linear = module.base
        shapes[path] = (linear.in_features, linear.out_features)
    return shapes


class PETModule(nn.Module):
    """One adapter's LoRA weights for every adapted layer, keyed by layer path."""

    def __init__(self, config: LoRAConfig, shapes: dict[str, tuple[int, int]]) -> None:
        super().__init__()
        self.config = config
        self.shapes = dict(shapes)
        self.lora_a = nn.ParameterDict()
        self.lora_b = nn.ParameterDict()
        self.scale = nn.ParameterDict()
        for path, (fan_in, fan_out) in sorted(shapes.items()):
            key = _key(path)
            a = torch.empty(config.rank, fan_in)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            self.lora_a[key] = nn.Parameter(a)
            self.lora_b[key] = nn.Parameter(torch.zeros(fan_out, config.rank))
            self.scale[key] = nn.Parameter(torch.tensor(float(config.init_scale)))

    def delta(self, path: str, x: torch.Tensor) -> torch.Tensor:
        key = _key(path)
        if key not in self.lora_a:
            return torch.zeros((), dtype=x.dtype)
        return self.scale[key] * (x @ self.lora_a[key].T @ self.lora_b[key].T)


def _key(path: str) -> str:
    return path.replace(".", "__")

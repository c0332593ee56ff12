"""LoRA (as in the LAE reference code): low-rank updates of chosen linear layers.

The update of a layer is `scale · B·A·x` with A ∈ R^{r×in} (Kaiming-uniform),
B ∈ R^{out×r} initialised to zero, so a new module leaves the backbone's function
unchanged; `scale` is learnable and starts at 1.0. Targets are `nn.Linear` layers
(BERT: "query", "key", "value", "dense"; LAE adapts K and V) or 1×1 convolutions
(EfficientNet: "_expand_conv", "_project_conv"), which are linear maps over channels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from perennial.pet.base import METHODS, Method, PETConfig, PETModule, Shapes, Wrapper, active, key_of


@dataclass(frozen=True)
class LoRAConfig(PETConfig):
    """LoRA hyperparameters (plus `layers` and `init_scale` from PETConfig).

    rank: inner dimension of the update B·A (LAE uses 5).
    target_modules: attribute names of the layers to adapt inside each block.
    """

    method = "lora"
    rank: int = 8
    target_modules: tuple[str, ...] = ("key", "value")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.rank}")
        if not self.target_modules:
            raise ValueError("LoRA target_modules is empty; name at least one linear layer")

    @classmethod
    def from_dict(cls, fields: dict) -> LoRAConfig:
        fields = {k: v for k, v in fields.items() if k != "method"}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})


def _is_pointwise(layer: nn.Module) -> bool:
    return (
        isinstance(layer, nn.Conv2d)
        and layer.kernel_size == (1, 1)
        and layer.groups == 1
        and layer.stride == (1, 1)
    )


def _fits(path: str, layer: nn.Module, config: LoRAConfig) -> bool:
    return path.rsplit(".", 1)[-1] in config.target_modules and (
        isinstance(layer, nn.Linear) or _is_pointwise(layer)
    )


def _shape(layer: nn.Module) -> tuple[int, int]:
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    return layer.in_channels, layer.out_channels


class LoRALinear(Wrapper):
    """A frozen linear (or 1×1 conv) layer plus the active LoRA module's update."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        module = active("lora", self.path)
        if module is not None:
            out = out + module.delta(self.path, x)
        return out


class LoRAModule(PETModule):
    """One adapter's LoRA weights: A, B and scale per adapted layer."""

    def __init__(self, config: LoRAConfig, shapes: Shapes) -> None:
        super().__init__(config, shapes)
        self.lora_a = nn.ParameterDict()
        self.lora_b = nn.ParameterDict()
        for path, (fan_in, fan_out) in sorted(shapes.items()):
            a = torch.empty(config.rank, fan_in)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            self.lora_a[key_of(path)] = nn.Parameter(a)
            self.lora_b[key_of(path)] = nn.Parameter(torch.zeros(fan_out, config.rank))

    def delta(self, path: str, x: torch.Tensor) -> torch.Tensor:
        """scale·B·A·x over the last dim (Linear) or the channel dim (1×1 conv, NCHW)."""
        key = key_of(path)
        a, b = self.lora_a[key], self.lora_b[key]
        if x.dim() == 4:  # NCHW: a linear map over channels
            return self.scale[key] * torch.einsum("nchw,rc,or->nohw", x, a, b)
        return self.scale[key] * (x @ a.T @ b.T)


METHODS["lora"] = Method(LoRAConfig, LoRAModule, _fits, LoRALinear, _shape)

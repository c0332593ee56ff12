"""LoRA (as in the LAE reference code): low-rank updates of chosen linear layers.

The update of a layer is `scale · B·A·x` with A ∈ R^{r×in} (Kaiming-uniform),
B ∈ R^{out×r} initialised to zero, so a new module leaves the backbone's function
unchanged; `scale` is learnable and starts at 1.0. Targets are `nn.Linear` layers
(BERT: "query", "key", "value", "dense"; LAE adapts K and V) or 1×1 convolutions
(EfficientNet: "_expand_conv", "_project_conv"), which are linear maps over channels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from perennial.pet.base import (
    METHODS,
    Method,
    PETConfig,
    PETModule,
    Shapes,
    Wrapper,
    active,
    key_of,
)


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


class RowwiseLoRA:
    """Stands in for the active LoRA module: row i of the batch gets `modules[i]`'s update.

    Distinct modules are stacked once per batch (ranks padded with zeros, the scale
    folded into B); each adapted layer then does two batched matmuls.
    """

    def __init__(self, modules: Sequence[torch.nn.Module]) -> None:
        position: dict[int, int] = {}
        unique: list = []
        for module in modules:
            if id(module) not in position:
                position[id(module)] = len(unique)
                unique.append(module)
        self.config = unique[0].config  # method "lora": the LoRA wrappers consult this module
        self.scale = {key: None for module in unique for key in module.lora_a}  # adapted layers
        self._index = torch.tensor([position[id(module)] for module in modules])
        self._unique = unique
        self._stacks: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def _stack(self, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        if key not in self._stacks:
            present = [m for m in self._unique if key in m.lora_a]
            rank = max(m.lora_a[key].shape[0] for m in present)
            fan_out, fan_in = present[0].lora_b[key].shape[0], present[0].lora_a[key].shape[1]
            a = torch.zeros(len(self._unique), rank, fan_in)
            b = torch.zeros(len(self._unique), fan_out, rank)
            for index, module in enumerate(self._unique):
                if key in module.lora_a:
                    r = module.lora_a[key].shape[0]
                    a[index, :r] = module.lora_a[key]
                    b[index, :, :r] = module.lora_b[key] * module.scale[key]
            if len(self._unique) == 1:  # one module: broadcast instead of gathering per row
                self._stacks[key] = (a[0].T, b[0].T)
            else:
                self._stacks[key] = (a[self._index].transpose(1, 2), b[self._index].transpose(1, 2))
        return self._stacks[key]

    def delta(self, path: str, x: torch.Tensor) -> torch.Tensor:
        a, b = self._stack(key_of(path))  # [N, in, r], [N, r, out] (or unbatched)
        if x.dim() == 4:  # NCHW (1×1 conv): the same map over channels, at every pixel
            n, _, h, w = x.shape
            pixels = x.permute(0, 2, 3, 1).reshape(n, h * w, -1)
            return self._apply(pixels, a, b).reshape(n, h, w, -1).permute(0, 3, 1, 2)
        return self._apply(x, a, b)

    @staticmethod
    def _apply(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.dim() == 2:
            return x @ a @ b
        return torch.bmm(torch.bmm(x, a), b)


METHODS["lora"] = Method(LoRAConfig, LoRAModule, _fits, LoRALinear, _shape)

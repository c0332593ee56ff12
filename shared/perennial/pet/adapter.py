"""Adapter (as in the LAE reference code): a bottleneck in parallel with the attention.

`out = block(x) + scale · up(relu(down(x)))`, where `block` is the wrapped
sub-block (BERT: each layer's `attention`, i.e. self-attention with its output
projection and LayerNorm; EfficientNet: a stride-1 MBConv block, target "block")
and `x` its input. `up` is initialised to zero, so a new module leaves the
backbone's function unchanged; `scale` is learnable and starts at 1.0. On NCHW
feature maps `down`/`up` act on channels (1×1 convolutions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
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
    unwrap,
)


@dataclass(frozen=True)
class AdapterConfig(PETConfig):
    """Adapter hyperparameters (plus `layers` and `init_scale` from PETConfig).

    bottleneck: hidden width of the adapter (LAE: 5 for ViT-B's 768).
    target_modules: attribute names of the sub-blocks to run in parallel with
        ("attention" in BERT); "block" means the block itself (EfficientNet).
    """

    method = "adapter"
    bottleneck: int = 16
    target_modules: tuple[str, ...] = ("attention",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.bottleneck < 1:
            raise ValueError(f"Adapter bottleneck must be >= 1, got {self.bottleneck}")
        if not self.target_modules:
            raise ValueError("Adapter target_modules is empty; name at least one sub-block")


def _dims(layer: nn.Module) -> tuple[int, int] | None:
    """(input width, output width) of a sub-block the adapter can run beside, else None."""
    if hasattr(layer, "self") and hasattr(layer, "output") and hasattr(layer.output, "dense"):
        return unwrap(
            layer.self
        ).query.in_features, layer.output.dense.out_features  # BERT attention
    args = getattr(layer, "_block_args", None)  # EfficientNet MBConv
    if args is not None and args.stride in (1, [1], (1, 1), [1, 1]):
        return args.input_filters, args.output_filters
    return None


def _fits(path: str, layer: nn.Module, config: AdapterConfig) -> bool:
    leaf = path.rsplit(".", 1)[-1]
    named = leaf in config.target_modules or ("block" in config.target_modules and leaf.isdigit())
    return named and _dims(layer) is not None


def _shape(layer: nn.Module) -> tuple[int, int]:
    dims = _dims(layer)
    assert dims is not None
    return dims


class ParallelAdapter(Wrapper):
    """A frozen sub-block plus the active Adapter module's bottleneck on its input."""

    def forward(self, x: torch.Tensor, *args, **kwargs):
        out = self.base(x, *args, **kwargs)
        module = active("adapter", self.path)
        if module is None:
            return out
        if isinstance(out, tuple):
            return (out[0] + module.delta(self.path, x), *out[1:])
        return out + module.delta(self.path, x)


class AdapterModule(PETModule):
    """One adapter's bottleneck weights (down, up) and scale per adapted sub-block."""

    def __init__(self, config: AdapterConfig, shapes: Shapes) -> None:
        super().__init__(config, shapes)
        self.down = nn.ParameterDict()
        self.down_bias = nn.ParameterDict()
        self.up = nn.ParameterDict()
        self.up_bias = nn.ParameterDict()
        for path, (width_in, width_out) in sorted(shapes.items()):
            down = torch.empty(config.bottleneck, width_in)
            nn.init.kaiming_uniform_(down, a=math.sqrt(5))
            key = key_of(path)
            self.down[key] = nn.Parameter(down)
            self.down_bias[key] = nn.Parameter(torch.zeros(config.bottleneck))
            self.up[key] = nn.Parameter(torch.zeros(width_out, config.bottleneck))
            self.up_bias[key] = nn.Parameter(torch.zeros(width_out))

    def delta(self, path: str, x: torch.Tensor) -> torch.Tensor:
        key = key_of(path)
        if x.dim() == 4:  # NCHW: channels
            h = F.relu(
                torch.einsum("nchw,bc->nbhw", x, self.down[key])
                + self.down_bias[key][:, None, None]
            )
            return self.scale[key] * (
                torch.einsum("nbhw,ob->nohw", h, self.up[key]) + self.up_bias[key][:, None, None]
            )
        h = F.relu(F.linear(x, self.down[key], self.down_bias[key]))
        return self.scale[key] * F.linear(h, self.up[key], self.up_bias[key])


METHODS["adapter"] = Method(AdapterConfig, AdapterModule, _fits, ParallelAdapter, _shape)

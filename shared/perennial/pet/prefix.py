"""Prefix (as in the LAE reference code): learned key/value tokens in self-attention,
with LAE's *attention compensation*.

Prepending P key/value tokens to an attention with a joint softmax gives
`(1 − λ)·Attn(q, K, V) + λ·Attn(q, P_k, P_v)`, where λ(q) is the prefix's total
attention mass. LAE compensates by dividing the original tokens' weights by their
mass (1 − λ), which makes the prefix's contribution purely additive, like LoRA's
and the Adapter's: `Attn(q, K, V) + scale · Σ_j softmax_joint(q)_j · P_v[j]`.
The wrapped layer therefore computes the frozen attention unchanged and adds the
prefix term; with P_v initialised to zero a new module changes nothing.

Applies to BERT-style self-attention (a module with `query`, `key`, `value`,
`num_attention_heads`, `attention_head_size`; target "self"). CNNs have no
attention: injecting Prefix into one raises ValueError.
"""

from __future__ import annotations

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
    unwrap,
)


@dataclass(frozen=True)
class PrefixConfig(PETConfig):
    """Prefix hyperparameters (plus `layers` and `init_scale` from PETConfig).

    length: number of learned key/value tokens per adapted block (LAE: 10).
    target_modules: attribute names of the self-attention modules ("self" in BERT).
    """

    method = "prefix"
    length: int = 10
    target_modules: tuple[str, ...] = ("self",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.length < 1:
            raise ValueError(f"Prefix length must be >= 1, got {self.length}")
        if not self.target_modules:
            raise ValueError("Prefix target_modules is empty; name the self-attention modules")


def _is_attention(layer: nn.Module) -> bool:
    return all(
        hasattr(layer, name)
        for name in ("query", "key", "value", "num_attention_heads", "attention_head_size")
    )


def _fits(path: str, layer: nn.Module, config: PrefixConfig) -> bool:
    return path.rsplit(".", 1)[-1] in config.target_modules and _is_attention(layer)


def _shape(layer: nn.Module) -> tuple[int, int]:
    return int(layer.num_attention_heads), int(layer.attention_head_size)


def _additive_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | float:
    """The attention mask as an additive float (0 = attend), whatever form it came in."""
    if mask is None:
        return 0.0
    if mask.dtype == torch.bool:  # True = attend (SDPA form)
        return torch.zeros(mask.shape, dtype=dtype).masked_fill(~mask, float("-inf"))
    return mask.to(dtype)


class PrefixAttention(Wrapper):
    """A frozen self-attention plus the active Prefix module's compensated prefix term."""

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *args,
        **kwargs,
    ):
        out = self.base(hidden_states, attention_mask, *args, **kwargs)
        module = active("prefix", self.path)
        if module is None:
            return out
        attention = unwrap(self.base)
        batch, length, _ = hidden_states.shape
        heads, size = attention.num_attention_heads, attention.attention_head_size
        scaling = size**-0.5
        # The wrapped query/key layers may carry other wrappers: call them, not the bare linears.
        query = self.base.query if hasattr(self.base, "query") else attention.query
        key = self.base.key if hasattr(self.base, "key") else attention.key
        q = query(hidden_states).view(batch, length, heads, size).transpose(1, 2)  # [B,H,L,d]
        k = key(hidden_states).view(batch, length, heads, size).transpose(1, 2)
        own = q @ k.transpose(-1, -2) * scaling + _additive_mask(
            attention_mask, q.dtype
        )  # [B,H,L,L]
        prefix_keys, prefix_values = module.tokens(self.path)  # [H,P,d] each
        prefix = torch.einsum("bhld,hpd->bhlp", q, prefix_keys) * scaling
        total = torch.logsumexp(torch.cat([own, prefix], dim=-1), dim=-1, keepdim=True)
        weights = torch.exp(prefix - total)  # the prefix's share of the joint softmax
        term = (
            torch.einsum("bhlp,hpd->bhld", weights, prefix_values)
            .transpose(1, 2)
            .reshape(batch, length, -1)
        )
        term = module.scale[key_of(self.path)] * term
        if isinstance(out, tuple):
            return (out[0] + term, *out[1:])
        return out + term


class PrefixModule(PETModule):
    """One adapter's prefix keys/values ([heads, length, head size]) and scale per block."""

    def __init__(self, config: PrefixConfig, shapes: Shapes) -> None:
        super().__init__(config, shapes)
        self.keys = nn.ParameterDict()
        self.values = nn.ParameterDict()
        for path, (heads, size) in sorted(shapes.items()):
            self.keys[key_of(path)] = nn.Parameter(torch.randn(heads, config.length, size) * 0.02)
            self.values[key_of(path)] = nn.Parameter(torch.zeros(heads, config.length, size))

    def tokens(self, path: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.keys[key_of(path)], self.values[key_of(path)]


METHODS["prefix"] = Method(PrefixConfig, PrefixModule, _fits, PrefixAttention, _shape)

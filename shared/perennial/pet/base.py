"""What every PET method shares: the active-module context, the config base, the injector.

Design: `inject` wraps a backbone's target layers once. A wrapped layer holds no
adapter weights of its own; it asks the *active* PET module (a context
variable, set with `activate`) for its contribution. So one frozen backbone
serves any number of adapters and versions, concurrently from many threads,
and a PET module is a plain `nn.Module` whose `state_dict` is the whole adapter
(saved as safetensors, never pickled). Wrappers of different methods can sit in
one backbone side by side; each contributes only when the active module is of
its method and has weights for its layer.

A method registers itself in `METHODS` (config class, module class, the
function that finds its targets and the wrapper class): no if/else chains.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
from torch import nn

_ACTIVE: ContextVar[PETModule | None] = ContextVar("perennial_active_pet", default=None)

Shapes = dict[str, tuple[int, int]]
"""Per wrapped layer path, the two sizes a method needs (e.g. LoRA: fan-in, fan-out)."""


@contextlib.contextmanager
def activate(module: PETModule | None) -> Iterator[None]:
    """Run the backbone with `module`'s adapters (None = the bare backbone)."""
    token = _ACTIVE.set(module)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def current() -> PETModule | None:
    """The module `activate` set for this thread or task (None: the bare backbone)."""
    return _ACTIVE.get()


def active(method: str, path: str) -> PETModule | None:
    """The active module if it is of `method` and has weights for the layer at `path`."""
    module = _ACTIVE.get()
    if module is None or module.config.method != method or key_of(path) not in module.scale:
        return None
    return module


@dataclass(frozen=True)
class PETConfig:
    """Fields every method has.

    layers: indices of the backbone blocks to adapt (LAE adapts the first blocks).
    init_scale: initial value of each adapted layer's learnable output scale (LAE: 1.0).
    """

    method: ClassVar[str] = ""
    layers: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
    init_scale: float = 1.0

    def __post_init__(self) -> None:
        if not self.layers or min(self.layers) < 0:
            raise ValueError(
                f"{self.method} layers must be non-negative block indices, got {self.layers}"
            )

    def to_dict(self) -> dict:
        """JSON-ready fields plus the method name (sorted keys are the caller's job)."""
        return {"method": self.method, **asdict(self)}


def config_from_dict(fields: dict) -> PETConfig:
    """Rebuild any method's config from `to_dict` output (lists become tuples)."""
    fields = dict(fields)
    method = fields.pop("method", "lora")
    if method not in METHODS:
        raise ValueError(f"unknown PET method {method!r}; known: {sorted(METHODS)}")
    return METHODS[method].config(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    )


class PETModule(nn.Module):
    """One adapter's weights for every adapted layer of one method, keyed by layer path.

    Subclasses add their parameter dicts; every subclass has `scale` (one learnable
    output scale per layer, initialised to `config.init_scale`).
    """

    def __init__(self, config: PETConfig, shapes: Shapes) -> None:
        super().__init__()
        self.config = config
        self.shapes = dict(shapes)
        self.scale = nn.ParameterDict(
            {
                key_of(path): nn.Parameter(torch.tensor(float(config.init_scale)))
                for path in sorted(shapes)
            }
        )


def create_module(config: PETConfig, shapes: Shapes) -> PETModule:
    """A new module of `config`'s method for the layers `inject` returned."""
    return METHODS[config.method].module(config, shapes)


@dataclass(frozen=True)
class Method:
    """A PET method's registration."""

    config: type[PETConfig]
    module: type[PETModule]
    fits: Callable[[str, nn.Module, PETConfig], bool]  # (path, frozen layer, config) -> wrap it?
    wrapper: type[Wrapper]
    shape: Callable[[nn.Module], tuple[int, int]]  # frozen layer -> its two sizes


METHODS: dict[str, Method] = {}

_BLOCK = re.compile(r"(?:^|\.)(?:layer|_blocks|blocks)\.(\d+)(?:\.|$)")


def block_index(path: str) -> int | None:
    """The block index in a module path (BERT `layer.N`, EfficientNet `_blocks.N`)."""
    match = _BLOCK.search(path)
    return int(match.group(1)) if match else None


def _walk(
    module: nn.Module, path: str = "", actual: str = ""
) -> Iterator[tuple[str, str, nn.Module]]:
    """(canonical path, attribute path, module) for every module; a wrapper stands for its
    layer at the layer's own path, so paths (and saved keys) do not depend on which
    methods were injected first."""
    yield path, actual, module
    inner = module
    while isinstance(inner, Wrapper):
        inner, actual = inner.base, f"{actual}.base" if actual else "base"
    for name, child in inner.named_children():
        yield from _walk(
            child, f"{path}.{name}" if path else name, f"{actual}.{name}" if actual else name
        )


def inject(backbone: nn.Module, config: PETConfig) -> Shapes:
    """Wrap `config`'s target layers inside the configured blocks of `backbone`
    (idempotent); return {layer path: the method's two sizes}.

    Raises ValueError naming the method and the backbone when nothing fits.
    """
    method = METHODS[config.method]
    shapes = {}
    for path, actual, layer in list(_walk(backbone)):
        index = block_index(path)
        if (
            index is None
            or index not in config.layers
            or not method.fits(path, unwrap(layer), config)
        ):
            continue
        if not _has_wrapper(layer, method.wrapper):
            parent_path, _, child = actual.rpartition(".")
            parent = backbone.get_submodule(parent_path) if parent_path else backbone
            setattr(parent, child, method.wrapper(layer, path))
        shapes[path] = method.shape(unwrap(layer))
    if not shapes:
        raise ValueError(
            f"{config.method} does not apply to {type(backbone).__name__}: no layer fits {config} "
            f"(blocks present: {sorted({block_index(p) for p, _, _ in _walk(backbone)} - {None})})"
        )
    return shapes


def _has_wrapper(layer: nn.Module, kind: type[Wrapper]) -> bool:
    while isinstance(layer, Wrapper):
        if isinstance(layer, kind):
            return True
        layer = layer.base
    return False


class Wrapper(nn.Module):
    """A frozen layer plus the active module's contribution; subclasses define `forward`."""

    def __init__(self, base: nn.Module, path: str) -> None:
        super().__init__()
        self.base = base
        self.path = path


def key_of(path: str) -> str:
    """A layer path as a parameter-dict key (dots are not allowed there)."""
    return path.replace(".", "__")


def unwrap(module: nn.Module) -> nn.Module:
    """The frozen layer under any stack of wrappers."""
    while isinstance(module, Wrapper):
        module = module.base
    return module

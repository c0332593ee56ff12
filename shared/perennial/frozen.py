"""The frozen part of a backbone on a chosen runtime: torch, ONNX Runtime fp32 or ONNX Runtime int8.

A backbone's frozen forward (no PET active) returns its hidden states — text: the embeddings
and every encoder layer's output; images: the stem and every MBConv block's output, then the
head convolution. On ONNX Runtime that forward is a graph exported once per backbone with
torch's exporter and cached on disk under the SHA-256 of everything that defines it (weights,
config, exporter settings), so a changed backbone never runs a stale graph and nothing is
downloaded. `onnx-int8` is the same graph with dynamic int8 quantisation (per channel) of its matrix
multiplications (onnxruntime.quantization). Rows that run with a PET module active always run
in torch (the PET wrappers live in torch modules): a backbone's `tail` continues from a frozen
hidden state through the last blocks with the active PET (see `perennial.backbone`).

Why ONNX Runtime for the frozen part: on this project's CPUs it runs MiniLM ~2x faster than
torch fp32 at batch 1, and ~4x with int8 (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
from torch import nn

from perennial.pet import activate

log = logging.getLogger(__name__)

Runtime = Literal["torch", "onnx", "onnx-int8"]
RUNTIMES: tuple[Runtime, ...] = ("torch", "onnx", "onnx-int8")
OPSET = 17
EXPORT_VERSION = 1  # bump when the exported graph's definition changes


class Exportable(Protocol):
    """What a backbone gives the runtime: its frozen forward as a module, and example inputs."""

    def frozen_module(self) -> nn.Module: ...

    def example_inputs(self) -> dict[str, torch.Tensor]: ...

    def hidden_names(self) -> list[str]: ...


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/perennial/onnx` (`~/.cache/perennial/onnx`)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "perennial" / "onnx"


def fingerprint(module: nn.Module, extra: dict) -> str:
    """SHA-256 over a module's tensors (names, shapes, bytes) and `extra` (config, settings)."""
    digest = hashlib.sha256()
    digest.update(
        json.dumps({**extra, "export": EXPORT_VERSION, "opset": OPSET}, sort_keys=True).encode()
    )
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


class TorchFrozen:
    """The frozen forward in torch (the reference the ONNX graphs are checked against)."""

    runtime: Runtime = "torch"

    def __init__(self, backbone: Exportable) -> None:
        self._module = backbone.frozen_module()

    def __call__(
        self, inputs: dict[str, torch.Tensor], states: list[int] | None = None
    ) -> list[torch.Tensor]:
        # no_grad, not inference_mode: a PET trained on these states needs autograd
        with torch.no_grad(), activate(None):
            hidden = list(self._module(**inputs))
        return hidden if states is None else [hidden[i] for i in states]


class OnnxFrozen:
    """The frozen forward as an ONNX graph on ONNX Runtime (CPU), fp32 or int8."""

    def __init__(
        self, path: Path, runtime: Runtime, names: Sequence[str], threads: int = 0
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3  # warnings about unused initialisers are not ours to fix
        self.runtime = runtime
        self.path = path
        self._names = list(names)
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self._session.get_inputs()}

    def __call__(
        self, inputs: dict[str, torch.Tensor], states: list[int] | None = None
    ) -> list[torch.Tensor]:
        names = self._names if states is None else [self._names[i] for i in states]
        feed = {name: tensor.numpy() for name, tensor in inputs.items() if name in self._inputs}
        return [torch.from_numpy(np.asarray(out)) for out in self._session.run(names, feed)]


_export_lock = threading.Lock()


def export(backbone: Exportable, path: Path) -> None:
    """Write the backbone's frozen forward as an ONNX graph (dynamic batch and length axes)."""
    import warnings

    inputs = backbone.example_inputs()
    outputs = backbone.hidden_names()
    dynamic = {
        name: {0: "batch", **({1: "length"} if t.dim() == 2 else {})} for name, t in inputs.items()
    }
    dynamic.update({name: {0: "batch"} for name in outputs})
    if all(t.dim() == 2 for t in inputs.values()):  # text: hidden states are [batch, length, dim]
        dynamic.update({name: {0: "batch", 1: "length"} for name in outputs})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(
            backbone.frozen_module(),
            (),
            str(path),
            kwargs=inputs,
            input_names=list(inputs),
            output_names=outputs,
            dynamic_axes=dynamic,
            opset_version=OPSET,
            dynamo=False,
        )


def load(backbone: Exportable, runtime: Runtime, cache_dir: Path | None = None, threads: int = 0):
    """The frozen forward of `backbone` on `runtime`, exporting (and quantising) into the cache
    on first use; later calls and other processes reuse the cached graph."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if runtime == "torch":
        return TorchFrozen(backbone)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    # the graph's fixed input sizes too (images: the resize), not only the weights
    fixed = getattr(backbone, "export_settings", {})
    key = fingerprint(backbone.frozen_module(), {"outputs": backbone.hidden_names(), **fixed})
    fp32 = cache / f"{key}.onnx"
    path = fp32 if runtime == "onnx" else cache / f"{key}.int8.onnx"
    with _export_lock:
        if not path.exists():
            cache.mkdir(parents=True, exist_ok=True)
            if not fp32.exists():
                log.info("exporting the backbone to ONNX", extra={"fields": {"path": str(fp32)}})
                _atomic(fp32, lambda tmp: export(backbone, tmp))
            if runtime == "onnx-int8":
                from onnxruntime.quantization import QuantType, quantize_dynamic

                # per-channel weights of the matrix multiplications only: measured on MiniLM, the
                # pooled features keep cosine >= 0.98 to fp32 (per-tensor and every op: 0.92)
                _atomic(
                    path,
                    lambda tmp: quantize_dynamic(
                        fp32,
                        tmp,
                        weight_type=QuantType.QInt8,
                        per_channel=True,
                        op_types_to_quantize=["MatMul"],
                    ),
                )
    return OnnxFrozen(path, runtime, backbone.hidden_names(), threads)


def _atomic(path: Path, write) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a graph."""
    handle, name = tempfile.mkstemp(dir=path.parent, suffix=".onnx.part")
    os.close(handle)
    try:
        write(Path(name))
        os.replace(name, path)
    finally:
        if os.path.exists(name):
            os.unlink(name)

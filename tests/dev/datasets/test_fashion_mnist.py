"""Fashion-MNIST from the Debian package: reading, the class-incremental split, the image backbone."""

import pytest
import torch

from perennial.backbone import ImageBackbone
from perennial_dev.datasets.fashion_mnist import (
    CLASSES,
    class_incremental_images,
    read_fashion_mnist,
)


def test_reads_the_official_test_split():
    images, labels = read_fashion_mnist("test")
    assert images.shape == (10_000, 28, 28) and images.dtype == torch.float32
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    assert sorted(set(labels)) == sorted(CLASSES) and labels.count("Bag") == 1000


def test_split_is_seeded_staged_and_disjoint_by_source():
    a = class_incremental_images(classes_per_stage=2, train_per_class=5, test_per_class=3, seed=4)
    b = class_incremental_images(classes_per_stage=2, train_per_class=5, test_per_class=3, seed=4)
    assert a.classes == b.classes and len(a.stages) == 5 and all(len(s) == 2 for s in a.stages)
    assert [y for _, y in a.train] == [y for _, y in b.train]
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a.train, b.train, strict=False))
    stage_of = {c: i for i, s in enumerate(a.stages) for c in s}
    assert [stage_of[y] for _, y in a.train] == sorted(
        stage_of[y] for _, y in a.train
    )  # stage by stage
    assert {c: len(v) for c, v in a.test.items()} == {c: 3 for c in CLASSES}
    assert (
        class_incremental_images(train_per_class=5, test_per_class=3, seed=5).classes != a.classes
    )


def test_bad_arguments_are_rejected_with_the_value():
    with pytest.raises(ValueError, match="train_per_class must be a positive integer, got 0"):
        class_incremental_images(train_per_class=0)
    with pytest.raises(ValueError, match="split must be 'train' or 'test', got 'dev'"):
        read_fashion_mnist("dev")


def test_image_backbone_embeds_grayscale_images():
    backbone = ImageBackbone.load(image_size=32)
    images, _ = read_fashion_mnist("test")
    with torch.no_grad():
        features = backbone(backbone.prepare(list(images[:3])))
    assert features.shape == (3, backbone.dim) == (3, 1280)
    assert not torch.allclose(features[0], features[1])
    with pytest.raises(ValueError, match="image_size must be >= 32, got 8"):
        ImageBackbone(backbone.encoder, image_size=8)


def test_validation_images_are_carved_from_the_training_set() -> None:
    split = class_incremental_images(
        train_per_class=6, test_per_class=2, validation_per_class=3, seed=0, sample_seed=5
    )
    other = class_incremental_images(
        train_per_class=6, test_per_class=2, validation_per_class=3, seed=1, sample_seed=5
    )
    for label in split.classes:
        streamed = [image for image, name in split.train if name == label]
        assert len(streamed) == 6 and len(split.validation[label]) == 3
        assert not any(torch.equal(a, b) for a in streamed for b in split.validation[label])
        assert all(
            torch.equal(a, b)
            for a, b in zip(split.validation[label], other.validation[label], strict=True)
        )

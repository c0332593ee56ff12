"""The frozen forward on ONNX Runtime: parity with torch, the content-hash cache, the tail.

Tolerances, not bit-equality: ONNX Runtime and torch run different kernels (fused ops, other
summation orders), so their floats agree to ~1e-5 on fp32, and int8 is a different function.
"""

from __future__ import annotations

import pytest
import torch

from perennial import frozen
from perennial.backbone import ImageBackbone
from perennial.pet import LoRAConfig, activate, create_module, inject

TEXTS = ["a small dog that barks", "a tall tree", "an old stone house by the sea", "rain"]


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


@pytest.mark.parametrize("runtime", ["onnx", "onnx-int8"])
def test_onnx_hidden_states_match_torch(minilm, tmp_path, runtime) -> None:
    batch = minilm.prepare(TEXTS)
    reference = frozen.TorchFrozen(minilm)(minilm._runtime_inputs(batch))
    onnx = frozen.load(minilm, runtime, tmp_path, threads=1)(minilm._runtime_inputs(batch))
    assert len(onnx) == len(reference) == minilm.layers + 1
    pooled_ref, pooled = minilm.pool(reference[-1], batch), minilm.pool(onnx[-1], batch)
    if runtime == "onnx":
        for ours, theirs in zip(onnx, reference, strict=True):
            torch.testing.assert_close(ours, theirs, atol=2e-4, rtol=1e-4)
    # int8 is a different function: measured cosine 0.93–0.95 on these short texts, 0.99 mean on glosses
    assert _cos(pooled, pooled_ref).min() >= (0.9999 if runtime == "onnx" else 0.9)


def test_the_graph_is_cached_by_content(tiny_backbone, tmp_path) -> None:
    first = frozen.load(tiny_backbone, "onnx", tmp_path)
    stamp = first.path.stat().st_mtime_ns
    assert (
        frozen.load(tiny_backbone, "onnx", tmp_path).path == first.path
    )  # reused, not re-exported
    assert first.path.stat().st_mtime_ns == stamp
    with torch.no_grad():
        tiny_backbone.encoder.embeddings.word_embeddings.weight[0, 0] += 1.0  # other weights
    assert frozen.load(tiny_backbone, "onnx", tmp_path).path != first.path
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".onnx", ".onnx"]  # no partial files


def test_forward_uses_the_runtime_and_torch_when_a_pet_is_active(tiny_backbone, tmp_path) -> None:
    batch = tiny_backbone.prepare(TEXTS)
    torch_pooled = tiny_backbone(batch)
    tiny_backbone.use_runtime("onnx", tmp_path)
    assert tiny_backbone.runtime == "onnx" and not tiny_backbone.encoder.training  # still eval
    torch.testing.assert_close(tiny_backbone(batch), torch_pooled, atol=1e-5, rtol=1e-5)
    config = LoRAConfig(rank=2, layers=(1,))
    module = create_module(config, inject(tiny_backbone.encoder, config))
    with torch.no_grad():
        for b in module.lora_b.values():
            b.normal_()
    with activate(module):
        adapted = tiny_backbone(batch)
        # the PET in the last block, continued from the frozen runtime's state before it
        hidden = tiny_backbone.hidden(batch, [1])[0]
        tail = tiny_backbone.pool(tiny_backbone.tail(hidden, batch, 1), batch)
    assert not torch.allclose(adapted, torch_pooled, atol=1e-3)
    torch.testing.assert_close(tail, adapted, atol=1e-4, rtol=1e-4)


def test_image_backbone_on_onnx(tmp_path) -> None:
    backbone = ImageBackbone.load(image_size=32)
    batch = backbone.prepare(torch.rand(3, 28, 28, generator=torch.Generator().manual_seed(0)))
    reference = backbone(batch)
    backbone.use_runtime("onnx", tmp_path)
    torch.testing.assert_close(backbone(batch), reference, atol=1e-4, rtol=1e-4)
    states = backbone.hidden(batch)
    assert len(states) == backbone.layers + 2
    tail = backbone.pool(backbone.tail(states[12], batch, 12))
    torch.testing.assert_close(tail, reference, atol=1e-4, rtol=1e-4)


def test_unknown_runtime_is_refused(tiny_backbone) -> None:
    with pytest.raises(ValueError, match="runtime must be one of"):
        frozen.load(tiny_backbone, "tensorrt", None)


def test_image_graphs_of_other_sizes_do_not_share_a_cache_entry(tmp_path) -> None:
    """The exported graph fixes its pixel size: a backbone resizing to 32 px must not reuse the
    graph of one resizing to 64 px from the same cache (same weights)."""
    small, large = ImageBackbone.load(image_size=32), ImageBackbone.load(image_size=64)
    small.use_runtime("onnx", tmp_path)
    large.use_runtime("onnx", tmp_path)
    assert len(list(tmp_path.glob("*.onnx"))) == 2
    images = torch.rand(2, 28, 28, generator=torch.Generator().manual_seed(0))
    assert small(small.prepare(images)).shape == large(large.prepare(images)).shape == (2, 1280)


def test_text_chunks_group_similar_lengths_and_drop_the_padding(tiny_backbone) -> None:
    texts = ["a", "a much longer text with many more words in it", "two words", "a fox",
             "yet another fairly long sentence here", "b", "c d"]  # fmt: skip
    batch = tiny_backbone.prepare(texts)
    lengths = batch["attention_mask"].sum(1)
    chunks = tiny_backbone.chunks(batch, 3)
    assert sorted(row for rows, _ in chunks for row in rows) == list(range(len(texts)))
    hidden = tiny_backbone.hidden(batch, [tiny_backbone.layers])[0]
    full = tiny_backbone.pool(hidden, batch)
    previous = 0
    for rows, chunk in chunks:
        assert len(rows) <= 3 and int(lengths[rows].min()) >= previous  # shortest first
        previous = int(lengths[rows].max())
        assert chunk["input_ids"].shape[1] == previous  # padded to its own longest only
        own = tiny_backbone.pool(tiny_backbone.hidden(chunk, [tiny_backbone.layers])[0], chunk)
        torch.testing.assert_close(own, full[rows], atol=1e-5, rtol=1e-4)  # padding changes bits

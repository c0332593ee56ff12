"""PET methods (LoRA, Adapter, Prefix): injection, activation, identity at init, a trained
module changes the function, save → load under another name reproduces it, clear errors."""

import json
import threading

import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from perennial.backbone import ImageBackbone
from perennial.pet import (
    AdapterConfig,
    LoRAConfig,
    PrefixConfig,
    activate,
    config_from_dict,
    create_module,
    inject,
)
from perennial.pet.prefix import PrefixAttention

TEXT_CONFIGS = [
    LoRAConfig(rank=2, layers=(0, 1)),
    AdapterConfig(bottleneck=4, layers=(0, 1)),
    PrefixConfig(length=3, layers=(0, 1)),
]
IMAGE_CONFIGS = [
    LoRAConfig(rank=2, target_modules=("_project_conv",), layers=(1, 2)),
    AdapterConfig(bottleneck=4, target_modules=("block",), layers=(2, 3)),
]
TEXTS = ("a small dog", "an old house with a red door and a garden")


def _embed(backbone, texts=TEXTS):
    with torch.no_grad():
        return backbone(backbone.prepare(list(texts)))


@pytest.fixture(scope="module")
def image_backbone():
    return ImageBackbone.load(image_size=32)


def _perturb(module, seed=1):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.5)


@pytest.mark.parametrize(
    "config", TEXT_CONFIGS + IMAGE_CONFIGS, ids=lambda c: f"{c.method}-{c.target_modules[0]}"
)
def test_new_module_is_identity_trained_changes_output_and_round_trips(
    config, tiny_backbone, image_backbone
):
    backbone = tiny_backbone if config in TEXT_CONFIGS else image_backbone
    inputs = (
        list(TEXTS)
        if config in TEXT_CONFIGS
        else [torch.rand(28, 28, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    )
    bare = _embed(backbone, inputs)
    shapes = inject(backbone.encoder, config)
    module = create_module(config, shapes)
    with activate(module):
        torch.testing.assert_close(
            _embed(backbone, inputs), bare, rtol=0, atol=1e-6
        )  # zero-initialised
    _perturb(module)
    with activate(module):
        changed = _embed(backbone, inputs)
    assert not torch.allclose(changed, bare, atol=1e-3)
    torch.testing.assert_close(
        _embed(backbone, inputs), bare, rtol=0, atol=0
    )  # outside activate: bare

    # adapter-only persistence: safetensors + JSON config, loaded as a differently named module
    blob = save_safetensors({k: v.contiguous() for k, v in module.state_dict().items()})
    saved_config = json.dumps(config.to_dict(), sort_keys=True)
    restored_config = config_from_dict(json.loads(saved_config))
    assert restored_config == config
    other_name = create_module(restored_config, inject(backbone.encoder, restored_config))
    other_name.load_state_dict(load_safetensors(blob))
    with activate(other_name):
        torch.testing.assert_close(_embed(backbone, inputs), changed, rtol=0, atol=0)


@pytest.mark.parametrize("config", TEXT_CONFIGS + IMAGE_CONFIGS, ids=lambda c: c.method)
def test_every_adapted_layer_has_a_learnable_scale_starting_at_one(
    config, tiny_backbone, image_backbone
):
    backbone = tiny_backbone if config in TEXT_CONFIGS else image_backbone
    module = create_module(config, inject(backbone.encoder, config))
    assert len(module.scale) == len(module.shapes) > 0
    assert all(s.item() == 1.0 and s.requires_grad for s in module.scale.values())


def test_inject_targets_are_the_configured_layers_and_idempotent(tiny_backbone):
    config = LoRAConfig(target_modules=("key", "value"), layers=(0,))
    shapes = inject(tiny_backbone.encoder, config)
    assert sorted(shapes) == [
        "encoder.layer.0.attention.self.key",
        "encoder.layer.0.attention.self.value",
    ]
    assert inject(tiny_backbone.encoder, config) == shapes
    assert sorted(inject(tiny_backbone.encoder, AdapterConfig(layers=(1,)))) == [
        "encoder.layer.1.attention"
    ]
    assert sorted(inject(tiny_backbone.encoder, PrefixConfig(layers=(0,)))) == [
        "encoder.layer.0.attention.self"
    ]
    # paths do not depend on what was injected first (Prefix now wraps the LoRA-wrapped layers)
    assert inject(tiny_backbone.encoder, config) == shapes


def test_prefix_is_lae_compensated_attention(tiny_backbone):
    """The wrapper's output equals the reference formula computed by hand for one layer:
    Attn(q,K,V) + scale·Σ_j softmax([qKᵀ, qP_kᵀ]/√d)_j·P_v[j]."""
    config = PrefixConfig(length=2, layers=(0,))
    module = create_module(config, inject(tiny_backbone.encoder, config))
    _perturb(module)
    layer = tiny_backbone.encoder.encoder.layer[0].attention.self
    assert isinstance(layer, PrefixAttention)
    hidden = torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        bare = layer(hidden)[0]
        with activate(module):
            adapted = layer(hidden)[0]
        attention = layer.base
        q = attention.query(hidden).view(1, 5, 2, 16).transpose(1, 2)
        k = attention.key(hidden).view(1, 5, 2, 16).transpose(1, 2)
        keys, values = module.tokens("encoder.layer.0.attention.self")
        logits = (
            torch.cat([q @ k.transpose(-1, -2), torch.einsum("bhld,hpd->bhlp", q, keys)], -1) / 4.0
        )
        weights = logits.softmax(-1)[..., 5:]
        expected = bare + module.scale["encoder__layer__0__attention__self"] * torch.einsum(
            "bhlp,hpd->bhld", weights, values
        ).transpose(1, 2).reshape(1, 5, 32)
    torch.testing.assert_close(adapted, expected)


def test_prefix_respects_padding(tiny_backbone):
    config = PrefixConfig(length=3, layers=(0, 1))
    module = create_module(config, inject(tiny_backbone.encoder, config))
    _perturb(module)
    with activate(module):
        padded = _embed(tiny_backbone, ["a dog", "an old house with a very long description"])[0]
        alone = _embed(tiny_backbone, ["a dog"])[0]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=0)


def test_activation_is_per_thread(tiny_backbone):
    config = LoRAConfig(layers=(0, 1))
    module = create_module(config, inject(tiny_backbone.encoder, config))
    _perturb(module)
    bare, results = _embed(tiny_backbone), {}
    entered, release = threading.Event(), threading.Event()

    def adapted():
        with activate(module):
            entered.set()
            release.wait()
            results["adapted"] = _embed(tiny_backbone)

    thread = threading.Thread(target=adapted)
    thread.start()
    entered.wait()
    results["bare"] = _embed(tiny_backbone)  # while the other thread has its module active
    release.set()
    thread.join()
    assert torch.equal(results["bare"], bare)
    assert not torch.allclose(results["adapted"], bare)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: LoRAConfig(rank=0), "rank must be >= 1, got 0"),
        (lambda: LoRAConfig(target_modules=()), "target_modules is empty"),
        (lambda: LoRAConfig(layers=(-1,)), "got \\(-1,\\)"),
        (lambda: AdapterConfig(bottleneck=0), "bottleneck must be >= 1, got 0"),
        (lambda: PrefixConfig(length=0), "length must be >= 1, got 0"),
        (lambda: config_from_dict({"method": "bitfit"}), "unknown PET method 'bitfit'"),
    ],
)
def test_configs_reject_bad_values(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_a_method_that_does_not_apply_is_a_clear_error(tiny_backbone, image_backbone):
    with pytest.raises(ValueError, match="lora does not apply to BertModel"):
        inject(tiny_backbone.encoder, LoRAConfig(target_modules=("nonexistent",)))
    with pytest.raises(ValueError, match="prefix does not apply to EfficientNet"):
        inject(image_backbone.encoder, PrefixConfig())


def test_rowwise_lora_gives_each_row_its_modules_update_on_convolutions(image_backbone):
    """Serving many image adapters in one forward: row i of a batch through RowwiseLoRA equals
    row i through its own module (1×1 convolutions, NCHW), for one module and for several."""
    from perennial.pet.lora import RowwiseLoRA

    config = LoRAConfig(rank=2, target_modules=("_project_conv",), layers=(14, 15))
    shapes = inject(image_backbone.encoder, config)
    modules = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        module = create_module(config, shapes)
        for b in module.lora_b.values():
            torch.nn.init.normal_(b)
        modules.append(module)
    batch = image_backbone.prepare(
        torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    )
    with torch.no_grad():
        alone = []
        for module in modules:
            with activate(module):
                alone.append(image_backbone(batch))
        for rows in ([0, 0, 0], [0, 1, 0]):
            with activate(RowwiseLoRA([modules[r] for r in rows])):
                mixed = image_backbone(batch)
            expected = torch.stack([alone[r][i] for i, r in enumerate(rows)])
            torch.testing.assert_close(mixed, expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(alone[0], alone[1])

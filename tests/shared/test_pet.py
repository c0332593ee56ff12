"""LoRA PET modules: injection, activation, and that an adapter really changes the function."""

import threading

import pytest
import torch

from perennial.pet import LoRAConfig, PETModule, activate, inject


def _embed(backbone, texts=("a small dog", "an old house")):
    with torch.no_grad():
        return backbone(backbone.tokenize(list(texts)))


def test_new_module_is_identity_and_trained_module_is_not(tiny_backbone):
    bare = _embed(tiny_backbone)
    module = PETModule(LoRAConfig(rank=2, layers=(0, 1)), inject(tiny_backbone.encoder, LoRAConfig(layers=(0, 1))))
    with activate(module):
        assert torch.equal(_embed(tiny_backbone), bare)  # B starts at zero
        for b in module.lora_b.values():
            torch.nn.init.normal_(b)
        changed = _embed(tiny_backbone)
    assert not torch.allclose(changed, bare)
    assert torch.equal(_embed(tiny_backbone), bare)  # outside activate: the bare backbone


def test_inject_targets_and_is_idempotent(tiny_backbone):
    config = LoRAConfig(target_modules=("key", "value"), layers=(0,))
    shapes = inject(tiny_backbone.encoder, config)
    assert sorted(shapes) == ["encoder.layer.0.attention.self.key", "encoder.layer.0.attention.self.value"]
    assert inject(tiny_backbone.encoder, config) == shapes


def test_scale_starts_at_one_and_state_dict_is_the_whole_adapter(tiny_backbone):
    config = LoRAConfig(rank=3, layers=(0,))
    module = PETModule(config, inject(tiny_backbone.encoder, config))
    assert all(s.item() == 1.0 for s in module.scale.values())
    assert len(module.state_dict()) == 3 * 2  # A, B, scale for key and value


def test_activation_is_per_thread(tiny_backbone):
    config = LoRAConfig(layers=(0, 1))
    module = PETModule(config, inject(tiny_backbone.encoder, config))
    for b in module.lora_b.values():
        torch.nn.init.normal_(b)
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
    ("fields", "message"),
    [({"rank": 0}, "rank must be >= 1, got 0"), ({"target_modules": ()}, "target_modules is empty"),
     ({"layers": (-1,)}, "got \\(-1,\\)")],
)
def test_config_rejects_bad_values(fields, message):
    with pytest.raises(ValueError, match=message):
        LoRAConfig(**fields)


def test_unknown_target_is_a_clear_error(tiny_backbone):
    with pytest.raises(ValueError, match="no layer of the backbone matches"):
        inject(tiny_backbone.encoder, LoRAConfig(target_modules=("nonexistent",)))

"""The LAE learner (and naive fine-tuning): growing head, EMA, ensemble rule, masking,
PET freezing, exact resume, determinism, every PET; the config and its env contract."""

import pytest
import torch
import torch.nn.functional as F

from perennial import evaluation
from perennial.learners import (
    DEFAULT_LEARNER,
    LEARNERS,
    LearnerConfig,
    build_learner,
    load_predictor,
    restore_learner,
)
from perennial.learners.config import LEARNER_NAMES
from perennial.learners.lae import LAELearner
from perennial.pet import AdapterConfig, LoRAConfig, PrefixConfig
from perennial.store import from_safetensors, to_safetensors
from perennial_dev.datasets.wordnet import class_incremental_split, read_noun_glosses

TEXTS = ["a small dog", "a tall tree", "an old house", "a fast car"]
LABELS = ["animal", "plant", "artifact", "artifact"]
PETS = [
    LoRAConfig(rank=2, layers=(0, 1)),
    AdapterConfig(bottleneck=4, layers=(0, 1)),
    PrefixConfig(length=3, layers=(0, 1)),
]


def _config(pet=PETS[0], **fields):
    return LearnerConfig(**{"learner": "lae", "pet": pet, "lr": 1e-2, **fields})


def _snapshot(learner):
    tensors, _ = learner.state()
    return tensors


def test_head_grows_when_labels_first_appear_and_keeps_adam_state(tiny_backbone):
    learner = LAELearner(tiny_backbone, _config())
    learner.learn(TEXTS[:2], LABELS[:2])
    assert learner.classes == ["animal", "plant"]
    moment = learner.optimizer.state[learner.head.weight]["exp_avg"].clone()
    learner.learn(TEXTS[2:], LABELS[2:])
    assert learner.classes == ["animal", "plant", "artifact"]
    assert learner.head.weight.shape[0] == 3
    assert learner.optimizer.state[learner.head.weight]["exp_avg"].shape == (3, tiny_backbone.dim)
    assert not torch.equal(learner.optimizer.state[learner.head.weight]["exp_avg"][:2], moment)


def test_offline_is_exponential_moving_average_of_online(tiny_backbone):
    learner = LAELearner(tiny_backbone, _config(ema_decay=0.9))
    before = {k: v.clone() for k, v in learner.offline.state_dict().items()}
    learner.learn(TEXTS, LABELS)
    online, offline = learner.online.state_dict(), learner.offline.state_dict()
    for key, old in before.items():
        torch.testing.assert_close(offline[key], 0.9 * old + 0.1 * online[key])
    assert any(not torch.equal(online[k], offline[k]) for k in online)


def test_offline_copies_online_during_the_ema_warmup(tiny_backbone):
    learner = LAELearner(tiny_backbone, _config(ema_decay=0.9, ema_warmup=2))
    learner.learn(TEXTS, LABELS)
    online, offline = learner.online.state_dict(), learner.offline.state_dict()
    assert all(torch.equal(online[k], offline[k]) for k in online)


def test_ensemble_is_the_elementwise_max_of_both_softmaxes(tiny_backbone):
    learner = LAELearner(tiny_backbone, _config(ema_decay=0.5))
    for _ in range(3):
        learner.learn(TEXTS, LABELS)
    from perennial.pet import activate

    with torch.no_grad():
        batch = tiny_backbone.prepare(TEXTS)
        with activate(learner.online):
            online = F.softmax(learner.head(tiny_backbone(batch)), -1)
        with activate(learner.offline):
            offline = F.softmax(learner.head(tiny_backbone(batch)), -1)
    best = torch.maximum(online, offline)
    torch.testing.assert_close(learner.scores(TEXTS), best / best.sum(-1, keepdim=True))
    assert not torch.allclose(online, offline)


def test_loss_masks_classes_absent_from_the_recent_window(tiny_backbone):
    learner = LAELearner(tiny_backbone, _config(loss_window=2, min_loss_classes=1))
    learner.learn(TEXTS[:2], LABELS[:2])
    old_rows = learner.head.weight[:2].detach().clone()
    learner.learn(TEXTS[2:], LABELS[2:])  # window now holds only "artifact"
    torch.testing.assert_close(learner.head.weight[:2], old_rows, atol=1e-6, rtol=0)


def test_a_lone_class_still_has_a_competitor_in_the_loss(tiny_backbone):
    learner = LAELearner(tiny_backbone, _config(loss_window=1))
    learner.learn(TEXTS[:2], LABELS[:2])
    weights = learner.head.weight.detach().clone()
    learner.learn(["a big cat"], ["animal"])  # window: "animal" only; "plant" is kept in the loss
    assert not torch.equal(learner.head.weight[0], weights[0])


def test_pet_is_frozen_for_freeze_steps_after_a_new_class(tiny_backbone):
    learner = LAELearner(tiny_backbone, _config(freeze_steps=2))
    pet = {k: v.clone() for k, v in learner.online.state_dict().items()}
    head = learner.head.weight.detach().clone()
    learner.learn(TEXTS[:2], LABELS[:2])  # new classes: steps 0 and 1 are head-only
    learner.learn(TEXTS[:2], LABELS[:2])
    assert all(torch.equal(pet[k], v) for k, v in learner.online.state_dict().items())
    assert not torch.equal(learner.head.weight[: head.shape[0]], head) or head.shape[0] == 0
    learner.learn(TEXTS[:2], LABELS[:2])  # step 2: the PET trains again
    assert any(not torch.equal(pet[k], v) for k, v in learner.online.state_dict().items())


def test_naive_fine_tuning_masks_nothing_and_has_no_offline_module(tiny_backbone):
    learner = build_learner(
        tiny_backbone, _config(learner="naive", loss_window=2, min_loss_classes=1)
    )
    assert learner.offline is None
    learner.learn(TEXTS[:2], LABELS[:2])
    old_rows = learner.head.weight[:2].detach().clone()
    learner.learn(TEXTS[2:], LABELS[2:])
    assert not torch.allclose(learner.head.weight[:2], old_rows)  # old classes pushed down
    predictor = load_predictor(tiny_backbone, *from_safetensors(to_safetensors(*learner.state())))
    torch.testing.assert_close(predictor.scores(tiny_backbone, TEXTS), learner.scores(TEXTS))


def test_training_is_deterministic_under_a_seed(tiny_backbone):
    runs = []
    for _ in range(2):
        learner = LAELearner(tiny_backbone, _config(seed=7))
        for _ in range(3):
            learner.learn(TEXTS, LABELS)
        runs.append(_snapshot(learner))
    assert runs[0].keys() == runs[1].keys()
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


@pytest.mark.parametrize("pet", PETS, ids=lambda p: p.method)
def test_resume_from_state_continues_exactly_with_every_pet(pet, tiny_backbone):
    straight = LAELearner(tiny_backbone, _config(pet, freeze_steps=1))
    resumed = LAELearner(tiny_backbone, _config(pet, freeze_steps=1))
    for learner in (straight, resumed):
        learner.learn(TEXTS, LABELS)
    blob = to_safetensors(*resumed.state())
    resumed = restore_learner(tiny_backbone, *from_safetensors(blob))
    assert isinstance(resumed, LAELearner) and resumed.config.pet == pet
    assert resumed.predict(TEXTS) == straight.predict(TEXTS)
    for learner in (straight, resumed):
        learner.learn(TEXTS[::-1], LABELS[::-1])
        learner.learn(["a new thing"], ["novel"])
    a, b = _snapshot(straight), _snapshot(resumed)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert (resumed.steps, resumed.examples) == (straight.steps, straight.examples) == (3, 9)
    predictor = load_predictor(tiny_backbone, *from_safetensors(to_safetensors(*resumed.state())))
    torch.testing.assert_close(predictor.scores(tiny_backbone, TEXTS), straight.scores(TEXTS))
    assert predictor.classes == straight.classes


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"lr": 0}, "lr must be in"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"loss_window": 0}, "loss_window"),
        ({"freeze_steps": -1}, "freeze_steps must be >= 0, got -1"),
        ({"learner": "ewc"}, "got 'ewc'"),
        ({"ridge_grid": (0.0,)}, "ridge_grid"),
        ({"projection_dim": 0}, "projection_dim must be >= 1, got 0"),
    ],
)
def test_config_rejects_bad_values(fields, message):
    with pytest.raises(ValueError, match=message):
        LearnerConfig(**fields)


def test_config_dict_round_trip():
    config = LearnerConfig(learner="lae", pet=PrefixConfig(length=4), seed=3)
    assert LearnerConfig.from_dict(config.to_dict()) == config
    assert LearnerConfig().learner == DEFAULT_LEARNER


def test_every_configured_learner_name_has_a_class():
    assert set(LEARNERS) == set(LEARNER_NAMES)


def _stream_accuracy_matrix(learner, split):
    matrix = []
    stages = split.stages
    for t, stage in enumerate(stages):
        stage_examples = [g for g in split.train if g.label in stage] * 3  # three passes per stage
        for start in range(0, len(stage_examples), 8):
            batch = stage_examples[start : start + 8]
            learner.learn([g.text for g in batch], [g.label for g in batch])
        row = []
        for i in range(len(stages)):
            if i > t:
                row.append(0.0)
                continue
            test = [g for c in stages[i] for g in split.test[c]]
            predicted = learner.predict([g.text for g in test])
            row.append(sum(p == g.label for p, g in zip(predicted, test, strict=False)) / len(test))
        matrix.append(row)
    return matrix


def test_lae_forgets_clearly_less_than_naive_fine_tuning_on_minilm(minilm):
    """Four WordNet supersenses in two stages, seeded: LAE keeps the first stage, naive does not."""
    split = class_incremental_split(
        read_noun_glosses(),
        num_classes=4,
        classes_per_stage=2,
        train_per_class=24,
        test_per_class=15,
        seed=1,
    )
    results = {}
    for name in ("lae", "naive"):
        learner = build_learner(
            minilm, LearnerConfig(learner=name, pet=LoRAConfig(rank=4), lr=3e-3, seed=0)
        )
        results[name] = _stream_accuracy_matrix(learner, split)
    lae, naive = (evaluation.forgetting(results[n]) for n in ("lae", "naive"))
    assert lae + 0.2 < naive, results
    assert evaluation.final_accuracy(results["lae"]) > 0.5, results  # chance is 1/4


@pytest.mark.parametrize(
    "pet",
    [
        LoRAConfig(rank=2, target_modules=("_project_conv",), layers=(1, 2)),
        AdapterConfig(bottleneck=4, target_modules=("block",), layers=(2, 3)),
    ],
    ids=lambda p: p.method,
)
def test_lae_on_the_image_backbone_learns_and_serves(pet):
    from perennial.backbone import ImageBackbone

    backbone = ImageBackbone.load(image_size=32)
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(28, 28, generator=generator) for _ in range(4)]
    learner = build_learner(backbone, LearnerConfig(learner="lae", pet=pet, lr=1e-2, ema_decay=0.5))
    for _ in range(2):
        learner.learn(images, ["a", "b", "a", "b"])
    assert learner.classes == ["a", "b"] and learner.steps == 2
    predictor = load_predictor(backbone, *from_safetensors(to_safetensors(*learner.state())))
    torch.testing.assert_close(predictor.scores(backbone, images), learner.scores(images))

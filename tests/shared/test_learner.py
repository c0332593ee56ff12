"""The LAE learner: growing head, EMA accumulation, ensemble, exact resume, determinism."""

import pytest
import torch

from perennial.datasets.wordnet import class_incremental_split, read_noun_glosses
from perennial.learner import LAELearner, LearnerConfig
from perennial.pet import LoRAConfig
from perennial.store import from_safetensors, to_safetensors

TEXTS = ["a small dog", "a tall tree", "an old house", "a fast car"]
LABELS = ["animal", "plant", "artifact", "artifact"]


def _config(**fields):
    return LearnerConfig(lora=LoRAConfig(rank=2, layers=(0, 1)), lr=1e-2, **fields)


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


def test_training_is_deterministic_under_a_seed(tiny_backbone):
    runs = []
    for _ in range(2):
        learner = LAELearner(tiny_backbone, _config(seed=7))
        for _ in range(3):
            learner.learn(TEXTS, LABELS)
        runs.append(_snapshot(learner))
    assert runs[0].keys() == runs[1].keys()
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_resume_from_state_continues_exactly(tiny_backbone):
    straight = LAELearner(tiny_backbone, _config())
    resumed = LAELearner(tiny_backbone, _config())
    for learner in (straight, resumed):
        learner.learn(TEXTS, LABELS)
    blob = to_safetensors(*resumed.state())
    resumed = LAELearner.from_state(tiny_backbone, *from_safetensors(blob))
    assert resumed.predict(TEXTS) == straight.predict(TEXTS)
    for learner in (straight, resumed):
        learner.learn(TEXTS[::-1], LABELS[::-1] + [])
        learner.learn(["a new thing"], ["novel"])
    a, b = _snapshot(straight), _snapshot(resumed)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert (resumed.steps, resumed.examples) == (straight.steps, straight.examples) == (3, 9)


@pytest.mark.parametrize(("fields", "message"), [({"lr": 0}, "lr must be in"), ({"ema_decay": 1.0}, "ema_decay"),
                                                  ({"loss_window": 0}, "loss_window")])
def test_config_rejects_bad_values(fields, message):
    with pytest.raises(ValueError, match=message):
        LearnerConfig(**fields)


def test_learns_real_classes_on_minilm(minilm):
    """Four WordNet supersenses in two stages: accuracy on seen classes far above chance."""
    split = class_incremental_split(read_noun_glosses(), num_classes=4, classes_per_stage=2,
                                    train_per_class=48, test_per_class=20)
    learner = LAELearner(minilm, LearnerConfig())
    train = list(split.train)
    for start in range(0, len(train), 16):
        batch = train[start : start + 16]
        learner.learn([g.text for g in batch], [g.label for g in batch])
    test = [g for glosses in split.test.values() for g in glosses]
    accuracy = sum(p == g.label for p, g in zip(learner.predict([g.text for g in test]), test)) / len(test)
    assert accuracy > 0.5, accuracy  # chance is 1/4

"""SimpleCIL and RanPAC: statistics, the analytic heads, task-free order independence,
exact state round trip and the serving predictor."""

import pytest
import torch
import torch.nn.functional as F

from perennial.errors import FailedPrecondition
from perennial.learners import (
    LearnerConfig,
    build_learner,
    load_predictor,
    restore_learner,
)
from perennial.learners.analytic import RanPAC, SimpleCIL
from perennial.store import from_safetensors, to_safetensors

TEXTS = ["a small dog", "a tall tree", "an old house", "a fast car", "a big cat", "a green fern"]
LABELS = ["animal", "plant", "artifact", "artifact", "animal", "plant"]


def _clusters(dim: int, classes: int = 6, per_class: int = 30, seed: int = 0):
    """Gaussian class clusters in feature space: a seeded class-incremental stream (2 per stage)."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=generator) * 2
    features, labels = [], []
    for c in range(classes):
        features.append(centres[c] + torch.randn(per_class, dim, generator=generator))
        labels += [f"class{c}"] * per_class
    return torch.cat(features), labels


@pytest.mark.parametrize("name", ["simplecil", "ranpac"])
def test_peer_learns_a_seeded_class_incremental_stream_without_forgetting(name, tiny_backbone):
    learner = build_learner(tiny_backbone, LearnerConfig(learner=name, projection_dim=256))
    features, labels = _clusters(tiny_backbone.dim)
    test, test_labels = _clusters(
        tiny_backbone.dim, seed=0
    )  # same centres, same noise: in-sample check
    first_stage = [i for i, y in enumerate(test_labels) if y in ("class0", "class1")]
    accuracy_after = []
    for stage in range(3):
        rows = [
            i for i, y in enumerate(labels) if y in (f"class{2 * stage}", f"class{2 * stage + 1}")
        ]
        for start in range(0, len(rows), 8):
            chosen = rows[start : start + 8]
            learner.learn_features(features[chosen], [labels[i] for i in chosen])
        predicted = learner.scores_features(test[first_stage]).argmax(-1)
        accuracy_after.append(
            sum(
                learner.classes[p] == test_labels[i]
                for p, i in zip(predicted.tolist(), first_stage, strict=False)
            )
            / len(first_stage)
        )
    assert learner.classes == [f"class{c}" for c in range(6)]
    assert accuracy_after[0] > 0.95 and accuracy_after[-1] > accuracy_after[0] - 0.05, (
        accuracy_after
    )


def test_simplecil_scores_are_cosine_to_running_class_means(tiny_backbone):
    learner = SimpleCIL(tiny_backbone, LearnerConfig(learner="simplecil", temperature=5.0))
    features = torch.randn(
        4, tiny_backbone.dim, generator=torch.Generator().manual_seed(1)
    ).double()
    learner.learn_features(features[:3], ["a", "b", "a"])
    learner.learn_features(features[3:], ["b"])
    means = torch.stack([(features[0] + features[2]) / 2, (features[1] + features[3]) / 2])
    expected = F.softmax(5.0 * F.normalize(features, dim=-1) @ F.normalize(means, dim=-1).T, -1)
    torch.testing.assert_close(learner.scores_features(features), expected)


def test_ranpac_head_is_the_ridge_solution_and_ignores_stream_order(tiny_backbone):
    config = LearnerConfig(learner="ranpac", projection_dim=64, ridge_grid=(1.0,))
    features, labels = _clusters(tiny_backbone.dim, classes=3, per_class=10)
    forward, backward = RanPAC(tiny_backbone, config), RanPAC(tiny_backbone, config)
    for i in range(0, len(labels), 5):
        forward.learn_features(features[i : i + 5], labels[i : i + 5])
    h = torch.relu(features.double() @ forward.projection)
    y = F.one_hot(torch.tensor([forward.classes.index(label) for label in labels])).double()
    gram = h.T @ h
    ridge = 1.0 * float(gram.diagonal().mean()) * 1e-3
    expected = torch.linalg.solve(gram + ridge * torch.eye(64, dtype=torch.float64), h.T @ y)
    torch.testing.assert_close(forward.head(), expected)
    # the same examples in another order (and other micro-batches) give the same predictions
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(2)).tolist()
    for i in range(0, len(order), 7):
        chosen = order[i : i + 7]
        backward.learn_features(features[chosen], [labels[j] for j in chosen])
    assert backward.scores_features(features).argmax(-1).tolist() == [
        backward.classes.index(forward.classes[p])
        for p in forward.scores_features(features).argmax(-1).tolist()
    ]


def _live_tensors(learner) -> dict[str, torch.Tensor]:
    """Every tensor a learner holds, its head's included (bit-exact resume compares these)."""
    found = {}
    for owner, prefix in ((learner, ""), (getattr(learner, "ridge_head", None), "ridge_head.")):
        for name, value in (vars(owner) if owner is not None else {}).items():
            if isinstance(value, torch.Tensor):
                found[prefix + name] = value
    if "ridge_head.gram" in found:  # only its lower triangle is state (and ever read)
        found["ridge_head.gram"] = torch.tril(found["ridge_head.gram"])
    return found


def test_a_state_of_the_older_format_loads(tiny_backbone):
    """States written with the symmetrised Gram matrix's upper triangle (before the lower
    triangle became the stored half) restore to the same predictions."""
    learner = build_learner(tiny_backbone, LearnerConfig(learner="ranpac", projection_dim=128))
    learner.learn(TEXTS, LABELS)
    tensors, metadata = learner.state()
    gram = learner.ridge_head.gram
    gram = torch.tril(gram) + torch.tril(gram, -1).transpose(1, 2)
    rows, cols = torch.triu_indices(128, 128)
    del tensors["gram_lower"]
    tensors["gram_upper"] = gram[:, rows, cols].clone()
    restored = restore_learner(tiny_backbone, tensors, metadata)
    torch.testing.assert_close(restored.scores(TEXTS), learner.scores(TEXTS), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["simplecil", "ranpac"])
def test_state_round_trip_resumes_and_serves(name, tiny_backbone):
    config = LearnerConfig(learner=name, projection_dim=128)
    straight, resumed = build_learner(tiny_backbone, config), build_learner(tiny_backbone, config)
    for learner in (straight, resumed):
        learner.learn(TEXTS[:4], LABELS[:4])
    resumed = restore_learner(tiny_backbone, *from_safetensors(to_safetensors(*resumed.state())))
    assert (
        _live_tensors(straight) and _live_tensors(resumed).keys() == _live_tensors(straight).keys()
    )
    for name_, tensor in _live_tensors(straight).items():  # the restored state IS the live state
        assert torch.equal(_live_tensors(resumed)[name_], tensor), name_
    for learner in (straight, resumed):
        learner.learn(TEXTS[4:], LABELS[4:])
    assert (resumed.classes, resumed.steps, resumed.examples) == (straight.classes, 2, 6)
    torch.testing.assert_close(resumed.scores(TEXTS), straight.scores(TEXTS), rtol=0, atol=0)
    predictor = load_predictor(tiny_backbone, *from_safetensors(to_safetensors(*straight.state())))
    assert predictor.classes == straight.classes
    scores = predictor.scores(tiny_backbone, TEXTS)
    assert scores.shape == (6, 3) and scores.dtype == torch.float32
    torch.testing.assert_close(scores.sum(-1), torch.ones(6))
    assert (
        predictor.scores(tiny_backbone, TEXTS).argmax(-1).tolist()
        == straight.scores(TEXTS).argmax(-1).tolist()
    )


def test_learner_and_config_must_agree(tiny_backbone):
    with pytest.raises(ValueError, match="SimpleCIL runs learner 'simplecil', got 'ranpac'"):
        SimpleCIL(tiny_backbone, LearnerConfig(learner="ranpac"))
    with pytest.raises(ValueError, match="need equally many inputs and labels, got 1 and 2"):
        build_learner(tiny_backbone, LearnerConfig(learner="ranpac")).learn(["x"], ["a", "b"])


def test_a_snapshot_of_another_runtime_is_refused(tiny_backbone):
    learner = build_learner(tiny_backbone, LearnerConfig(learner="ranpac", projection_dim=16))
    learner.learn(TEXTS[:4], LABELS[:4])
    tensors, metadata = learner.state()
    assert metadata["runtime"] == "torch"
    with pytest.raises(FailedPrecondition, match="set PERENNIAL_RUNTIME=onnx"):
        load_predictor(tiny_backbone, tensors, {**metadata, "runtime": "onnx"})


@pytest.mark.parametrize("name", ["ranpac", "fsa", "lae"])
def test_a_snapshot_of_another_backbone_is_refused(tiny_backbone, name):
    """Every learner records its backbone; an image snapshot on a text service (or images of
    another size) is FAILED_PRECONDITION naming the settings, never a decode failure."""
    config = LearnerConfig(learner=name, projection_dim=16, warmup_cap=64)
    learner = build_learner(tiny_backbone, config)
    learner.learn(TEXTS[:4], LABELS[:4])
    tensors, metadata = learner.state()
    assert metadata["backbone"] == "text"
    other = {**metadata, "backbone": "image-64"}
    with pytest.raises(
        FailedPrecondition, match="PERENNIAL_BACKBONE=image and PERENNIAL_IMAGE_SIZE=64"
    ):
        load_predictor(tiny_backbone, tensors, other)
    with pytest.raises(FailedPrecondition, match="'image-64' backbone, this service runs 'text'"):
        restore_learner(tiny_backbone, tensors, other)
    legacy = {k: v for k, v in metadata.items() if k != "backbone"}  # before it was recorded: text
    assert load_predictor(tiny_backbone, tensors, legacy).classes == learner.classes


def test_a_ridge_chosen_beside_learning_is_the_one_chosen_in_line():
    """`select_ridge(background=True)` chooses on a copy of the statistics of that moment in the
    selection thread: whatever is added meanwhile, the next solve gets exactly the λ and head of
    choosing in line then (same thread count, same operations: bit-exact on any CPU)."""
    from perennial.learners.ridge import RidgeHead

    generator = torch.Generator().manual_seed(0)
    means = torch.randn(3, 16, generator=generator)

    def batch(size: int, first: int):
        targets = torch.randint(0, 3, (size,), generator=generator)
        noisy = means[targets] + 0.7 * torch.randn(size, 16, generator=generator)
        return noisy, targets, torch.arange(size) + first

    grid = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1e4)
    inline, beside = RidgeHead(16, 64, 3, grid), RidgeHead(16, 64, 3, grid)
    early, late = batch(10, 0), batch(400, 10)
    for head in (inline, beside):
        head.grow(3)
        head.add(*early)
    expected = inline.select_ridge()
    beside.select_ridge(background=True)
    for head in (inline, beside):  # learning goes on while the choice is made
        head.add(*late)
    assert beside.ridge == expected != inline.select_ridge()  # the data of then, not of now
    assert beside.settled
    inline._set_ridge(expected)
    assert torch.equal(beside.solve(), inline.solve())

    beside.select_ridge(background=True)
    beside.select_ridge(background=True)  # supersedes the one before: nothing read λ between
    assert beside.ridge == inline.select_ridge()
    assert torch.equal(beside.solve(), inline.solve())


def test_a_catch_up_skips_the_choices_of_lambda_its_backlog_supersedes() -> None:
    """A choice of λ with `every` or more examples queued behind it is superseded before
    anything reads λ: skipping it leaves the λ and head read after the backlog unchanged."""
    from perennial.learners.analytic import select_when_due
    from perennial.learners.ridge import RidgeHead

    generator = torch.Generator().manual_seed(1)
    means = torch.randn(4, 16, generator=generator)
    grid = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1e4)
    sizes, every = [40, 70, 90, 60, 80, 30], 100
    each, skipping = RidgeHead(16, 64, 3, grid), RidgeHead(16, 64, 3, grid)
    chosen = []
    choose = skipping.select_ridge
    skipping.select_ridge = lambda background=False: chosen.append(1) or choose(background)
    selected = {id(each): (0, 0), id(skipping): (0, 0)}
    first = 0
    for i, size in enumerate(sizes):
        targets = torch.randint(0, 2 + (i >= 3) * 2, (size,), generator=generator)  # new classes
        noisy = means[targets] + 0.7 * torch.randn(size, 16, generator=generator)
        classes = int(targets.max()) + 1
        for head, queued in ((each, 0), (skipping, sum(sizes[i + 1 :]))):
            head.grow(max(head.classes, classes))
            head.add(noisy, targets, torch.arange(size) + first)
            selected[id(head)] = select_when_due(
                head, selected[id(head)], first + size, head.classes, every, queued
            )
        first += size
    assert selected[id(each)] == selected[id(skipping)]
    assert len(chosen) < len(sizes) - 1  # most choices were superseded by a later one
    assert each.ridge == skipping.ridge
    assert torch.equal(each.solve(), skipping.solve())

"""Continual-learning metrics against matrices computed by hand."""

import math

import pytest

from perennial import evaluation

# R[t, i]: three stages; rows = after stage t, columns = class group i (0 where not yet seen).
R = [
    [0.9, 0.0, 0.0],
    [0.6, 0.8, 0.0],
    [0.5, 0.7, 0.9],
]


def test_accuracy_on_seen_classes_and_its_average():
    assert evaluation.seen_accuracy(R).tolist() == pytest.approx([0.9, 0.7, (0.5 + 0.7 + 0.9) / 3])
    assert evaluation.final_accuracy(R) == pytest.approx(0.7)
    assert evaluation.average_incremental_accuracy(R) == pytest.approx((0.9 + 0.7 + 0.7) / 3)


def test_seen_accuracy_weights_groups_by_size():
    # group 0 has 2 classes, group 1 has 1: A_1 = (2·0.6 + 1·0.8) / 3
    assert evaluation.seen_accuracy([[0.9, 0.0], [0.6, 0.8]], sizes=[2, 1])[1] == pytest.approx(
        2.0 / 3
    )


def test_forgetting_uses_the_best_earlier_accuracy():
    # group 0: max(0.9, 0.6) − 0.5 = 0.4; group 1: max(0.8) − 0.7 = 0.1
    assert evaluation.forgetting(R) == pytest.approx((0.4 + 0.1) / 2)
    # the max runs over every stage before the last, not only the diagonal
    assert evaluation.forgetting(
        [[0.5, 0.0, 0.0], [0.9, 0.8, 0.0], [0.7, 0.8, 0.6]]
    ) == pytest.approx(((0.9 - 0.7) + (0.8 - 0.8)) / 2)


def test_backward_and_forward_transfer():
    assert evaluation.backward_transfer(R) == pytest.approx(((0.5 - 0.9) + (0.7 - 0.8)) / 2)
    assert evaluation.forward_transfer(R) == pytest.approx(0.0)
    assert evaluation.forward_transfer(R, baseline=[0.0, 0.1, 0.2]) == pytest.approx(
        ((0 - 0.1) + (0 - 0.2)) / 2
    )


def test_single_stage_and_bad_shapes():
    assert evaluation.forgetting([[0.7]]) == 0.0 and evaluation.backward_transfer([[0.7]]) == 0.0
    with pytest.raises(ValueError, match=r"square and non-empty, got shape \(1, 2\)"):
        evaluation.forgetting([[0.1, 0.2]])


def test_summary_holds_every_metric():
    summary = evaluation.summary(R)
    assert set(summary) == {
        "final_accuracy",
        "average_incremental_accuracy",
        "forgetting",
        "backward_transfer",
        "forward_transfer",
    }
    assert all(math.isfinite(v) for v in summary.values())

"""The accuracy matrix over class-arrival stages and the continual-learning metrics from it."""

from __future__ import annotations

import pytest

from perennial.forgetting import AccuracyMatrix


def test_three_stages_by_hand() -> None:
    matrix = AccuracyMatrix()
    matrix.record({"a": 1.0, "b": 0.8})  # stage 0: a, b
    matrix.record({"a": 0.8, "b": 0.8, "c": 1.0})  # stage 1: c
    matrix.record({"a": 0.7, "b": 0.7, "c": 0.9})  # still stage 1 (row overwritten)
    matrix.record({"a": 0.6, "b": 0.6, "c": 0.5, "d": 0.9})  # stage 2: d
    assert matrix.groups == [["a", "b"], ["c"], ["d"]]
    assert [[round(x, 6) for x in row] for row in matrix.rows] == [
        [0.9],
        [0.7, 0.9],
        [0.6, 0.5, 0.9],
    ]
    # forgetting: group 0 best 0.9 → 0.6, group 1 best 0.9 → 0.5
    assert matrix.average_forgetting == pytest.approx((0.3 + 0.4) / 2)
    assert matrix.backward_transfer == pytest.approx(((0.6 - 0.9) + (0.5 - 0.9)) / 2)
    assert matrix.seen_accuracy == pytest.approx(0.65)
    assert matrix.average_incremental_accuracy == pytest.approx((0.9 + 2.3 / 3 + 0.65) / 3)


def test_one_stage_forgets_nothing_and_an_empty_matrix_reads_zero() -> None:
    matrix = AccuracyMatrix()
    assert (matrix.stages, matrix.seen_accuracy, matrix.average_forgetting) == (0, 0.0, 0.0)
    matrix.record({"a": 0.5})
    assert (matrix.average_forgetting, matrix.backward_transfer) == (0.0, 0.0)


def test_stages_are_bounded() -> None:
    matrix = AccuracyMatrix(max_stages=2)
    for n in range(1, 5):
        matrix.record({str(i): 1.0 for i in range(n)})
    assert matrix.stages == 2 and matrix.groups == [["0"], ["1", "2", "3"]]
    with pytest.raises(ValueError, match="max_stages must be >= 1, got 0"):
        AccuracyMatrix(max_stages=0)

"""Drift detectors: river's API shape, exact detection indices on seeded streams, no alarm when stationary."""

from __future__ import annotations

import doctest
import random

import numpy as np
import pytest
from river import base
from river.drift import ADWIN
from scipy import stats

from perennial import drift, forgetting
from perennial.drift import (
    EmbeddingDrift,
    ErrorRateDrift,
    NewClass,
    NoDrift,
    PredictionDrift,
    RateRise,
)


def detections(
    detector: base.DriftDetector, stream, scores: list[float] | None = None
) -> list[int]:
    """Indices where `detector` fired; the detector's score at each one goes to `scores`."""
    found = []
    for index, x in enumerate(stream):
        detector.update(x)
        if detector.drift_detected:
            found.append(index)
            if scores is not None:
                scores.append(detector.score)
    return found


@pytest.mark.parametrize("module", [drift, forgetting])
def test_docstring_examples_run(module) -> None:
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize(
    "detector",
    [
        EmbeddingDrift(reference_size=64, window_size=32, alpha=0.01),
        PredictionDrift(reference_size=64, window_size=32),
        ErrorRateDrift(ADWIN(delta=0.01), window_size=50),
        NewClass(known=["a"]),
    ],
)
def test_river_api_shape(detector: base.DriftDetector) -> None:
    """Public hyperparameters named like the arguments, clone() rebuilds the private state."""
    assert isinstance(detector, base.DriftDetector)
    params = detector._get_params()
    assert params and all(getattr(detector, name) is not None for name in params)
    clone = detector.clone()
    assert clone._get_params().keys() == params.keys() and clone is not detector
    assert clone.drift_detected is False


def gaussian_stream(seed: int, shift: float, before: int = 600, after: int = 600, dim: int = 32):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(0, 1, (before, dim)), rng.normal(shift, 1, (after, dim))])


def test_embedding_drift_exact_index_and_rearms() -> None:
    detector = EmbeddingDrift(reference_size=200, window_size=100, projections=8, alpha=0.001)
    stream, scores = gaussian_stream(seed=11, shift=0.3), []
    # one alarm (the window that found it became the reference), 55 updates after the change
    assert detections(detector, stream, scores) == [655]
    assert scores[0] > 0.2 and detector.n_seen == 1200


def test_embedding_drift_discounts_serial_dependence() -> None:
    """A random walk is one slowly wandering distribution, not a change at every check; a jump
    in independent data is still found within a couple of checks."""
    rng = np.random.default_rng(1)
    walk = np.cumsum(rng.normal(size=(1000, 1)), axis=0)
    assert detections(EmbeddingDrift(), (walk - walk.mean()) / walk.std()) == []
    jump = np.concatenate([rng.normal(0, 1, (500, 1)), rng.normal(2, 1, (300, 1))])
    assert detections(EmbeddingDrift(), jump) == [511]


def test_embedding_drift_no_alarm_when_stationary() -> None:
    detector = EmbeddingDrift(reference_size=200, window_size=100, alpha=0.001)
    assert detections(detector, gaussian_stream(seed=5, shift=0.0, before=3000, after=0)) == []
    assert 0 < detector.p_value <= 1


def test_embedding_drift_rejects_a_vector_of_another_size() -> None:
    detector = EmbeddingDrift()
    detector.update(np.zeros(4))
    with pytest.raises(ValueError, match="expected vectors of size 4, got 3"):
        detector.update(np.zeros(3))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alpha": 2.0}, "alpha must be in"),
        ({"window_size": 1}, "window_size must be in"),
    ],
)
def test_invalid_hyperparameters_name_the_value(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        EmbeddingDrift(**kwargs)
    with pytest.raises(ValueError, match=message):
        PredictionDrift(**kwargs)


def test_prediction_drift_on_a_new_class_and_not_when_stationary() -> None:
    rng = random.Random(3)
    stationary = rng.choices("abcd", k=3000)
    assert detections(PredictionDrift(), stationary) == []
    with_new_class = rng.choices("abcd", k=700) + rng.choices(
        "abcde", weights=[1, 1, 1, 1, 2], k=500
    )
    scores: list[float] = []
    assert detections(PredictionDrift(), with_new_class, scores) == [749]
    assert scores[0] > 0.15


def test_error_rate_drift_detects_only_a_rise() -> None:
    rng = random.Random(2)
    falling = [rng.random() < 0.6 for _ in range(400)] + [rng.random() < 0.1 for _ in range(2000)]
    assert detections(ErrorRateDrift(), falling) == []
    rising = falling + [rng.random() < 0.4 for _ in range(400)]
    detector = ErrorRateDrift()
    assert detections(detector, rising) == [2447]
    assert detector.error_rate == pytest.approx(0.4, abs=0.1)


def test_rate_rise_is_one_sided_and_calibrated() -> None:
    rng = random.Random(4)
    stationary = [rng.random() < 0.3 for _ in range(20000)]
    assert len(detections(RateRise(), stationary)) <= 3  # alpha 0.001 x 1250 checks ~ 1.25
    falling = [rng.random() < 0.5 for _ in range(500)] + [rng.random() < 0.05 for _ in range(3000)]
    assert detections(RateRise(), falling) == []
    with pytest.raises(ValueError, match="min_window must be in"):
        RateRise(window_size=16, min_window=32)


def test_embedding_drift_short_windows_catch_a_large_change_fast() -> None:
    rng = np.random.default_rng(9)
    stream = np.concatenate([rng.normal(0, 1, (300, 4)), rng.normal(3, 1, (100, 4))])
    [alarm] = detections(EmbeddingDrift(), stream)
    assert 300 <= alarm < 300 + 32  # the 16-vector window, at the next check


def test_new_class_and_the_null_detector() -> None:
    assert detections(NewClass(), ["a", "b", "a", "c", "c"]) == [0, 1, 3]
    assert detections(NoDrift(), range(100)) == []


def test_ks_statistics_equal_scipys_two_sample_statistic_per_column() -> None:
    """The vectorised statistic is scipy's, ties included (up to the float sum of 1/n steps)."""
    rng = np.random.default_rng(4)
    for rounded in (False, True):
        reference, window = rng.normal(size=(257, 6)), rng.normal(0.2, 1, size=(61, 6))
        if rounded:  # many ties within and across the samples
            reference, window = reference.round(1), window.round(1)
        expected = [stats.ks_2samp(reference[:, j], window[:, j]).statistic for j in range(6)]
        assert np.allclose(drift._ks_statistics(reference, window), expected, rtol=0, atol=1e-12)


def test_top_components_span_the_leading_singular_vectors() -> None:
    rng = np.random.default_rng(5)
    basis = np.linalg.qr(rng.normal(size=(64, 64)))[0]
    sample = (rng.normal(size=(300, 64)) * np.geomspace(10, 0.1, 64)) @ basis.T
    centred = sample - sample.mean(0)
    exact = np.linalg.svd(centred, full_matrices=False)[2][:4].T
    found = drift._top_components(centred, 4)
    # each found direction is close to an exact one, up to its sign (a randomized SVD with two
    # power iterations on a slowly decaying spectrum: singular values 6 % apart)
    assert np.allclose(np.abs(np.sum(found * exact, axis=0)), 1, atol=1e-3)


def test_anchored_keeps_the_reference_and_the_last_window_across_compactions() -> None:
    data = drift._Anchored(reference_size=5, window_size=3)
    vectors = np.arange(100.0).reshape(50, 2)
    for v in vectors:
        data.append(v)
    assert len(data) == 8
    assert np.array_equal(data.items(), np.concatenate([vectors[:5], vectors[-3:]]))
    data.restart(data.items()[-2:])  # the window that found a change becomes the reference
    data.append(np.array([-1.0, -1.0]))
    assert np.array_equal(data.items(), np.concatenate([vectors[-2:], [[-1.0, -1.0]]]))


def test_float32_vectors_are_kept_in_float32_and_detected_as_in_float64() -> None:
    """float32 → float64 is exact, so the stored precision changes memory, not detections."""
    stream = gaussian_stream(seed=11, shift=0.3).astype(np.float32)
    narrow, wide = EmbeddingDrift(alpha=0.001), EmbeddingDrift(alpha=0.001)
    assert detections(narrow, stream) == detections(wide, stream.astype(np.float64)) != []
    assert narrow._data._rows.dtype == np.float32 and wide._data._rows.dtype == np.float64

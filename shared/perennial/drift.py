"""Drift detectors with river's API: `update(x)`, `drift_detected`, public hyperparameters.

Every detector here subclasses `river.base.DriftDetector`, so it behaves like
river's own: hyperparameters are public attributes named like the `__init__`
arguments (`clone()` and `repr` work), state is private and rebuilt by
`_reset()`, and `drift_detected` is True for exactly the update that detected
a change. River has univariate detectors (ADWIN, HDDM_A, HDDM_W, ...) and the null
object (`NoDrift`); this module adds what our streams need (docs/DRIFT.md compares them):

- `EmbeddingDrift` — input drift of vectors (embeddings) against the recent past:
  two-sample Kolmogorov–Smirnov tests along the principal components of the pooled
  sample, on several window lengths, Bonferroni-corrected (docs/DRIFT.md: why not MMD).
- `PredictionDrift` — drift of a categorical stream (predicted classes): Jensen–Shannon
  divergence between a reference and a recent window, calibrated by the G-test.
- `RateRise` — a rise of a 0/1 rate: one-sided exact (Fisher) tests on several window
  lengths against the past, Bonferroni-corrected.
- `ErrorRateDrift` — concept drift on prequential errors (0/1), wrapping a binary
  detector (default `RateRise`: only a *rising* error is a drift) and the exported rate.
- `NewClass` — a label never seen before.
"""

from __future__ import annotations

import functools
from collections import Counter, deque
from collections.abc import Hashable, Iterable, Sequence

import numpy as np
from river import base
from river.drift import NoDrift
from scipy import stats

__all__ = [
    "EmbeddingDrift",
    "ErrorRateDrift",
    "NewClass",
    "NoDrift",
    "PredictionDrift",
    "RateRise",
]


def _check(name: str, value: float, low: float, high: float = float("inf")) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value!r}")


class EmbeddingDrift(base.DriftDetector):
    """Input drift of a vector stream: multi-scale KS tests along principal components.

    Every `check_every` updates, the most recent `w` vectors are compared with the reference:
    the first `reference_size` vectors since the start or the last alarm (fixed once full, so
    a slow change cannot seep into it; until then, every vector before the window), for
    each window `w` in `window_size`, `window_size / 2`, … down to `min_window`: a short
    window catches a large change within a few dozen vectors, a long one a subtle change.
    Each comparison is one two-sample Kolmogorov–Smirnov test per direction — the top
    `projections` principal components of the pooled sample: "PCA + univariate KS + Bonferroni", among
    the best detectors for embeddings in Rabanser et al. (2019, "Failing loudly"). The
    components are fitted without knowing which window a vector came from, so they include
    directions that only the new data spans (new classes) while treating both windows alike
    under no drift. Drift is declared when the smallest p-value times the number of tests
    (directions × windows: Bonferroni) is below `alpha`. After a drift the window that
    found it becomes the reference, so the detector re-arms on the new regime.

    Parameters
    ----------
    reference_size
        Vectors in the reference.
    window_size
        Vectors in the longest recent window tested.
    projections
        Principal components (of reference and window pooled) that are tested.
    alpha
        Family-wise false-alarm probability of one check.
    check_every
        Updates between two checks.
    min_window
        Vectors in the shortest recent window tested (and the least reference a test needs).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(42)
    >>> stream = np.concatenate([rng.normal(0, 1, (600, 8)), rng.normal(0.5, 1, (400, 8))])
    >>> detector = EmbeddingDrift(reference_size=200, window_size=100, alpha=0.01)
    >>> for i, x in enumerate(stream):
    ...     detector.update(x)
    ...     if detector.drift_detected:
    ...         print(f"change detected at index {i}")
    change detected at index 639
    """

    def __init__(
        self,
        reference_size: int = 256,
        window_size: int = 128,
        projections: int = 16,
        alpha: float = 0.001,
        check_every: int = 16,
        min_window: int = 16,
    ) -> None:
        _check("reference_size", reference_size, 2)
        _check("window_size", window_size, 2)
        _check("projections", projections, 1)
        _check("alpha", alpha, 0.0, 1.0)
        _check("check_every", check_every, 1)
        _check("min_window", min_window, 2, window_size)
        super().__init__()
        self.reference_size = reference_size
        self.window_size = window_size
        self.projections = projections
        self.alpha = alpha
        self.check_every = check_every
        self.min_window = min_window
        self._reset()

    def _reset(self) -> None:
        super()._reset()
        self._dim: int | None = None
        self._data = _Anchored(self.reference_size, self.window_size)
        self._since_check = 0
        self._score = 0.0
        self._p_value = 1.0
        self._n = 0

    @property
    def windows(self) -> list[int]:
        """The recent windows tested: window_size, halved down to min_window."""
        sizes, size = [], self.window_size
        while size >= self.min_window:
            sizes.append(size)
            size //= 2
        return sizes

    @property
    def score(self) -> float:
        """Largest KS statistic of the last check (0 = same distributions, 1 = disjoint)."""
        return self._score

    @property
    def p_value(self) -> float:
        """Bonferroni-adjusted p-value of the last check."""
        return self._p_value

    @property
    def n_seen(self) -> int:
        return self._n

    def _directions(self, sample: np.ndarray) -> np.ndarray:
        """The sample along its top principal components (all of them for small vectors: the
        rotation turns a change spread over many coordinates into one direction)."""
        centred = sample - sample.mean(0)
        if sample.shape[1] == 1:
            return centred
        if sample.shape[1] <= self.projections + 8:
            return centred @ np.linalg.svd(centred, full_matrices=False)[2][: self.projections].T
        return centred @ _top_components(centred, self.projections)

    def update(self, x: Sequence[float] | np.ndarray) -> None:
        """Add one vector."""
        self._drift_detected = False
        vector = np.asarray(x).reshape(-1)
        if self._dim is None:
            self._dim = vector.shape[0]
        elif vector.shape[0] != self._dim:
            raise ValueError(f"expected vectors of size {self._dim}, got {vector.shape[0]}")
        self._n += 1
        self._data.append(vector)
        self._since_check += 1
        if self._since_check < self.check_every:
            return
        self._since_check = 0
        available = len(self._data)
        windows = [w for w in self.windows if available - w >= max(self.min_window, w // 2)]
        if not windows:
            return
        items = self._data.items()
        sample = self._directions(items)
        best_p, best_score, found = 1.0, 0.0, None
        for w in windows:
            reference = sample[: min(self.reference_size, available - w)]
            statistic = _ks_statistics(reference, sample[available - w :])
            p = float(np.min(_ks_p_value(statistic, reference, w)))
            best_score = max(best_score, float(np.max(statistic)))
            if p < best_p:
                best_p, found = p, w
        tests = len(windows) * sample.shape[1]
        self._score = best_score
        self._p_value = min(1.0, tests * best_p)
        if self._p_value < self.alpha:
            self._drift_detected = True
            self._data.restart(items[-found:])


class _Anchored:
    """The vectors since the start or the last alarm: the first `reference_size` (the
    reference, fixed once full, so a slow change cannot seep into it) and the last
    `window_size`, in one array allocated at the first vector: rows [0, reference) hold the
    reference, rows [start, end) the recent vectors (moved back when the array is full).
    Stored in the first vector's float type: float32 embeddings take half the memory, and the
    checks compute in float64, which holds every float32 value exactly."""

    def __init__(self, reference_size: int, window_size: int) -> None:
        self.reference_size = reference_size
        self.window_size = window_size
        self._rows: np.ndarray | None = None
        self._reference = 0
        self._start = self._end = reference_size

    def append(self, vector: np.ndarray) -> None:
        if self._rows is None:
            dtype = np.result_type(vector.dtype, np.float32)  # floats keep theirs; ints: float64
            self._rows = np.empty((self.reference_size + 2 * self.window_size, len(vector)), dtype)
        if self._reference < self.reference_size:
            self._rows[self._reference] = vector
            self._reference += 1
            return
        if self._end == len(self._rows):
            keep = self.window_size - 1
            self._rows[self.reference_size : self.reference_size + keep] = self._rows[-keep:]
            self._start, self._end = self.reference_size, self.reference_size + keep
        self._rows[self._end] = vector
        self._end += 1
        self._start = max(self._start, self._end - self.window_size)

    def __len__(self) -> int:
        return self._reference + self._end - self._start

    def items(self) -> np.ndarray:
        """[len(self), dim] float64: the reference, then the recent vectors (a copy)."""
        assert self._rows is not None
        recent = self._rows[self._start : self._end]
        return np.concatenate((self._rows[: self._reference], recent), dtype=np.float64)

    def restart(self, items: np.ndarray) -> None:
        """After an alarm: the window that found it is the new reference."""
        assert self._rows is not None
        kept = items[-self.reference_size :]
        self._rows[: len(kept)] = kept
        self._reference = len(kept)
        self._start = self._end = self.reference_size


def _ks_statistics(reference: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Two-sample Kolmogorov–Smirnov statistic of each column: max |F_reference − F_window|.

    All columns at once: the pooled sample sorted per column, the gap of the two empirical
    CDFs is the running sum of +1/n (a reference value) and −1/m (a window value), read after
    the last of tied values (the CDFs are right-continuous)."""
    n, m = len(reference), len(window)
    pooled = np.concatenate([reference, window]).T  # [columns, n + m]
    order = np.argsort(pooled, axis=1)
    gap = np.cumsum(np.where(order < n, 1.0 / n, -1.0 / m), axis=1)
    values = np.take_along_axis(pooled, order, axis=1)
    gap[:, :-1][values[:, 1:] == values[:, :-1]] = 0.0  # not the last of its ties
    return np.abs(gap).max(1)


def _ks_p_value(statistic: np.ndarray, reference: np.ndarray, window: int) -> np.ndarray:
    """p-values of KS statistics, robust to small samples and to serial dependence.

    Small samples: Stephens' (1970) correction of the asymptotic law, λ = (√nₑ + 0.12 +
    0.11/√nₑ)·D, accurate from nₑ ≈ 4 on. Dependence: each sample size deflated to its
    effective size n(1 − ρ)/(1 + ρ), ρ = the reference's lag-1 autocorrelation per direction
    (AR(1) variance inflation). For independent data ρ ≈ 0 and nothing changes; a trending or
    slowly wandering series no longer reads as a new distribution at every check.
    """
    centred = reference - reference.mean(0)
    denominator = (centred**2).sum(0)
    rho = np.where(
        denominator > 0, (centred[1:] * centred[:-1]).sum(0) / np.maximum(denominator, 1e-300), 0
    )
    shrink = (1 - np.clip(rho, 0.0, 0.99)) / (1 + np.clip(rho, 0.0, 0.99))
    n, m = len(reference) * shrink, window * shrink
    root = np.sqrt(n * m / (n + m))
    return stats.kstwobign.sf((root + 0.12 + 0.11 / root) * np.asarray(statistic))


def _top_components(centred: np.ndarray, k: int, oversample: int = 8, power: int = 2) -> np.ndarray:
    """[dim, k] top right singular vectors by a seeded randomized SVD (Halko et al. 2011).

    ~10x cheaper than a full SVD of a 384 x 384 matrix; with two power iterations the
    leading components match the exact ones closely (they only choose directions to test).
    The last step factors the tall [dim, k + oversample] matrix, which LAPACK does faster than
    its wide transpose; a component's sign is arbitrary (a KS test along −v is the same test).
    """
    sketch = centred @ _gaussian(centred.shape[1], k + oversample)
    basis = np.linalg.qr(sketch)[0]
    for _ in range(power):
        basis = np.linalg.qr(centred @ (centred.T @ basis))[0]
    return np.linalg.svd(centred.T @ basis, full_matrices=False)[0][:, :k]


@functools.lru_cache(maxsize=8)
def _gaussian(rows: int, columns: int) -> np.ndarray:
    """The randomized SVD's test matrix: seeded, so every check of a stream draws the same."""
    matrix = np.random.default_rng(0).normal(size=(rows, columns))
    matrix.flags.writeable = False
    return matrix


def _js_divergence(p: np.ndarray, q: np.ndarray, weight: float) -> float:
    """Generalised Jensen–Shannon divergence (nats) of p and q mixed with weights (w, 1−w)."""
    mixture = weight * p + (1 - weight) * q

    def kl(a: np.ndarray) -> float:
        nonzero = a > 0
        return float(np.sum(a[nonzero] * np.log(a[nonzero] / mixture[nonzero])))

    return weight * kl(p) + (1 - weight) * kl(q)


class PredictionDrift(base.DriftDetector):
    """Drift of a categorical stream (predicted classes): Jensen–Shannon vs a reference.

    The first `reference_size` labels form the reference histogram; every
    `check_every` updates the last `window_size` labels are compared with it. The
    statistic is the Jensen–Shannon divergence of the two histograms (weighted by
    the window sizes), which is the mutual information between "which window" and
    "which class"; 2·N·JSD is then the G-test statistic of homogeneity, χ² with
    (classes − 1) degrees of freedom under no drift, so `alpha` is a calibrated
    false-alarm probability per test rather than a rule-of-thumb cut (as PSI's
    0.1/0.25 are). A class absent from the reference counts as a category too,
    so predictions of new classes raise the score. `score` is the Jensen–Shannon
    distance (base 2, in [0, 1]). After a drift the recent window becomes the reference.

    Parameters
    ----------
    reference_size
        Labels in the reference window.
    window_size
        Labels in the recent window.
    alpha
        False-alarm probability of one test.
    check_every
        Updates between two tests.

    Examples
    --------
    >>> import random
    >>> rng = random.Random(7)
    >>> stream = rng.choices("abc", k=800) + rng.choices("abc", weights=[6, 1, 1], k=400)
    >>> detector = PredictionDrift(reference_size=300, window_size=200, alpha=0.001)
    >>> for i, label in enumerate(stream):
    ...     detector.update(label)
    ...     if detector.drift_detected:
    ...         print(f"change detected at index {i}, distance {detector.score:.2f}")
    change detected at index 899, distance 0.19
    """

    def __init__(
        self,
        reference_size: int = 500,
        window_size: int = 200,
        alpha: float = 0.001,
        check_every: int = 25,
    ) -> None:
        _check("reference_size", reference_size, 2)
        _check("window_size", window_size, 2)
        _check("alpha", alpha, 0.0, 1.0)
        _check("check_every", check_every, 1)
        super().__init__()
        self.reference_size = reference_size
        self.window_size = window_size
        self.alpha = alpha
        self.check_every = check_every
        self._reset()

    def _reset(self) -> None:
        super()._reset()
        self._reference: Counter[Hashable] = Counter()
        self._window: deque[Hashable] = deque(maxlen=self.window_size)
        self._since_check = 0
        self._score = 0.0
        self._p_value = 1.0

    @property
    def score(self) -> float:
        """Jensen–Shannon distance (base 2) of the last test, in [0, 1]."""
        return self._score

    @property
    def p_value(self) -> float:
        return self._p_value

    def update(self, x: Hashable) -> None:
        """Add one label."""
        self._drift_detected = False
        if sum(self._reference.values()) < self.reference_size:
            self._reference[x] += 1
            return
        self._window.append(x)
        self._since_check += 1
        if len(self._window) < self.window_size or self._since_check < self.check_every:
            return
        self._since_check = 0
        recent = Counter(self._window)
        categories = sorted(set(self._reference) | set(recent), key=repr)
        ref = np.array([self._reference[c] for c in categories], dtype=np.float64)
        new = np.array([recent[c] for c in categories], dtype=np.float64)
        n_ref, n_new = ref.sum(), new.sum()
        divergence = _js_divergence(ref / n_ref, new / n_new, n_ref / (n_ref + n_new))
        self._score = float(np.sqrt(max(0.0, divergence) / np.log(2)))
        freedom = len(categories) - 1
        g_statistic = 2 * (n_ref + n_new) * divergence
        self._p_value = float(stats.chi2.sf(g_statistic, freedom)) if freedom > 0 else 1.0
        if self._p_value < self.alpha:
            self._drift_detected = True
            self._reference = Counter(self._window)
            self._window.clear()


class RateRise(base.BinaryDriftDetector):
    """A rise of a 0/1 rate (errors): one-sided multi-scale exact tests vs the past.

    Every `check_every` updates, the rate of the last `w` outcomes is compared with the
    rate of the `reference_size` outcomes just before them (since the start or the last
    alarm: a sliding reference, so a model whose error fell while it learned is compared
    with its recent, lower error, not with its first steps), for `w` in `window_size`, `window_size / 2`, … down to `min_window`,
    by Fisher's exact test, one-sided: only a *higher* recent rate counts, so a model whose
    error falls while it learns never alarms. Drift is declared when the smallest p-value
    times the number of windows tested (Bonferroni) is below `alpha`; the window that found
    it then becomes the reference.

    Parameters
    ----------
    reference_size
        Most outcomes in the reference.
    window_size
        Outcomes in the longest recent window tested.
    alpha
        False-alarm probability of one check.
    check_every
        Updates between two checks.
    min_window
        Outcomes in the shortest recent window tested (and the least reference a test needs).

    Examples
    --------
    >>> import random
    >>> rng = random.Random(1)
    >>> errors = [rng.random() < 0.1 for _ in range(1000)] + [rng.random() < 0.5 for _ in range(500)]
    >>> detector = RateRise()
    >>> for i, error in enumerate(errors):
    ...     detector.update(error)
    ...     if detector.drift_detected:
    ...         print(f"change detected at index {i}")
    change detected at index 1023
    """

    def __init__(
        self,
        reference_size: int = 1000,
        window_size: int = 256,
        alpha: float = 0.001,
        check_every: int = 16,
        min_window: int = 32,
    ) -> None:
        _check("reference_size", reference_size, 2)
        _check("window_size", window_size, 2)
        _check("alpha", alpha, 0.0, 1.0)
        _check("check_every", check_every, 1)
        _check("min_window", min_window, 2, window_size)
        super().__init__()
        self.reference_size = reference_size
        self.window_size = window_size
        self.alpha = alpha
        self.check_every = check_every
        self.min_window = min_window
        self._reset()

    def _reset(self) -> None:
        super()._reset()
        self._outcomes: deque[int] = deque(maxlen=self.reference_size + self.window_size)
        self._since_check = 0
        self._p_value = 1.0

    @property
    def p_value(self) -> float:
        """Bonferroni-adjusted p-value of the last check."""
        return self._p_value

    def update(self, x: bool | int) -> None:
        """Add one outcome: 1/True (an error) or 0/False."""
        self._drift_detected = False
        self._outcomes.append(int(bool(x)))
        self._since_check += 1
        if self._since_check < self.check_every:
            return
        self._since_check = 0
        outcomes = np.fromiter(self._outcomes, dtype=np.int64)
        available, best_p, found, tested = len(outcomes), 1.0, None, 0
        size = self.window_size
        while size >= self.min_window:
            if available - size >= max(self.min_window, size // 2):
                tested += 1
                recent = int(outcomes[available - size :].sum())
                reference = outcomes[
                    max(0, available - size - self.reference_size) : available - size
                ]
                total = len(reference) + size
                # P(at least `recent` of the errors fall in the recent window | all errors)
                p = float(
                    stats.hypergeom.sf(recent - 1, total, recent + int(reference.sum()), size)
                )
                if p < best_p:
                    best_p, found = p, size
            size //= 2
        if not tested:
            return
        self._p_value = min(1.0, tested * best_p)
        if self._p_value < self.alpha:
            self._drift_detected = True
            recent = list(self._outcomes)[-found:]
            self._outcomes.clear()
            self._outcomes.extend(recent)


class ErrorRateDrift(base.DriftDetector):
    """Concept drift: a rise of the prequential error rate (predict, then learn).

    `update(x)` takes 1 (the model got the example wrong *before* learning it) or
    0. The change test is `detector` (default `RateRise()`: one-sided, so a falling
    error while the model learns is not a drift; any river detector fits, e.g. `HDDMA()`).
    Also keeps the error rate of the last `window_size` examples for dashboards.

    Parameters
    ----------
    detector
        A river drift detector fed with the 0/1 errors; cloned, never mutated.
    window_size
        Examples in the exported error rate.

    Examples
    --------
    >>> import random
    >>> rng = random.Random(1)
    >>> errors = [rng.random() < 0.1 for _ in range(1000)] + [rng.random() < 0.5 for _ in range(500)]
    >>> detector = ErrorRateDrift()
    >>> for i, error in enumerate(errors):
    ...     detector.update(error)
    ...     if detector.drift_detected:
    ...         print(f"change detected at index {i}")
    change detected at index 1023
    """

    def __init__(
        self,
        detector: base.DriftDetector | base.BinaryDriftDetector | None = None,
        window_size: int = 200,
    ) -> None:
        _check("window_size", window_size, 1)
        super().__init__()
        self.detector = detector if detector is not None else RateRise()
        self.window_size = window_size
        self._reset()

    def _reset(self) -> None:
        super()._reset()
        self._detector = self.detector.clone()
        self._errors: deque[int] = deque(maxlen=self.window_size)

    @property
    def error_rate(self) -> float:
        """Error rate over the last `window_size` examples (0 before any)."""
        return sum(self._errors) / len(self._errors) if self._errors else 0.0

    def update(self, x: bool | int) -> None:
        """Add one prequential outcome: 1/True = wrong, 0/False = right."""
        error = int(bool(x))
        self._errors.append(error)
        self._detector.update(error)
        self._drift_detected = self._detector.drift_detected


class NewClass(base.DriftDetector):
    """A label that was never seen before (new-class arrival).

    Parameters
    ----------
    known
        Labels known at the start (e.g. a resumed model's classes).

    Examples
    --------
    >>> detector = NewClass(known=["cat"])
    >>> for label in ["cat", "dog", "cat", "dog", "eel"]:
    ...     detector.update(label)
    ...     if detector.drift_detected:
    ...         print("new class", label)
    new class dog
    new class eel
    >>> detector.classes
    ['cat', 'dog', 'eel']
    """

    def __init__(self, known: Iterable[Hashable] = ()) -> None:
        super().__init__()
        self.known = tuple(known)
        self._reset()

    def _reset(self) -> None:
        super()._reset()
        self._classes: dict[Hashable, None] = dict.fromkeys(self.known)

    @property
    def classes(self) -> list[Hashable]:
        """Labels seen so far, in arrival order."""
        return list(self._classes)

    def update(self, x: Hashable) -> None:
        """Add one label."""
        self._drift_detected = x not in self._classes
        self._classes.setdefault(x)

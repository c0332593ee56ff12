"""Input and prediction drift of the inference service, computed off the request path.

Per adapter, input drift (`EmbeddingDrift`) on a frozen representation of each
request row and prediction drift (`PredictionDrift`) on its predicted class.
Input drift on texts uses the *frozen* token embeddings of the backbone, mean-pooled
(on images: the image average-pooled to 8×8 per channel, `pooled_pixels`): the
served model's pooled embedding moves whenever a new adapter version is swapped
in (LoRA sits inside the encoder), which would read as input drift with no change
in the inputs; the frozen table costs one lookup per token, not a forward pass.
"""

from __future__ import annotations

import copy
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from river import base

from perennial.drift import EmbeddingDrift, PredictionDrift
from perennial.monitoring import BackgroundWorker
from services.inference.metrics import InferenceDriftMetrics

log = logging.getLogger(__name__)
Embedder = Callable[[list], np.ndarray]


@dataclass(frozen=True)
class MonitorConfig:
    """Knobs of a drift monitor.

    queue_size: batches waiting for the background thread; more are dropped (counted).
    max_adapters: adapters monitored at once; beyond, the least recently served one's
    detectors and series are dropped (it starts afresh if it comes back). Each costs about
    (input_reference + 2 × input_window) × the embedding size × 4 bytes (0.8 MB for MiniLM).
    input_reference / input_window / input_alpha: `EmbeddingDrift` windows and false-alarm rate.
    prediction_reference / prediction_window / prediction_alpha: the same for `PredictionDrift`.
    """

    queue_size: int = 1024
    max_adapters: int = 256
    input_reference: int = 256
    input_window: int = 128
    input_alpha: float = 0.001
    prediction_reference: int = 500
    prediction_window: int = 200
    prediction_alpha: float = 0.001

    def __post_init__(self) -> None:
        for name in (
            "queue_size",
            "max_adapters",
            "input_reference",
            "input_window",
            "prediction_reference",
            "prediction_window",
        ):
            if getattr(self, name) < 2:
                raise ValueError(f"{name} must be >= 2, got {getattr(self, name)}")
        for name in ("input_alpha", "prediction_alpha"):
            if not 0 < getattr(self, name) < 1:
                raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)}")


def frozen_token_embedder(backbone) -> Embedder:
    """Texts → mean of the backbone's frozen input token embeddings (no PET, no forward pass).

    Tokenizes with the fast tokenizer's Rust backend directly, truncated like the backbone
    and unpadded: the `transformers` call around it cost more than the rest of a drift update
    for the one-text batches of light traffic (and holds the GIL the request threads need).
    Uses its own copy of the tokenizer: a fast tokenizer shared with request threads can fail
    with "Already borrowed" when called from two threads at once.
    """
    table = backbone.encoder.get_input_embeddings().weight.detach().float().numpy()
    tokenizer = copy.deepcopy(backbone.tokenizer.backend_tokenizer)
    tokenizer.no_padding()
    tokenizer.enable_truncation(backbone.max_length)

    def embed(texts: list[str]) -> np.ndarray:
        return np.stack([table[e.ids].mean(0) for e in tokenizer.encode_batch(texts)])

    return embed


def pooled_pixels(images: list[torch.Tensor]) -> np.ndarray:
    """Images [C, H, W] → their 8×8 average-pooled pixels per channel (no forward pass)."""
    batch = torch.stack(images).float()
    return torch.nn.functional.adaptive_avg_pool2d(batch, 8).flatten(1).numpy()


@dataclass
class _InferenceState:
    input: base.DriftDetector
    prediction: base.DriftDetector


class InferenceDriftMonitor:
    """Input and prediction drift per adapter; `submit` is all the request path pays."""

    SIGNALS = ("input", "prediction")

    def __init__(
        self,
        metrics: InferenceDriftMetrics,
        embed: Embedder,
        config: MonitorConfig = MonitorConfig(),
    ) -> None:
        self.metrics = metrics
        self.embed = embed
        self.config = config
        self._states: OrderedDict[str, _InferenceState] = OrderedDict()  # least recent first
        self._worker = BackgroundWorker(
            "drift-inference",
            config.queue_size,
            lambda adapter: metrics.dropped.labels(adapter).inc(),
        )

    def submit(self, adapter: str, texts: Sequence, labels: Sequence[str]) -> bool:
        """Queue one answered batch (texts or images, and predicted labels); False if dropped."""
        return self._worker.submit(adapter, self._update, list(texts), list(labels))

    def drain(self, timeout: float | None = None) -> bool:
        return self._worker.drain(timeout)

    def _state(self, adapter: str) -> _InferenceState:
        state = self._states.get(adapter)
        if state is not None:
            self._states.move_to_end(adapter)
        else:
            while len(self._states) >= self.config.max_adapters:
                self._forget(next(iter(self._states)))
            c = self.config
            state = self._states[adapter] = _InferenceState(
                EmbeddingDrift(
                    reference_size=c.input_reference,
                    window_size=c.input_window,
                    alpha=c.input_alpha,
                    min_window=min(16, c.input_window),
                ),
                PredictionDrift(
                    reference_size=c.prediction_reference,
                    window_size=c.prediction_window,
                    alpha=c.prediction_alpha,
                ),
            )
            for (
                signal
            ) in self.SIGNALS:  # series exist from the start, so increase() sees the first 0→1
                self.metrics.detections.labels(adapter, signal)
                self.metrics.score.labels(adapter, signal).set(0.0)
                self.metrics.p_value.labels(adapter, signal).set(1.0)
            self.metrics.dropped.labels(adapter)
        return state

    def _forget(self, adapter: str) -> None:
        del self._states[adapter]
        m = self.metrics
        for family in (m.detections, m.score, m.p_value, m.observations, m.dropped):
            family.remove_by_labels({"adapter": adapter})
        log.info("drift state dropped", extra={"fields": {"adapter": adapter}})

    def _update(self, adapter: str, texts: list[str], labels: list[str]) -> None:
        started = time.perf_counter()
        state = self._state(adapter)
        for vector, label in zip(self.embed(texts), labels, strict=True):
            for signal, detector, x in (
                ("input", state.input, vector),
                ("prediction", state.prediction, label),
            ):
                detector.update(x)
                if detector.drift_detected:
                    self.metrics.detections.labels(adapter, signal).inc()
                    log.warning(
                        "drift detected",
                        extra={
                            "fields": {
                                "adapter": adapter,
                                "signal": signal,
                                "score": getattr(detector, "score", None),
                            }
                        },
                    )
        for signal, detector in (("input", state.input), ("prediction", state.prediction)):
            if hasattr(detector, "score"):
                self.metrics.score.labels(adapter, signal).set(detector.score)
                self.metrics.p_value.labels(adapter, signal).set(detector.p_value)
        self.metrics.observations.labels(adapter).inc(len(texts))
        self.metrics.update_duration.observe(time.perf_counter() - started)

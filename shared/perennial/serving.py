"""The inference data plane: adapters loaded from Redis, hot-swapped, queried.

Transport-agnostic: the gRPC servicer only converts protobuf to these calls.
A served version is immutable (`ServedVersion`); a swap replaces the reference
in one assignment, so a request that already holds the old version finishes on
it. New versions are fetched, sha256-verified and built on the watcher thread,
never on the request path. A periodic check of the Redis head covers a missed
pub/sub message.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import torch

from perennial.backbone import TextBackbone
from perennial.errors import InvalidInput, NotFound
from perennial.learner import Ensemble
from perennial.metrics import InferenceMetrics
from perennial.pet import LoRAConfig
from perennial.store import IntegrityError, Manifest, SnapshotStore, from_safetensors

log = logging.getLogger("perennial.inference")
MAX_BATCH = 256
PINNED_VERSIONS = 8  # explicitly requested older versions kept in memory
MAX_PARENT_HOPS = 64  # manifests walked back to account freshness of skipped versions


@dataclass(frozen=True)
class ServedVersion:
    manifest: Manifest
    model: Ensemble

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def classes(self) -> list[str]:
        return self.model.classes


@dataclass(frozen=True)
class Prediction:
    served: ServedVersion
    scores: torch.Tensor  # [N, C]

    @property
    def labels(self) -> list[str]:
        return [self.served.classes[i] for i in self.scores.argmax(-1).tolist()]


class DataPlane:
    def __init__(
        self,
        backbone: TextBackbone,
        store: SnapshotStore,
        metrics: InferenceMetrics,
        reconcile_seconds: float = 10.0,
    ) -> None:
        self.backbone = backbone
        self.store = store
        self.metrics = metrics
        self.reconcile_seconds = reconcile_seconds
        self._current: dict[str, ServedVersion] = {}
        self._pinned: OrderedDict[tuple[str, str], ServedVersion] = OrderedDict()
        self._load_lock = threading.Lock()

    # -- requests ----------------------------------------------------------------------
    def get(self, adapter: str, version: str = "") -> ServedVersion:
        current = self._current.get(adapter)
        if not version:
            return current or self._first_load(adapter)
        if current and current.version == version:
            return current
        pinned = self._pinned.get((adapter, version))
        if pinned is None:
            pinned = self._build(adapter, version)
            self._pinned[(adapter, version)] = pinned
            while len(self._pinned) > PINNED_VERSIONS:
                self._pinned.popitem(last=False)
        return pinned

    def infer(self, adapter: str, version: str, texts: list[str]) -> Prediction:
        if not texts:
            raise InvalidInput("input 'text' is empty; send at least one string")
        if len(texts) > MAX_BATCH:
            raise InvalidInput(f"batch of {len(texts)} texts exceeds the limit of {MAX_BATCH}; split it")
        if any(not text.strip() for text in texts):
            raise InvalidInput("input 'text' contains an empty string")
        served = self.get(adapter, version)
        with torch.inference_mode():
            scores = served.model.scores(self.backbone, texts)
        return Prediction(served, scores)

    def _first_load(self, adapter: str) -> ServedVersion:
        with self._load_lock:
            if adapter not in self._current:
                head = self.store.head(adapter)
                if head is None:
                    raise NotFound(f"adapter {adapter!r} has no snapshot yet")
                self._swap(adapter, self._build(adapter, head.version))
            return self._current[adapter]

    def _build(self, adapter: str, version: str) -> ServedVersion:
        try:
            manifest, blob = self.store.fetch(adapter, version)
        except KeyError as error:
            raise NotFound(str(error.args[0])) from error
        tensors, metadata = from_safetensors(blob)
        config = LoRAConfig.from_dict(json.loads(metadata["learner"])["lora"])
        model = Ensemble.from_tensors(self.backbone, config, tensors, list(manifest.classes))
        return ServedVersion(manifest, model)

    def _swap(self, adapter: str, new: ServedVersion) -> None:
        old = self._current.get(adapter)
        newly_served = self._manifests_since(new.manifest, old.manifest if old else None)
        now = time.time()
        for manifest in newly_served:
            for event_time in manifest.event_times:
                self.metrics.freshness.labels(adapter).observe(max(0.0, now - event_time))
        self.metrics.swaps.labels(adapter).inc()
        self.metrics.served_sequence.labels(adapter).set(new.manifest.sequence)
        self._current[adapter] = new  # the swap: one reference assignment
        log.info("serving version", extra={"fields": {
            "adapter": adapter, "version": new.version, "previous": old.version if old else None}})

    def _manifests_since(self, newest: Manifest, served: Manifest | None) -> list[Manifest]:
        """`newest` and its ancestors back to (not including) the version served before."""
        chain, manifest = [], newest
        while manifest and len(chain) < MAX_PARENT_HOPS:
            if served and manifest.sequence <= served.sequence:
                break
            chain.append(manifest)
            manifest = self.store.manifest(manifest.adapter, manifest.parent) if manifest.parent else None
        return chain

    # -- updates -------------------------------------------------------------------------
    def refresh(self, adapter: str, version: str | None = None) -> bool:
        """Swap in `version` (default: the head) if newer than what is served; True if swapped."""
        current = self._current.get(adapter)
        if current is None:
            return False  # not requested yet: it loads on first request
        manifest = self.store.manifest(adapter, version) if version else self.store.head(adapter)
        if manifest is None or manifest.sequence <= current.manifest.sequence:
            return False
        started = time.perf_counter()
        try:
            new = self._build(adapter, manifest.version)
        except IntegrityError as error:
            self.metrics.verification_failures.labels(adapter).inc()
            log.error("rejected a snapshot", extra={"fields": {"adapter": adapter, "error": str(error)}})
            return False
        self.metrics.swap_duration.observe(time.perf_counter() - started)
        self._swap(adapter, new)
        return True

    def watch(self, stop: threading.Event) -> None:
        """Apply announcements until `stop`; reconcile with the Redis heads periodically."""
        last_reconcile = time.monotonic()
        for announcement in self.store.announcements():
            if stop.is_set():
                return
            try:
                if announcement is not None:
                    self.refresh(*announcement)
                if time.monotonic() - last_reconcile >= self.reconcile_seconds:
                    last_reconcile = time.monotonic()
                    for adapter in list(self._current):
                        self.refresh(adapter)
            except Exception:  # a bad snapshot or a Redis hiccup must not stop the watcher
                log.exception("update failed; will retry at the next announcement or reconcile")

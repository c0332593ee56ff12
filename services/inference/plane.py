"""The inference data plane: many adapters on one frozen backbone, hot-swapped.

Transport-agnostic: the gRPC servicer converts protobuf to these calls, and the
batcher (`services.inference.batching`) groups requests into `model.predict` calls.

- **Versions are immutable.** A `ServedVersion` is one adapter version's model; the
  resident set is an LRU keyed by `(adapter, version)` and bounded by a memory
  budget (`memory_bytes`). `current` maps an adapter to the version its head
  requests get — one dict assignment is the swap, so a request that already holds
  the old `ServedVersion` finishes on it.
- **Loading**: an adapter is fetched from Redis on its first request (or a pinned
  version on the first request naming it), on the request thread; never on the
  batch thread. An adapter with no snapshot is remembered for a second
  (`MISSING_SECONDS`), so unknown names cannot turn every request into a Redis call.
- **Updates**: on an announcement the watcher thread fetches, verifies sha256 and
  builds the new version, then swaps; a periodic check of the Redis heads covers
  a missed pub/sub message. A failed verification keeps the old version.
- **Corruption**: a version whose manifest is malformed, whose blob fails its sha256 or
  does not decode is never served; it is remembered (`_corrupted`) and counted once in
  `verification_failures_total{reason}`, and a request naming it gets DATA_LOSS. A head
  that is corrupted keeps the version already served or, on a cold replica, serves the
  newest retained version that verifies; with none, requests get DATA_LOSS saying why.
- **Names**: a model name that is not an adapter id, or a version that is not a version
  id, is NOT_FOUND without a Redis call (nor a key built from it).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from perennial.backbone import TextBackbone
from perennial.codec import TEXT, InputSpec, valid_adapter_id
from perennial.errors import DataLoss, FailedPrecondition, InvalidInput, NotFound
from perennial.grpc_errors import STATUS
from perennial.memory import release_freed_memory
from perennial.store import CORRUPTION_REASONS, IntegrityError, Manifest, SnapshotStore
from services.inference.metrics import InferenceMetrics
from services.inference.model import Prediction, ServedVersion, load_version, predict

log = logging.getLogger(__name__)
MAX_PARENT_HOPS = 64  # manifests walked back to account freshness of skipped versions
MISSING_SECONDS = (
    1.0  # "adapter has no snapshot" is remembered this long (unknown names cannot flood Redis)
)
MAX_MISSING = 10_000
MAX_CORRUPTED = 10_000  # corrupted versions remembered (their names are immutable)
VERSION_ID = re.compile(r"v[0-9]{6,}-[0-9a-f]{12}")
DOMAIN_ERRORS = tuple(STATUS)  # raised on purpose with their own status; never "corrupted"


@dataclass(frozen=True)
class ServingConfig:
    """Limits of the data plane.

    memory_bytes: budget of resident adapter versions (LRU beyond it; the backbone is not counted).
    max_text_chars: longest accepted text.
    max_rows: most rows one request may carry (the batcher's max batch size).
    reconcile_seconds: how often the watcher compares served versions with the Redis heads.
    inputs: what the backbone takes: texts, or FP32 images of one shape (C, H, W).
    """

    memory_bytes: int = 1 << 30
    max_text_chars: int = 4096
    max_rows: int = 64
    reconcile_seconds: float = 10.0
    inputs: InputSpec = TEXT

    def __post_init__(self) -> None:
        for name in ("memory_bytes", "max_text_chars", "max_rows"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.reconcile_seconds <= 0:
            raise ValueError(f"reconcile_seconds must be > 0, got {self.reconcile_seconds}")


@dataclass(frozen=True)
class ServerConfig:
    """Limits of both front ends, gRPC and REST (each has its own threads).

    workers: request threads, also the most requests in flight (beyond: gRPC RESOURCE_EXHAUSTED,
        HTTP 429).
    max_message_bytes: largest request or gRPC reply; REST counts the body after decompression
        (beyond: HTTP 413)."""

    workers: int = 128
    max_message_bytes: int = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes must be >= 1024, got {self.max_message_bytes}")


class DataPlane:
    """Adapter versions resident on one backbone: lookup, load, LRU eviction, hot swap."""

    def __init__(
        self,
        backbone: TextBackbone,
        store: SnapshotStore,
        metrics: InferenceMetrics,
        config: ServingConfig = ServingConfig(),
    ) -> None:
        if (config.inputs.kind == "text") != hasattr(backbone, "tokenize"):
            raise ValueError(f"{type(backbone).__name__} does not take {config.inputs.kind} inputs")
        self.backbone = backbone
        self.store = store
        self.metrics = metrics
        self.config = config
        self._resident: OrderedDict[tuple[str, str], ServedVersion] = OrderedDict()  # LRU order
        self._current: dict[str, str] = {}  # adapter -> version answered when none is named
        self._bytes = 0
        self._lock = (
            threading.Lock()
        )  # guards _resident, _current, _bytes (cheap, never held across I/O)
        self._load_lock = threading.Lock()  # one load from Redis at a time
        self._missing: dict[
            str, float
        ] = {}  # adapter -> monotonic time until which it is known absent
        self._corrupted: dict[tuple[str, str], str] = {}  # (adapter, version) -> why

    # -- requests ----------------------------------------------------------------------------
    def validate(self, rows: list) -> None:
        """Reject an empty or oversized request, blank or too long texts (images: only the row count)."""
        if not rows:
            raise InvalidInput("the input is empty; send at least one row")
        if len(rows) > self.config.max_rows:
            raise InvalidInput(
                f"request has {len(rows)} rows; the limit is {self.config.max_rows}: split it"
            )
        for index, text in enumerate(rows):
            if not isinstance(text, str):
                continue
            if not text.strip():
                raise InvalidInput(f"input 'text' element {index} is empty or blank")
            if len(text) > self.config.max_text_chars:
                raise InvalidInput(
                    f"input 'text' element {index} has {len(text)} characters; "
                    f"the limit is {self.config.max_text_chars}"
                )

    def get(self, adapter: str, version: str = "") -> ServedVersion:
        """The version to answer with (`version` empty: the current head), loading it if needed."""
        if not valid_adapter_id(adapter):
            raise NotFound(
                f"no adapter {adapter[:80]!r}: adapter ids are lowercase letters, digits, '.', '_', '-'"
            )
        if version and not VERSION_ID.fullmatch(version):
            raise NotFound(f"adapter {adapter!r} has no version {version[:80]!r}")
        served = self._lookup(adapter, version)
        if served is not None:
            return served
        if not version and self._missing.get(adapter, 0.0) > time.monotonic():
            raise NotFound(f"adapter {adapter!r} has no snapshot yet; check the model name")
        with self._load_lock:
            served = self._lookup(adapter, version)  # another thread may have loaded it meanwhile
            if served is not None:
                return served
            if version:
                served = self._build(adapter, version)
                self._admit(served)
                return served
            head = self.store.pointer(adapter, "head")
            if head is None:
                if len(self._missing) >= MAX_MISSING:
                    self._missing.clear()
                self._missing[adapter] = time.monotonic() + MISSING_SECONDS
                raise NotFound(f"adapter {adapter!r} has no snapshot yet; check the model name")
            try:
                served = self._build(adapter, head)
            except DataLoss as error:
                served = self._newest_valid(adapter, head, error)
            self._swap(served)
            return served

    def _newest_valid(self, adapter: str, head: str, error: DataLoss) -> ServedVersion:
        """A cold start on a corrupted head: the newest retained version that verifies."""
        for version in reversed(self.store.versions(adapter)):
            if version == head or (adapter, version) in self._corrupted:
                continue
            try:
                served = self._build(adapter, version)
            except (DataLoss, NotFound):  # corrupted too, or pruned meanwhile
                continue
            log.warning(
                "head is corrupted; serving an older version",
                extra={"fields": {"adapter": adapter, "head": head, "version": version}},
            )
            return served
        raise DataLoss(f"{error}; no retained version of adapter {adapter!r} verifies") from error

    def infer(self, adapter: str, version: str, texts: list[str]) -> Prediction:
        """Unbatched convenience: validate, resolve, run."""
        self.validate(texts)
        served = self.get(adapter, version)
        return Prediction(served, predict(self.backbone, [(served, texts)])[0])

    def _lookup(self, adapter: str, version: str) -> ServedVersion | None:
        with self._lock:
            key = (adapter, version or self._current.get(adapter, ""))
            served = self._resident.get(key)
            if served is not None:
                self._resident.move_to_end(key)
            return served

    def resident(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._resident)

    def current_version(self, adapter: str) -> str | None:
        return self._current.get(adapter)

    # -- building, admitting, swapping --------------------------------------------------------
    def _build(self, adapter: str, version: str) -> ServedVersion:
        """Fetch, verify and build a version; `DataLoss` (counted once per version) if it is bad."""
        known = self._corrupted.get((adapter, version))
        if known is not None:
            raise DataLoss(known)
        try:
            manifest, blob = self.store.fetch(adapter, version)
            try:
                return load_version(self.backbone, manifest, blob)
            except DOMAIN_ERRORS:
                raise  # e.g. a snapshot of another backbone runtime: not corruption
            except Exception as error:  # noqa: BLE001 - verified bytes that do not decode
                raise IntegrityError(
                    f"not a loadable snapshot: {type(error).__name__}: {error}"[:300], "decode"
                ) from error
        except IntegrityError as error:
            message = (
                f"adapter {adapter!r} version {version} is corrupted ({error.reason}) and is "
                f"not served: {error}"
            )
            if len(self._corrupted) >= MAX_CORRUPTED:
                self._corrupted.clear()
            self._corrupted[(adapter, version)] = message
            self.metrics.verification_failures.labels(adapter, error.reason).inc()
            log.error(
                "rejected a snapshot",
                extra={"fields": {"adapter": adapter, "version": version, "error": str(error)}},
            )
            raise DataLoss(message) from error

    def _admit(self, served: ServedVersion, current: bool = False) -> None:
        """Make `served` resident — with `current`, also the adapter's default, in the same step
        as its predecessor leaves — then evict LRU entries beyond the budget."""
        with self._lock:
            key = (served.adapter, served.version)
            if key not in self._resident:
                self._resident[key] = served
                self._bytes += served.nbytes
            if current:
                replaces = self._current.get(served.adapter)
                self._current[served.adapter] = served.version  # the swap: one reference assignment
                if replaces and replaces != served.version:
                    old = self._resident.pop((served.adapter, replaces), None)
                    self._bytes -= old.nbytes if old else 0
            evicted = []
            while self._bytes > self.config.memory_bytes and len(self._resident) > 1:
                old_key, old = next(iter(self._resident.items()))
                if old_key == key:
                    break
                del self._resident[old_key]
                self._bytes -= old.nbytes
                if self._current.get(old_key[0]) == old_key[1]:
                    del self._current[old_key[0]]
                    evicted.append(old_key)
            self.metrics.resident_adapters.set(len(self._resident))
            self.metrics.resident_bytes.set(self._bytes)
        for adapter, version in evicted:
            self.metrics.evictions.inc()
            self.metrics.version_info.remove(adapter, version)  # no-op if absent
        if evicted:
            release_freed_memory()

    def _swap(self, new: ServedVersion) -> None:
        adapter = new.adapter
        old_version = self._current.get(adapter)
        old = self._resident.get((adapter, old_version)) if old_version else None
        newly_served = self._manifests_since(new.manifest, old.manifest if old else None)
        self._admit(new, current=True)
        now = time.time()
        for manifest in newly_served:
            for event_time in manifest.event_times:
                self.metrics.freshness.labels(adapter).observe(max(0.0, now - event_time))
        self.metrics.swaps.labels(adapter).inc()
        self.metrics.served_sequence.labels(adapter).set(new.manifest.sequence)
        if old_version:
            self.metrics.version_info.remove(adapter, old_version)
        self.metrics.version_info.labels(adapter, new.version).set(1)
        for reason in CORRUPTION_REASONS:  # the series exist (at 0) before the first rejection
            self.metrics.verification_failures.labels(adapter, reason)
        log.info(
            "serving version",
            extra={"fields": {"adapter": adapter, "version": new.version, "previous": old_version}},
        )

    def _manifests_since(self, newest: Manifest, served: Manifest | None) -> list[Manifest]:
        """`newest` and its ancestors back to (not including) the version served before.

        On a first load only `newest` counts (no Redis walk on the request path)."""
        if served is None:
            return [newest]
        chain: list[Manifest] = []
        manifest: Manifest | None = newest
        while manifest and len(chain) < MAX_PARENT_HOPS and manifest.sequence > served.sequence:
            chain.append(manifest)
            try:
                manifest = (
                    self.store.manifest(manifest.adapter, manifest.parent)
                    if manifest.parent
                    else None
                )
            except IntegrityError:
                manifest = None  # a corrupted ancestor ends the walk; the swap goes on
        return chain

    # -- updates (watcher thread) ---------------------------------------------------------------
    def refresh(self, adapter: str, version: str | None = None) -> bool:
        """Serve the adapter's Redis head if it is not what is served; True if swapped.

        The head, not the announced `version`, decides: a replica that falls behind skips
        straight to the newest head instead of building every version in between, and a
        rollback (a head with a lower sequence number) is followed too.
        """
        self._missing.pop(adapter, None)  # announced: it exists now
        current_version = self._current.get(adapter)
        if current_version is None:
            with self._load_lock:  # a first load under way may have read the head before this one
                current_version = self._current.get(adapter)
        current = self._resident.get((adapter, current_version)) if current_version else None
        if current is None:
            return False  # not resident: it loads on its next request
        head = self.store.pointer(adapter, "head")
        if head is None or head == current.manifest.version:
            return False
        started = time.perf_counter()
        try:
            new = self._build(adapter, head)
        except DataLoss:
            return False  # counted once in `_build`; the served version stays
        except FailedPrecondition as error:  # e.g. made on another backbone: the served one stays
            log.error(
                "not serving the new head",
                extra={"fields": {"adapter": adapter, "version": head, "error": str(error)}},
            )
            return False
        self.metrics.swap_duration.observe(time.perf_counter() - started)
        with self._load_lock:  # not concurrently with a first load of the same adapter
            if self._current.get(adapter) == current_version:
                self._swap(new)
        return True

    def reconcile(self) -> int:
        """Compare every resident adapter with its Redis head; returns the number swapped."""
        return sum(self.refresh(adapter) for adapter in list(self._current))

    def watch(self, stop: threading.Event) -> None:
        """Apply announcements until `stop`; reconcile with the Redis heads periodically.

        A lost subscription (Redis restarted, a Sentinel failover) is opened again, and the
        reconcile that follows catches up with what was announced meanwhile."""
        last_reconcile = time.monotonic()
        while not stop.is_set():
            try:
                for announcement in self.store.announcements():
                    if stop.is_set():
                        return
                    try:
                        if announcement is not None:
                            self.refresh(*announcement)
                        if time.monotonic() - last_reconcile >= self.config.reconcile_seconds:
                            last_reconcile = time.monotonic()
                            self.reconcile()
                    except Exception:  # a bad snapshot or a Redis hiccup must not stop the watcher
                        log.exception(
                            "update failed; will retry at the next announcement or reconcile"
                        )
            except Exception:  # the subscription itself failed
                log.exception("subscription lost; subscribing again")
                last_reconcile = 0.0  # reconcile as soon as it is back
                stop.wait(1.0)

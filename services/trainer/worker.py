"""The trainer core: per-adapter learners, snapshots, the guardrail — on one thread.

All adapter state lives on the training thread. The Kafka poll loop
(`ingest.py`) hands it decoded records through an inbox; the control API and
rebalance callbacks hand it commands (`submit`), which run between steps. So the
consumer keeps its group membership however long a step takes, and no state is
shared between threads except the inbox and the committed-offset hand-back.

Exactly-once effect per example: every adapter's manifest records, per
partition, the offset after the last record it consumed, and a record below its
adapter's manifest offset is skipped. The poll loop commits to Kafka only
offsets below which every record is in some snapshot (`safe_offsets`), so a
crash anywhere re-reads but never re-applies or loses an example.

Micro-batches are cut by size, so a replay after a crash sees the same batches
as the uninterrupted run; a partial batch is flushed once its oldest record has waited
`batch_wait_seconds` (set it to inf for strict determinism).

Two cadences (docs/TRAINER.md, "Snapshots and checkpoints"): every `snapshot_every_seconds`
with something new learned, a version with a small serving blob (for the default learner the
solved head and the PET) is published; every `checkpoint_every_seconds` (and on shutdown,
revocation, eviction) the version also carries the learner's whole state. Kafka commits and a
restart follow the checkpoints: a restarted trainer resumes from the newest checkpoint of its
lineage and re-learns what came after it, publishing again only once it has passed `latest`.

Failure behaviour (docs/TRAINER.md, "Limits and failures"): a corrupted `latest`
falls back to the newest version that verifies and re-reads the partition from its
offsets (`_rewind`; records already in flight are dropped by their epoch stamp, so
none is applied twice); a write fenced out by another trainer does the same from
the other trainer's snapshot; at most `max_adapters` adapters stay in memory (the
least recently used idle one is snapshotted, then dropped, and reloaded from that
snapshot on demand); labels beyond `max_classes` are dead letters.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import redis
import torch
from opentelemetry import trace

from perennial import tracing
from perennial.backbone import TextBackbone
from perennial.codec import Example, encode
from perennial.errors import FailedPrecondition, InvalidInput, NotFound, NotReady
from perennial.grpc_errors import STATUS
from perennial.learners import (
    FirstSessionLearner,
    FirstSessionPredictor,
    Learner,
    LearnerConfig,
    build_learner,
    load_predictor,
    restore_learner,
    serving_state,
)
from perennial.memory import release_freed_memory
from perennial.monitoring import NoMonitor
from perennial.store import (
    IntegrityError,
    Manifest,
    SnapshotStore,
    StaleParent,
    from_safetensors,
    to_safetensors,
)
from services.trainer.deadletter import DeadLetterFailed, DeadLetters, Rejected
from services.trainer.events import EventPublisher
from services.trainer.guardrail import FeatureCache, HoldoutReservoir, judge
from services.trainer.metrics import TrainerMetrics
from services.trainer.monitor import TrainerDriftMonitor
from services.trainer.settings import TrainerSettings

log = logging.getLogger(__name__)
RETRY_SECONDS = 2.0  # after a failed snapshot (Redis away), try again this often
INCOMPATIBLE_SECONDS = 10.0  # an adapter whose snapshot is refused is refused again without Redis
MAX_INCOMPATIBLE = 1000


@dataclass(frozen=True)
class Incoming:
    """A decoded record on its way to the training thread."""

    partition: str  # "topic:partition"
    offset: int
    example: Example
    link: trace.Link | None = None  # the producer's span, when the record carried its context
    epoch: int = 0  # rewinds of the partition before it was read (older epochs are dropped)
    received: float = field(default_factory=time.monotonic)  # when the poll loop decoded it


@dataclass
class AdapterState:
    """One adapter's learner and what it has consumed but not yet snapshotted."""

    learner: Learner
    latest: Manifest | None  # newest version written: the lineage training continues
    head: Manifest | None  # version served
    applied: dict[str, int]  # partition -> next offset to consume
    class_counts: dict[str, int]
    reservoir: HoldoutReservoir
    checkpoint: Manifest | None = None  # newest version holding this learner's whole state
    last_checkpoint: float = 0.0  # monotonic time of that checkpoint (0: none in this process)
    # Restored from a checkpoint older than `latest`: publish nothing until the re-read passes
    # these offsets, so a served version never holds less than the one before it.
    catch_up: dict[str, int] = field(default_factory=dict)
    pending: deque[Incoming] = field(default_factory=deque)
    new_event_times: list[float] = field(default_factory=list)
    paused: bool = False
    held_reason: str = ""
    last_error: str = ""
    # Micro-batch spans not yet in a snapshot (a span keeps at most 128 links).
    learned: deque[trace.Link] = field(default_factory=lambda: deque(maxlen=128))
    replaces: str | None = None  # a corrupted `latest` the next write supersedes
    recovering: dict[str, int] = field(default_factory=dict)  # partition -> re-read up to
    routed: dict[str, int] = field(default_factory=dict)  # partition -> next offset to route
    last_used: float = 0.0

    pet_swapped: bool = False  # an FSA warm-up finished outside learning: publish it

    @property
    def dirty(self) -> bool:
        return bool(self.new_event_times) or self.pet_swapped

    @property
    def uncheckpointed(self) -> bool:
        """Learned records that no checkpoint holds (a restart would re-read them)."""
        held = self.checkpoint.offsets if self.checkpoint else {}
        return any(offset > held.get(p, 0) for p, offset in self.applied.items())

    def caught_up(self) -> bool:
        if any(self.applied.get(p, 0) < offset for p, offset in self.catch_up.items()):
            return False
        if self.catch_up and self.applied == self.catch_up:
            self.new_event_times = []  # exactly what `latest` holds: nothing new to publish
        self.catch_up = {}
        return True


class Trainer:
    """Every adapter's learner, its snapshots and the guardrail, owned by the training thread."""

    def __init__(
        self,
        settings: TrainerSettings,
        backbone: TextBackbone,
        store: SnapshotStore,
        metrics: TrainerMetrics,
        events: EventPublisher,
        learner_config: LearnerConfig | None = None,
        drift: TrainerDriftMonitor | NoMonitor | None = None,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self.settings = settings
        self.tracer = tracer or tracing.tracer()  # no-op unless tracing is configured
        self.drift = (
            drift if drift is not None else NoMonitor()
        )  # concept drift, new classes, forgetting
        self.backbone = backbone
        self.store = store
        self.metrics = metrics
        self.events = events
        self.learner_config = learner_config or settings.learner_config()
        self.adapters: dict[str, AdapterState] = {}
        self._inbox: queue.Queue[Incoming | tuple[Callable[[], Any], Future]] = queue.Queue()
        self._parked: deque[Incoming] = deque()  # received, waiting for Redis to load their adapter
        self._received: dict[str, int] = {}  # partition -> offset after the newest record received
        self._safe: dict[str, int] = {}
        self._safe_lock = threading.Lock()
        self._head_cache: dict[tuple[str, str], Callable[[list[str]], list[str]]] = {}
        self._holdout_features = FeatureCache()
        self._last_snapshot = time.monotonic()
        self._since_snapshot = 0
        self._snapshot_failed = False
        self._stopped = False  # the training thread has finished
        self._learn_seconds = self._prequential_seconds = 0.0
        self._stopped_lock = threading.Lock()
        self.dead_letters: DeadLetters | None = None  # set by the poll loop's owner
        # Offsets of other topics every manifest records (the prediction log, for the feedback
        # join: where a restarted trainer reads it again from); set by the poll loop's owner.
        self.side_offsets: Callable[[], dict[str, int]] = dict
        self.heartbeat = time.monotonic()  # the watchdog reads it: the training thread is alive
        self._held: dict[str, int] = {}  # partition -> records in memory, not yet learned
        self._held_lock = threading.Lock()
        self._incompatible: dict[str, tuple[str, float]] = {}  # adapter -> (why, until when)
        self._epochs: dict[str, int] = {}  # partition -> the epoch its records must carry
        self._epoch_counter = 0  # one sequence for every partition and both threads
        self._rewinds: dict[str, tuple[int, int]] = {}  # partition -> (epoch, offset) to seek
        self._rewinds_lock = threading.Lock()

    # -- called from other threads --------------------------------------------------------
    def deliver(self, records: list[Incoming]) -> None:
        with self._held_lock:
            for record in records:
                self._held[record.partition] = self._held.get(record.partition, 0) + 1
        for record in records:
            self._inbox.put(record)

    def held(self, partition: str) -> int:
        """Records of `partition` received but not yet learned, skipped or dead-lettered."""
        with self._held_lock:
            return self._held.get(partition, 0)

    def new_epoch(self) -> int:
        """A fresh epoch number, greater than every one handed out before (any thread)."""
        with self._rewinds_lock:
            self._epoch_counter += 1
            return self._epoch_counter

    def take_rewinds(self) -> dict[str, tuple[int, int]]:
        """Partitions to seek back, as {partition: (epoch, offset)} (for the poll loop)."""
        with self._rewinds_lock:
            rewinds, self._rewinds = self._rewinds, {}
        return rewinds

    def submit(self, command: Callable[[], Any]) -> Future:
        """Run `command` on the training thread between steps; its result arrives in the future.

        Once the training thread has finished, commands run at once on the caller's thread
        (e.g. the rebalance callback when the consumer closes on shutdown).
        """
        future: Future = Future()
        with self._stopped_lock:
            if not self._stopped:
                self._inbox.put((command, future))
                return future
        try:
            future.set_result(command())
        except Exception as error:  # noqa: BLE001 - the caller gets it
            future.set_exception(error)
        return future

    def backlog(self) -> int:
        """Records received but not yet trained (for back-pressure)."""
        return (
            self._inbox.qsize()
            + len(self._parked)
            + sum(len(s.pending) for s in list(self.adapters.values()))
        )

    def safe_offsets(self) -> dict[str, int]:
        """Per partition, an offset below which every record is in a snapshot (to commit)."""
        with self._safe_lock:
            return dict(self._safe)

    # -- the training thread ----------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                self.work_once()
            self.snapshot_all(checkpoint=True)
        except Exception:
            log.exception("the training thread died; the watchdog reports NOT_SERVING")
            raise
        finally:
            with self._stopped_lock:
                self._stopped = True
            for state in self.adapters.values():
                _cancel_warm_up(state)  # checkpointed above: a restart runs it again
            self._drain(timeout=0)  # commands submitted meanwhile still get an answer

    def work_once(self, timeout: float = 0.2) -> None:
        self.heartbeat = time.monotonic()
        settings = self.settings
        self._drain(
            max(0.01, min(timeout, settings.batch_wait_seconds, settings.snapshot_every_seconds))
        )
        self._route_parked()
        self._swap_warm_ups()
        self._train_ready()
        since = time.monotonic() - self._last_snapshot
        if since >= self.settings.snapshot_every_seconds or (
            self._snapshot_failed and since >= RETRY_SECONDS
        ):
            self.snapshot_all(timed=True)

    def _drain(self, timeout: float) -> None:
        try:
            item = self._inbox.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            if isinstance(item, Incoming):
                if item.epoch < self._epochs.get(item.partition, 0):
                    self._done(item)  # read before a rewind: it comes again
                else:
                    self._parked.append(item)
                    self._received[item.partition] = max(
                        self._received.get(item.partition, 0), item.offset + 1
                    )
            else:
                command, future = item
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(command())
                    except Exception as error:  # noqa: BLE001 - the caller gets it
                        future.set_exception(error)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _route_parked(self) -> None:
        while self._parked:
            record = self._parked[0]
            try:
                state = self._state(record.example.adapter, record.partition)
            except redis.RedisError as error:
                self._dependency_error("redis", error)
                return  # keep order: retry from this record on the next round
            except FailedPrecondition as error:  # its snapshot is of another backbone or runtime
                self._parked.popleft()
                self._reject(record, "IncompatibleSnapshot", str(error))
                self._done(record)
                continue
            if not self._parked or self._parked[0] is not record:
                continue  # loading it asked for a rewind: the parked records were dropped
            self._parked.popleft()
            floor = max(
                state.applied.get(record.partition, 0), state.routed.get(record.partition, 0)
            )
            if record.offset < floor:
                self.metrics.skipped.labels(record.example.adapter).inc()
                self._done(record)
                continue
            state.pending.append(record)
            state.routed[record.partition] = record.offset + 1
            state.last_used = time.monotonic()

    def _done(self, record: Incoming) -> None:
        with self._held_lock:
            self._held[record.partition] = max(0, self._held.get(record.partition, 0) - 1)

    def _state(self, adapter: str, partition: str | None = None) -> AdapterState:
        state = self.adapters.get(adapter)
        if state is None:
            refused = self._incompatible.get(adapter)
            if refused is not None and refused[1] > time.monotonic():
                raise FailedPrecondition(refused[0])  # without fetching the snapshot again
            if self._make_room():
                release_freed_memory()  # the evicted learners' memory, back to the OS
            try:
                state = self.adapters[adapter] = self._load(adapter, partition)
            except FailedPrecondition as error:
                if len(self._incompatible) >= MAX_INCOMPATIBLE:
                    self._incompatible.clear()
                self._incompatible[adapter] = (str(error), time.monotonic() + INCOMPATIBLE_SECONDS)
                log.error(
                    "refusing the adapter's records: its snapshot is incompatible",
                    extra={"fields": {"adapter": adapter, "error": str(error)}},
                )
                raise
            self.metrics.resident_adapters.set(len(self.adapters))
            self.drift.submit_classes(
                adapter, state.learner.classes
            )  # known classes are not new arrivals
            # Series exist (at 0) before the first event, so rates and increase() see it.
            self.metrics.guardrail_holds.labels(adapter)
            self.metrics.skipped.labels(adapter)
            self.metrics.paused.labels(adapter).set(int(state.paused))
            for counter in (self.metrics.fallbacks, self.metrics.fenced):
                counter.labels(adapter)
        return state

    def _load(self, adapter: str, partition: str | None = None) -> AdapterState:
        reservoir = HoldoutReservoir(
            self.store.redis, adapter, self.settings.guardrail, self.store.prefix
        )
        pointer = self.store.pointer(adapter, "latest")
        if pointer is None:
            log.info("new adapter", extra={"fields": {"adapter": adapter}})
            return AdapterState(
                build_learner(self.backbone, self.learner_config), None, None, {}, {}, reservoir
            )
        head = self._readable_head(adapter)
        try:
            latest, checkpoint, learner = self._restore(adapter, pointer)
        except IntegrityError as error:
            return self._fall_back(adapter, partition, pointer, error, head, reservoir)
        log.info(
            "resumed adapter",
            extra={
                "fields": {
                    "adapter": adapter,
                    "version": latest.version,
                    "checkpoint": checkpoint.version,
                    "offsets": checkpoint.offsets,
                }
            },
        )
        return self._resumed(learner, latest, checkpoint, head, reservoir)

    @staticmethod
    def _resumed(
        learner: Learner,
        latest: Manifest,
        checkpoint: Manifest,
        head: Manifest | None,
        reservoir: HoldoutReservoir,
        **fields: Any,
    ) -> AdapterState:
        """An adapter continuing `latest`'s lineage from `checkpoint`'s state and offsets."""
        return AdapterState(
            learner,
            latest,
            head,
            dict(checkpoint.offsets),
            dict(checkpoint.class_counts),
            reservoir,
            checkpoint=checkpoint,
            last_checkpoint=time.monotonic(),  # the next one when due, as if written now
            catch_up=dict(latest.offsets) if checkpoint.version != latest.version else {},
            **fields,
        )

    def _restore(self, adapter: str, version: str) -> tuple[Manifest, Manifest, Learner]:
        """A version's manifest, its checkpoint's and the learner in that checkpoint, or
        `IntegrityError` saying why it cannot be (the version's own blob is verified too)."""
        manifest, _ = self.store.fetch(adapter, version)
        try:
            checkpoint, state = self.store.fetch_state(adapter, manifest)
        except NotFound as error:  # a checkpoint deleted under its versions: unusable
            raise IntegrityError(str(error), "checksum") from error
        try:
            return manifest, checkpoint, restore_learner(self.backbone, *from_safetensors(state))
        except tuple(STATUS):
            raise  # e.g. a snapshot of another backbone runtime: not corruption
        except Exception as error:  # noqa: BLE001 - any failure to decode verified bytes
            raise IntegrityError(
                f"adapter {adapter!r} version {version}: not a loadable snapshot: "
                f"{type(error).__name__}: {error}"[:300],
                "decode",
            ) from error

    def _readable_head(self, adapter: str) -> Manifest | None:
        try:
            return self.store.head(adapter)
        except IntegrityError:
            return None  # a corrupted head: the guardrail has nothing to compare against

    def _fall_back(
        self,
        adapter: str,
        partition: str | None,
        corrupted: str,
        error: IntegrityError,
        head: Manifest | None,
        reservoir: HoldoutReservoir,
    ) -> AdapterState:
        """`latest` fails verification: continue from the newest version that verifies and
        re-read the partition from its offsets. `latest` keeps naming the corrupted version
        until this adapter's next snapshot supersedes it, so a crash meanwhile falls back again."""
        self.metrics.corrupt_snapshots.labels(error.reason).inc()
        log.error(
            "latest snapshot is corrupted; falling back",
            extra={"fields": {"adapter": adapter, "version": corrupted, "error": str(error)}},
        )
        fallback, checkpoint, learner = None, None, None
        for version in reversed(self.store.versions(adapter)):
            if version == corrupted:
                continue
            try:
                fallback, checkpoint, learner = self._restore(adapter, version)
                break
            except IntegrityError as other:
                self.metrics.corrupt_snapshots.labels(other.reason).inc()
        if learner is None:
            learner = build_learner(self.backbone, self.learner_config)
        self.metrics.fallbacks.labels(adapter).inc()
        self.events.fell_back(
            adapter, corrupted, fallback.version if fallback else None, error.reason, str(error)
        )
        head = head if head is None or head.version != corrupted else None
        if fallback is None:
            state = AdapterState(learner, None, head, {}, {}, reservoir, replaces=corrupted)
        else:
            state = self._resumed(
                learner, fallback, checkpoint, head, reservoir, replaces=corrupted
            )
        offsets = dict(state.applied)
        partitions = set(offsets) | ({partition} if partition else set())
        for key in partitions:
            state.recovering[key] = self._received.get(key, 0)
            self._rewind(key, offsets.get(key, 0))
        log.warning(
            "fell back to an older snapshot",
            extra={
                "fields": {
                    "adapter": adapter,
                    "corrupted": corrupted,
                    "version": fallback.version if fallback else None,
                    "offsets": offsets,
                }
            },
        )
        return state

    def _rewind(self, partition: str, offset: int) -> None:
        """Read `partition` again from `offset`: drop every record of it in memory (older
        epochs are dropped on arrival too) and ask the poll loop to seek. Adapters skip what
        their snapshots or learners already hold, so nothing is applied twice."""
        epoch = self._forget(partition, self.new_epoch())
        self._received[partition] = min(self._received.get(partition, offset), offset)
        with self._rewinds_lock:
            self._rewinds[partition] = (epoch, offset)
        self._update_safe_offsets()  # commit no further than the re-read starts

    def restart_partitions(self, epochs: dict[str, int]) -> None:
        """The poll loop seeked these partitions to their committed offsets after a rebalance
        (kafka-python keeps the fetch position of a partition assigned again, which would skip
        the records dropped on revocation): forget their records in memory."""
        for partition, epoch in epochs.items():
            self._forget(partition, epoch)
            self._received.pop(partition, None)
        self._update_safe_offsets()

    def _forget(self, partition: str, epoch: int) -> int:
        """Drop every record of `partition` in memory; from now on only `epoch` is accepted."""
        epoch = self._epochs[partition] = max(self._epochs.get(partition, 0), epoch)
        kept = deque()
        for record in self._parked:
            if record.partition == partition:
                self._done(record)
            else:
                kept.append(record)
        self._parked = kept
        for state in self.adapters.values():
            dropped = [r for r in state.pending if r.partition == partition]
            if dropped:
                state.pending = deque(r for r in state.pending if r.partition != partition)
                for record in dropped:
                    self._done(record)
            state.routed.pop(partition, None)
        return epoch

    def _recovered(self, state: AdapterState) -> bool:
        """A fall-back is over once the partitions were re-read past where they had been;
        the records of this adapter read meanwhile are then learned, at once."""
        for partition, until in list(state.recovering.items()):
            if self._received.get(partition, 0) < until:
                return False
        state.recovering.clear()
        return True

    def _make_room(self) -> int:
        """Keep at most `max_adapters` in memory: snapshot the least recently used adapter
        (its pending records learned first), then drop it; it reloads from that snapshot.
        Returns how many were dropped."""
        dropped = 0
        while len(self.adapters) >= self.settings.max_adapters:
            candidates = [
                (s.last_used, a)
                for a, s in self.adapters.items()
                if not s.paused and not s.recovering
            ]
            if not candidates:
                return dropped  # nothing may leave: paused or recovering adapters stay
            _, adapter = min(candidates)
            state = self.adapters[adapter]
            if state.pending:
                self._consume(adapter, state, len(state.pending))
                if self.adapters.get(adapter) is not state:
                    continue  # the consume's snapshot fenced it out: already gone
            if state.uncheckpointed:
                if not self._publishable(state):
                    return dropped  # re-reading: it cannot leave before its next checkpoint
                try:
                    self._snapshot(adapter, state, checkpoint=True)
                except (redis.RedisError, StaleParent) as error:
                    if isinstance(error, redis.RedisError):
                        self._dependency_error("redis", error)
                    return dropped  # cannot evict without losing work: stay over the limit
            self._drop(adapter)
            dropped += 1
            self.metrics.adapter_evictions.inc()
            self.metrics.resident_adapters.set(len(self.adapters))
            self._update_safe_offsets()
        return dropped

    def _drop(self, adapter: str) -> AdapterState | None:
        """Forget an adapter's learner (it is reloaded from Redis when needed again)."""
        state = self.adapters.pop(adapter, None)
        if state is not None:
            _cancel_warm_up(state)
        return state

    def _swap_warm_ups(self) -> None:
        """Swap in FSA warm-ups that finished on their thread, though no record came since."""
        for adapter, state in self.adapters.items():
            learner = state.learner
            if isinstance(learner, FirstSessionLearner) and learner.window and learner.poll():
                state.pet_swapped = True
                log.info("PET warm-up swapped in", extra={"fields": {"adapter": adapter}})
                if self.settings.guardrail.enabled:  # mostly computed on the warm-up's thread
                    self._warm_holdout(state.reservoir, learner)

    def _train_ready(self) -> None:
        now = time.monotonic()
        for adapter, state in list(self.adapters.items()):
            if state.recovering and self._recovered(state):
                if state.pending:  # learned now, so the next snapshot covers the re-read
                    self._consume(adapter, state, len(state.pending))
                log.info("fall-back re-read done", extra={"fields": {"adapter": adapter}})
            if state.paused:
                continue
            while len(state.pending) >= self.settings.batch_size:
                self._consume(adapter, state, self.settings.batch_size)
                if time.monotonic() - self._last_snapshot >= self.settings.snapshot_every_seconds:
                    self.snapshot_all(timed=True)  # behind the stream: versions go on meanwhile
                if self.adapters.get(adapter) is not state:
                    break  # a snapshot was fenced out: the adapter reloads, its records requeued
            if (
                self.adapters.get(adapter) is state
                and state.pending
                and now - state.pending[0].received >= self.settings.batch_wait_seconds
            ):
                self._consume(adapter, state, len(state.pending))  # its oldest record waited enough

    def _consume(self, adapter: str, state: AdapterState, size: int) -> None:
        """Take `size` records: hold some out for the guardrail, train on the rest (one span,
        linked to the producers' spans of its records)."""
        records = [state.pending.popleft() for _ in range(size)]
        if isinstance(state.learner, FirstSessionLearner):  # its warm-up yields meanwhile
            waited = time.monotonic() - records[0].received
            state.learner.behind = waited > self.settings.warmup_yield_seconds
        with self.tracer.start_as_current_span(
            "learn",
            links=tracing.links(record.link for record in records),
            attributes={
                "perennial.adapter": adapter,
                "perennial.examples": len(records),
                "perennial.kafka.offsets": _offset_ranges(records),
            },
        ) as span:
            self._learn(adapter, state, records)
        if span.get_span_context().is_valid:
            state.learned.append(trace.Link(span.get_span_context()))
        self._since_snapshot += len(records)
        if self._since_snapshot >= self.settings.snapshot_every_examples:
            self.snapshot_all()

    def _learn(self, adapter: str, state: AdapterState, records: list[Incoming]) -> None:
        batch, held_out = [], []
        for record in records:
            label = record.example.label
            if (
                label not in state.class_counts
                and len(state.class_counts) >= self.settings.max_classes
            ):
                self._reject(
                    record,
                    "TooManyClasses",
                    f"adapter {adapter!r} already has "
                    f"{len(state.class_counts)} classes; at most {self.settings.max_classes}",
                )
                continue
            state.class_counts[label] = count = state.class_counts.get(label, 0) + 1
            if state.reservoir.wants(count) and label in state.learner.classes:
                self._hold_out(state, record.example, count)
                held_out.append(record.example.input)
            else:
                batch.append(record.example)
        # FSA's holdout features are encoded as examples are held out (`FeatureCache.warm`)
        fsa = isinstance(state.learner, FirstSessionLearner)
        warm = self.settings.guardrail.enabled and fsa
        adapted = warm and state.learner.adapted
        unadapted = fsa and not state.learner.adapted
        filling = unadapted and not state.learner.window
        if filling:  # the warm-up's thread reports its steps once the window closes
            self.metrics.warmup_progress.labels(adapter).set(0.0)
        if unadapted:
            state.learner.warmup_progress = functools.partial(self._warmup_progress, adapter)
            self.settings.schedule_warm_up(state.learner)
            if warm:  # (the reservoir, not the state: no cycle keeps an evicted learner alive)
                state.learner.warmed_up = functools.partial(self._warm_holdout, state.reservoir)
        if batch:
            inputs, labels = [e.input for e in batch], [e.label for e in batch]
            learn_and_predict = getattr(state.learner, "learn_and_predict", None)
            if learn_and_predict is not None:
                # The prediction before learning comes with the learning (the head's last
                # solution scores the features it learns from): every batch, for free.
                started = time.perf_counter()
                self.drift.submit_prequential(adapter, labels, learn_and_predict(inputs, labels))
                loss = 0.0
            else:
                # Every example reaches the monitor (new classes are counted whatever the
                # budget); only the prediction before learning, the drift signal, is rationed.
                started = time.perf_counter()
                self.drift.before_learning(
                    adapter, state.learner, inputs, labels, predict=self._prequential_due()
                )
                self._prequential_seconds += time.perf_counter() - started
                started = time.perf_counter()
                loss = state.learner.learn(inputs, labels)
            elapsed = time.perf_counter() - started
            self._learn_seconds += elapsed
            self.metrics.step_duration.observe(elapsed)
            self.metrics.loss.labels(adapter).set(loss)
            self.metrics.examples.labels(adapter).inc(len(batch))
            self.metrics.classes.labels(adapter).set(len(state.learner.classes))
        if unadapted and state.learner.adapted:
            log.info("PET warm-up swapped in", extra={"fields": {"adapter": adapter}})
        if warm:
            if state.learner.adapted != adapted:  # a new PET: all holdout features change
                held_out = state.reservoir.inputs(set(state.learner.classes))[0]
            if held_out:
                self._holdout_features.warm(state.learner, held_out)
        for record in records:
            state.applied[record.partition] = record.offset + 1
            state.new_event_times.append(record.example.event_time)
            self._done(record)

    def _warmup_progress(self, adapter: str, done: int, total: int) -> None:
        """An FSA warm-up step (on the warm-up's thread by default): minutes of work on one
        adapter, so log and export its progress and keep the heartbeat fresh (the watchdog looks
        for a stuck thread, not a long step; learning may be waiting for the warm-up)."""
        self.heartbeat = time.monotonic()
        self.metrics.warmup_progress.labels(adapter).set(done / total)
        if done == total or done % max(1, total // 5) == 0:
            log.info("adapter %r: PET warm-up step %d of %d", adapter, done, total)

    def _warm_holdout(
        self,
        reservoir: HoldoutReservoir,
        source: FirstSessionLearner | FirstSessionPredictor,
        pace: Callable[[], None] | None = None,
    ) -> None:
        """The holdout's rows under `source`'s PET and head; for a new PET on the warm-up's
        thread at its `pace`, before it is swapped in, so the swap does not stall learning
        computing them."""
        inputs = reservoir.inputs(set(source.classes))[0]
        self._holdout_features.warm(source, inputs, between=pace)

    def _prequential_due(self) -> bool:
        """Whether this micro-batch gets a prequential evaluation (the concept-drift signal):
        always at budget >= 1, never at 0, otherwise while its time stays within `budget` of
        the learning time (cheap for LAE, rationed for analytic heads that solve to predict)."""
        budget = self.settings.prequential_budget
        return budget >= 1 or (
            budget > 0 and self._prequential_seconds <= budget * self._learn_seconds
        )

    def _reject(self, record: Incoming, reason: str, message: str) -> None:
        """Dead-letter a record the training thread refuses (confirmed before its offset moves)."""
        topic, _, partition = record.partition.rpartition(":")
        rejected = Rejected(
            topic,
            int(partition),
            record.offset,
            record.example.adapter.encode(),
            encode(record.example),
            reason,
            message,
        )
        while self.dead_letters is not None:
            try:
                self.dead_letters.send(rejected)
                return
            except DeadLetterFailed as error:
                self._dependency_error("kafka", error)
                self.heartbeat = time.monotonic()  # waiting on Kafka, not stuck
                time.sleep(1.0)

    def _hold_out(self, state: AdapterState, example: Example, count: int) -> None:
        while True:  # the holdout must be written before the offset moves past it
            try:
                state.reservoir.add(example, count)
                return
            except redis.RedisError as error:
                self._dependency_error("redis", error)
                self.heartbeat = time.monotonic()  # waiting on Redis, not stuck
                time.sleep(1.0)  # backoff while Redis is away; nothing else can proceed

    # -- snapshots, the guardrail and commits ------------------------------------------------
    def snapshot_all(self, checkpoint: bool = False, timed: bool = False) -> None:
        """Publish every adapter with unsnapshotted examples (with a checkpoint when asked or
        due, also for an adapter whose newest examples are only in serving versions), then hand
        back safe offsets. A `timed` version (the time cadence) does not wait for a choice of
        λ under way: it is solved with the λ of before (a checkpoint always waits)."""
        self._snapshot_failed = False
        for adapter, state in list(self.adapters.items()):
            self.heartbeat = time.monotonic()
            due = state.uncheckpointed and (checkpoint or self._checkpoint_due(state))
            if self._publishable(state) and (state.dirty or due):  # caught up: maybe not dirty
                try:
                    self._snapshot(adapter, state, checkpoint=checkpoint, timed=timed)
                    state.last_error = ""
                except redis.RedisError as error:
                    self._dependency_error("redis", error)
                    state.last_error = f"snapshot failed, retrying: {error}"
                    self._snapshot_failed = True  # retried every RETRY_SECONDS
                except StaleParent:
                    pass  # fenced out: `_snapshot` reloads the adapter and re-reads
        self._last_snapshot = time.monotonic()
        self._since_snapshot = 0
        self._update_safe_offsets()

    def _checkpoint_due(self, state: AdapterState) -> bool:
        every = self.settings.checkpoint_every_seconds
        return state.checkpoint is None or time.monotonic() - state.last_checkpoint >= every

    @staticmethod
    def _publishable(state: AdapterState) -> bool:
        """Not while a fall-back re-reads, nor before a resumed adapter passes its `latest`."""
        return not state.recovering and state.caught_up()

    def _snapshot(
        self,
        adapter: str,
        state: AdapterState,
        force_promote: bool = False,
        checkpoint: bool = False,
        timed: bool = False,
    ) -> Manifest:
        """Publish one snapshot in a span linked to the micro-batches it contains."""
        with self.tracer.start_as_current_span(
            "snapshot",
            links=tracing.links(state.learned),
            attributes={"perennial.adapter": adapter},
        ) as span:
            checkpoint = checkpoint or self._checkpoint_due(state)
            manifest = self._publish(adapter, state, force_promote, checkpoint, timed)
            span.set_attributes(
                {
                    "perennial.version": manifest.version,
                    "perennial.parent": manifest.parent or "",
                    "perennial.examples": manifest.examples,
                    "perennial.promoted": state.head is manifest,
                    "perennial.kafka.offsets": [
                        f"{partition}={offset}"
                        for partition, offset in sorted(manifest.offsets.items())
                    ],
                }
            )
            state.learned.clear()
            return manifest

    def _publish(
        self,
        adapter: str,
        state: AdapterState,
        force_promote: bool,
        checkpoint: bool,
        timed: bool,
    ) -> Manifest:
        started = time.perf_counter()
        verdict = candidate = None
        # The serving blob every version has; the whole state only in a checkpoint (a learner
        # without a serving view serves its whole state, so each of its versions is one).
        split = hasattr(state.learner, "serving")
        tensors, metadata = serving_state(state.learner, wait=checkpoint or not timed)
        state_blob = to_safetensors(*state.learner.state()) if split and checkpoint else None
        checkpoint = checkpoint or not split
        if state.head is not None and not force_promote and self.settings.guardrail.enabled:
            try:
                head = self._head_labeller(adapter, state.head)
            except IntegrityError as error:  # nothing to compare with: the candidate replaces it
                self.metrics.corrupt_snapshots.labels(error.reason).inc()
                log.error(
                    "the head fails verification; promoting without a verdict",
                    extra={"fields": {"adapter": adapter, "error": str(error)}},
                )
                head = None
            if head is not None:
                candidate = self._labeller(load_predictor(self.backbone, tensors, metadata))
                verdict = judge(
                    self.settings.guardrail, state.reservoir, state.head.classes, candidate, head
                )
        promote = verdict is None or verdict.promote
        metrics = {
            "steps": state.learner.steps,
            "holdout_examples": sum(
                c // self.settings.guardrail.every for c in state.class_counts.values()
            )
            if self.settings.guardrail.enabled
            else 0,
        }
        if verdict is not None and verdict.evaluated:
            metrics.update(
                candidate_accuracy=verdict.candidate_accuracy, head_accuracy=verdict.head_accuracy
            )
            served = verdict.candidate_accuracy if verdict.promote else verdict.head_accuracy
            self.metrics.served_accuracy.labels(adapter).set(served)
        try:
            manifest = self.store.publish(
                adapter,
                to_safetensors(tensors, metadata),
                parent=state.latest,
                offsets={**state.applied, **self.side_offsets()},
                examples=state.learner.examples,
                classes=state.learner.classes,
                metrics=metrics,
                event_times=state.new_event_times,
                class_counts=state.class_counts,
                promote=promote,
                replaces=state.replaces,
                state=state_blob,
                checkpoint=checkpoint,
            )
        except StaleParent as error:
            log.error(
                "fenced out: the adapter's lineage moved (another trainer or a rollback); reloading",
                extra={"fields": {"adapter": adapter, "error": str(error)}},
            )
            self.metrics.fenced.labels(adapter).inc()
            self._drop(adapter)
            self.metrics.resident_adapters.set(len(self.adapters))
            self._requeue(state)
            # What this replica learned since its snapshot is discarded: re-read it on top of
            # the lineage that won, from where that lineage's snapshot ends.
            try:
                winner = self.store.latest(adapter)
                if winner is not None and winner.resume_version != winner.version:
                    winner = self.store.manifest(adapter, winner.resume_version)
            except IntegrityError:
                winner = None
            for partition in state.applied:
                self._rewind(partition, winner.offsets.get(partition, 0) if winner else 0)
            raise
        previous_head = state.head
        state.latest, state.new_event_times, state.replaces = manifest, [], None
        state.pet_swapped = False
        if checkpoint:
            state.checkpoint, state.last_checkpoint = manifest, time.monotonic()
        self.metrics.snapshots.labels(adapter).inc()
        self.metrics.snapshot_sequence.labels(adapter).set(manifest.sequence)
        self.metrics.last_snapshot.labels(adapter).set(manifest.created_at)
        self.metrics.snapshot_duration.observe(time.perf_counter() - started)
        self.events.snapshot_published(
            adapter, manifest.version, manifest.parent, manifest.examples, manifest.sha256
        )
        if promote:
            state.head, state.held_reason = manifest, ""
            if candidate is not None:  # the next verdict compares against it: no fetch, no build
                self._head_cache = {(adapter, manifest.version): candidate}
            self.events.promoted(
                adapter,
                manifest.version,
                previous_head.version if previous_head else None,
                forced=force_promote,
            )
        else:
            state.held_reason = verdict.reason
            self.metrics.guardrail_holds.labels(adapter).inc()
            self.events.held(
                adapter,
                manifest.version,
                state.head.version,
                verdict.candidate_accuracy,
                verdict.head_accuracy,
                self.settings.guardrail.margin,
                verdict.reason,
            )
            log.warning(
                "candidate held by the guardrail",
                extra={
                    "fields": {
                        "adapter": adapter,
                        "version": manifest.version,
                        "reason": verdict.reason,
                    }
                },
            )
        self.store.prune(adapter, self.settings.retain_versions, self.settings.retain_bytes)
        log.info(
            "snapshot published",
            extra={
                "fields": {
                    "adapter": adapter,
                    "version": manifest.version,
                    "examples": manifest.examples,
                    "head": promote,
                }
            },
        )

        # Forgetting, when due: the version's own predictions on the holdout (cached features).
        def labeller() -> Callable[[list[str]], list[str]]:
            return candidate or self._labeller(load_predictor(self.backbone, tensors, metadata))

        self.drift.after_snapshot(adapter, state.learner, state.reservoir.inputs, labeller)
        return manifest

    def _head_labeller(self, adapter: str, head: Manifest) -> Callable[[list[str]], list[str]]:
        key = (adapter, head.version)
        if key not in self._head_cache:
            _, blob = self.store.fetch(adapter, head.version)
            self._head_cache = {
                key: self._labeller(load_predictor(self.backbone, *from_safetensors(blob)))
            }
        return self._head_cache[key]

    def _labeller(self, predictor) -> Callable[[list[str]], list[str]]:
        if isinstance(predictor, FirstSessionPredictor):
            return self._holdout_features.labeller(predictor)

        def labels(texts: list[str]) -> list[str]:
            with torch.inference_mode():
                best = predictor.scores(self.backbone, texts).argmax(-1).tolist()
            return [predictor.classes[i] for i in best]

        return labels

    def _requeue(self, state: AdapterState) -> None:
        """Put a dropped adapter's pending records back, to be routed against the reloaded state."""
        self._parked.extendleft(reversed(state.pending))

    def _update_safe_offsets(self) -> None:
        safe = dict(self._received)
        unsafe = [r for r in self._parked] + [r for s in self.adapters.values() for r in s.pending]
        for record in unsafe:
            safe[record.partition] = min(safe.get(record.partition, record.offset), record.offset)
        for state in self.adapters.values():
            if state.uncheckpointed:  # a restart resumes from the checkpoint: commit no further
                for partition in state.applied:
                    last = state.checkpoint.offsets.get(partition, 0) if state.checkpoint else 0
                    safe[partition] = min(safe.get(partition, last), last)
        with self._safe_lock:
            self._safe = safe

    def _dependency_error(self, dependency: str, error: Exception) -> None:
        self.metrics.dependency_errors.labels(dependency).inc()
        log.warning(
            "dependency unavailable; will retry",
            extra={"fields": {"dependency": dependency, "error": str(error)}},
        )

    # -- commands (run on the training thread via `submit`) ----------------------------------
    def revoke(self, partitions: set[str]) -> None:
        """Partitions leave: checkpoint what was learned, forget their records and adapters."""
        self.snapshot_all(checkpoint=True)
        for record in self._parked:
            if record.partition in partitions:
                self._done(record)
        self._parked = deque(r for r in self._parked if r.partition not in partitions)
        for state in self.adapters.values():
            for record in state.pending:
                self._done(record)  # requeued below or dropped: counted again on arrival
        self._parked.extend(
            r for s in self.adapters.values() for r in s.pending if r.partition not in partitions
        )
        with self._held_lock:
            for record in self._parked:
                self._held[record.partition] = self._held.get(record.partition, 0) + 1
            for partition in partitions:
                self._held.pop(partition, None)
        for adapter in list(self.adapters):
            self._drop(adapter)  # rebuilt from Redis when their records arrive again
        self.metrics.resident_adapters.set(0)
        for partition in partitions:
            self._received.pop(partition, None)
        self._update_safe_offsets()

    def owned(self, adapter: str) -> AdapterState:
        state = self.adapters.get(adapter)
        if state is None:
            raise NotFound(f"adapter {adapter!r} has no examples on this trainer replica")
        return state

    def snapshot_now(self, adapter: str) -> Manifest:
        state = self.owned(adapter)
        if not self._publishable(state):
            raise NotReady(f"adapter {adapter!r} is re-reading its stream; retry shortly")
        if not state.dirty and not state.uncheckpointed and state.latest is not None:
            return state.latest
        manifest = self._snapshot(adapter, state, checkpoint=True)
        self._update_safe_offsets()
        return manifest

    def promote(self, adapter: str, version: str = "") -> Manifest:
        state = self.owned(adapter)
        if not version:
            if state.dirty:
                if not self._publishable(state):
                    raise NotReady(f"adapter {adapter!r} is re-reading its stream; retry shortly")
                return self._snapshot(adapter, state, force_promote=True)
            if state.latest is None:
                raise NotFound(f"adapter {adapter!r} has no version yet")
            version = state.latest.version
        previous = state.head
        manifest = self.store.promote(adapter, version)
        state.head, state.held_reason = manifest, ""
        self.events.promoted(adapter, version, previous.version if previous else None, forced=True)
        return manifest

    def rollback(self, adapter: str, version: str) -> Manifest:
        if not version:
            raise InvalidInput("rollback needs a version; list them with ListVersions")
        previous = self.store.head(adapter)
        manifest = self.store.rollback(adapter, version)
        # Learning since that version is discarded: continue from it. Records not yet
        # learned are routed again, against the rolled-back state.
        state = self._drop(adapter)
        if state is not None:
            self._requeue(state)
            self.adapters[adapter] = self._load(adapter)
            self.adapters[adapter].paused = state.paused
            # From the version's checkpoint, not re-reading up to the version: nothing to pass;
            # the new lineage's first version is a checkpoint of its own.
            self.adapters[adapter].catch_up, self.adapters[adapter].last_checkpoint = {}, 0.0
        self.events.rolled_back(adapter, version, previous.version if previous else None)
        return manifest

    def set_paused(self, adapter: str, paused: bool) -> AdapterState:
        state = self.owned(adapter)
        state.paused = paused
        self.metrics.paused.labels(adapter).set(int(paused))
        return state


def _cancel_warm_up(state: AdapterState) -> None:
    """Stop a PET warm-up under way on its thread: the learner is being dropped."""
    if isinstance(state.learner, FirstSessionLearner):
        state.learner.cancel()


def _offset_ranges(records: list[Incoming]) -> list[str]:
    """ "topic:partition=first-last" per partition of a micro-batch (a span attribute)."""
    ranges: dict[str, list[int]] = {}
    for record in records:
        span = ranges.setdefault(record.partition, [record.offset, record.offset])
        span[0], span[1] = min(span[0], record.offset), max(span[1], record.offset)
    return [f"{p}={first}-{last}" for p, (first, last) in sorted(ranges.items())]

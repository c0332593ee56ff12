"""Kubernetes Events on the trainer's own Pod, through the official `kubernetes` client.

The trainer records core/v1 Events for lifecycle moments (DriftDetected,
GuardrailHeld, Promoted, RolledBack), so `kubectl describe pod` and `kubectl get
events` show them next to restarts and OOM kills. Recording never raises and
never blocks the caller: events go through a small queue to one background
thread. A repeat of the same reason and message within `aggregate_seconds`
patches the existing Event's count instead of creating a new object (what
client-go's recorder does). RBAC: `create` and `patch` on `events` in the pod's
namespace (the chart's Role). The pod is named by the downward API:
PERENNIAL_POD_NAME, PERENNIAL_POD_NAMESPACE, PERENNIAL_POD_UID (the uid lets
`kubectl describe pod` match the Events). Outside a cluster the recorder is
disabled with one log line.

No API server runs on our test machines: tests check the requests this module
builds (on a loopback HTTPS endpoint that records them) and the skip path.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from perennial.kube import REQUEST_TIMEOUT, in_cluster_api

log = logging.getLogger(__name__)

COMPONENT = "perennial-trainer"  # source.component of our Events (`--field-selector source=...`)
MAX_MESSAGE = 1024  # the API server caps Event messages; keep ours well below


class EventReason(Enum):
    """Lifecycle moments the trainer records, with their Event type."""

    DRIFT_DETECTED = ("DriftDetected", "Warning")
    GUARDRAIL_HELD = ("GuardrailHeld", "Warning")
    PROMOTED = ("Promoted", "Normal")
    ROLLED_BACK = ("RolledBack", "Normal")
    FELL_BACK = ("SnapshotCorrupted", "Warning")

    @property
    def reason(self) -> str:
        return self.value[0]

    @property
    def type(self) -> str:
        return self.value[1]


@dataclass(frozen=True)
class PodRef:
    """The pod this process runs in, from the downward API."""

    name: str
    namespace: str
    uid: str = ""


def event_name(pod: PodRef, now: datetime) -> str:
    """`<pod>.<hex nanoseconds>`, the naming client-go uses: unique and sortable."""
    return f"{pod.name}.{int(now.timestamp() * 1e9):x}"


def build_event(
    pod: PodRef,
    reason: EventReason,
    message: str,
    now: datetime,
    *,
    component: str = COMPONENT,
    name: str | None = None,
) -> client.CoreV1Event:
    """The core/v1 Event recording `reason` on `pod` at `now`."""
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 1] + "…"
    return client.CoreV1Event(
        api_version="v1",
        kind="Event",
        metadata=client.V1ObjectMeta(name=name or event_name(pod, now), namespace=pod.namespace),
        involved_object=client.V1ObjectReference(
            api_version="v1",
            kind="Pod",
            name=pod.name,
            namespace=pod.namespace,
            uid=pod.uid or None,
        ),
        reason=reason.reason,
        message=message,
        type=reason.type,
        source=client.V1EventSource(component=component),
        reporting_component=component,
        reporting_instance=pod.name,
        first_timestamp=now,
        last_timestamp=now,
        count=1,
    )


@dataclass
class _Recorded:
    """An Event this recorder created, for aggregating repeats into its count."""

    name: str
    count: int
    last_sent: float


class EventRecorder:
    """Records Events on the trainer's Pod; a disabled recorder (no API or no pod) does nothing.

    >>> recorder = EventRecorder(None, None)   # what you get outside a cluster
    >>> recorder.record(EventReason.PROMOTED, "adapter wordnet: v000012-3f2a is the head")
    >>> recorder.enabled
    False
    """

    def __init__(
        self,
        api: client.ApiClient | None,
        pod: PodRef | None,
        *,
        component: str = COMPONENT,
        aggregate_seconds: float = 600.0,
        queue_size: int = 100,
    ) -> None:
        self.pod = pod
        self.component = component
        self.aggregate_seconds = aggregate_seconds
        self._core = client.CoreV1Api(api) if api is not None and pod is not None else None
        self._queue: queue.Queue[tuple[EventReason, str, datetime]] = queue.Queue(queue_size)
        self._recent: dict[tuple[str, str], _Recorded] = {}
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @classmethod
    def for_pod(
        cls,
        name: str,
        namespace: str,
        uid: str = "",
        *,
        enabled: bool = True,
        environ: Mapping[str, str] = os.environ,
        **kwargs: object,
    ) -> EventRecorder:
        """A recorder for the pod the downward API names (PERENNIAL_POD_NAME/_NAMESPACE/_UID),
        or a disabled one (logged once) when switched off, unnamed, or outside a cluster."""
        if not enabled:
            log.info(
                "kubernetes events off", extra={"fields": {"reason": "PERENNIAL_KUBERNETES_EVENTS"}}
            )
            return cls(None, None, **kwargs)  # type: ignore[arg-type]
        pod = PodRef(name, namespace, uid) if name and namespace else None
        api = in_cluster_api(environ) if pod is not None else None
        if pod is None or api is None:
            why = (
                "PERENNIAL_POD_NAME/PERENNIAL_POD_NAMESPACE unset"
                if pod is None
                else "not in a Kubernetes cluster (no service host or token)"
            )
            log.info("kubernetes events skipped", extra={"fields": {"reason": why}})
            return cls(None, None, **kwargs)  # type: ignore[arg-type]
        log.info(
            "kubernetes events on", extra={"fields": {"pod": pod.name, "namespace": pod.namespace}}
        )
        return cls(api, pod, **kwargs)  # type: ignore[arg-type]

    @property
    def enabled(self) -> bool:
        return self._core is not None

    def record(self, reason: EventReason, message: str) -> None:
        """Queue an Event; returns at once. Dropped (with a log line) if the queue is full."""
        if self._core is None:
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="kube-events", daemon=True)
                self._thread.start()
        try:
            self._queue.put_nowait((reason, message, datetime.now(UTC)))
        except queue.Full:
            log.warning(
                "kubernetes event dropped: queue full", extra={"fields": {"reason": reason.reason}}
            )

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued Event was sent (or failed); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._queue.all_tasks_done:  # notified by task_done() when the count reaches 0
            while self._queue.unfinished_tasks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._queue.all_tasks_done.wait(remaining)
        return True

    def _run(self) -> None:
        while True:
            reason, message, now = self._queue.get()
            try:
                self._send(reason, message, now)
            except Exception:  # never let the API take the trainer down
                log.warning(
                    "kubernetes event not recorded",
                    exc_info=True,
                    extra={"fields": {"reason": reason.reason}},
                )
            finally:
                self._queue.task_done()

    def _send(self, reason: EventReason, message: str, now: datetime) -> None:
        assert self._core is not None and self.pod is not None
        key = (reason.reason, message)
        previous = self._recent.get(key)
        if previous is not None and time.monotonic() - previous.last_sent < self.aggregate_seconds:
            previous.count += 1
            previous.last_sent = time.monotonic()
            try:
                self._core.patch_namespaced_event(
                    previous.name,
                    self.pod.namespace,
                    {
                        "count": previous.count,
                        "lastTimestamp": now.isoformat().replace("+00:00", "Z"),
                    },
                    _request_timeout=REQUEST_TIMEOUT,
                )
                return
            except ApiException as error:
                if error.status != 404:  # expired by the API server's event TTL: create anew
                    raise
        event = build_event(self.pod, reason, message, now, component=self.component)
        self._core.create_namespaced_event(
            self.pod.namespace, event, _request_timeout=REQUEST_TIMEOUT
        )
        self._recent[key] = _Recorded(event.metadata.name, 1, time.monotonic())
        if len(self._recent) > 256:  # bounded: forget the oldest
            oldest = min(self._recent, key=lambda k: self._recent[k].last_sent)
            del self._recent[oldest]

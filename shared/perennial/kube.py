"""The Kubernetes API where operators benefit, through the official `kubernetes` client.

Two things, both optional and both skipped with one log line outside a cluster:

- `EventRecorder`: the trainer records core/v1 Events on its own Pod for lifecycle moments
  (DriftDetected, GuardrailHeld, Promoted, RolledBack), so `kubectl describe pod` and
  `kubectl get events` show them next to restarts and OOM kills. Recording never raises and
  never blocks the caller: events go through a small queue to one background thread. A
  repeat of the same reason and message within `aggregate_seconds` patches the existing
  Event's count instead of creating a new object (what client-go's recorder does).
  RBAC: `create` and `patch` on `events` in the pod's namespace (the chart's Role).
  The pod is named by the downward API: PERENNIAL_POD_NAME, PERENNIAL_POD_NAMESPACE,
  PERENNIAL_POD_UID (the uid lets `kubectl describe pod` match the Events).

- `list_release_pods`: the pods of a Helm release with the adapter versions each serves,
  for `perennial status`. Versions are read by *calling each pod*: its /metrics endpoint
  through the API server's pod proxy (`GET pods/<name>:<port>/proxy/metrics`), so it works
  from an operator's laptop, needs no write access for the services (a pod annotation would
  need `patch pods` for every inference replica and an API write per swap) and shows what
  the process really serves. The caller needs `list pods` and `get pods/proxy`.

No API server runs on our test machines: tests check the requests this module builds
(on a loopback HTTPS endpoint that records them) and the skip path.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.config.incluster_config import (
    SERVICE_CERT_FILENAME,
    SERVICE_HOST_ENV_NAME,
    SERVICE_TOKEN_FILENAME,
    InClusterConfigLoader,
)
from prometheus_client.parser import text_string_to_metric_families

log = logging.getLogger("perennial.kube")

COMPONENT = "perennial-trainer"  # source.component of our Events (`--field-selector source=...`)
REQUEST_TIMEOUT = (2.0, 5.0)  # connect, read (seconds)
MAX_MESSAGE = 1024  # the API server caps Event messages; keep ours well below


class EventReason(Enum):
    """Lifecycle moments the trainer records, with their Event type."""

    DRIFT_DETECTED = ("DriftDetected", "Warning")
    GUARDRAIL_HELD = ("GuardrailHeld", "Warning")
    PROMOTED = ("Promoted", "Normal")
    ROLLED_BACK = ("RolledBack", "Normal")

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

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> PodRef | None:
        """PERENNIAL_POD_NAME / _NAMESPACE / _UID, or None when name or namespace is unset."""
        name, namespace = environ.get("PERENNIAL_POD_NAME"), environ.get("PERENNIAL_POD_NAMESPACE")
        if not name or not namespace:
            return None
        return cls(name, namespace, environ.get("PERENNIAL_POD_UID", ""))


def in_cluster_api(
    environ: Mapping[str, str] = os.environ,
    *,
    token_file: str = SERVICE_TOKEN_FILENAME,
    ca_file: str = SERVICE_CERT_FILENAME,
) -> client.ApiClient | None:
    """An API client with the pod's service-account token, or None outside a cluster.

    "Outside" = KUBERNETES_SERVICE_HOST unset or no token mounted (the chart mounts one only
    into trainer pods, and only with trainer.kubernetesEvents).
    """
    if not environ.get(SERVICE_HOST_ENV_NAME):
        return None
    if not Path(token_file).exists():
        return None
    configuration = client.Configuration()
    InClusterConfigLoader(token_file, ca_file, environ=environ).load_and_set(configuration)
    return client.ApiClient(configuration)


def connect(environ: Mapping[str, str] = os.environ) -> client.ApiClient | None:
    """An API client as kubectl would build one (KUBECONFIG, or ~/.kube/config), else the
    in-cluster service account, else None with one log line (no Kubernetes to ask)."""
    from kubernetes import config
    from kubernetes.config.config_exception import ConfigException

    kubeconfig = environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    try:
        return config.new_client_from_config(config_file=kubeconfig)
    except (ConfigException, FileNotFoundError, OSError):
        pass
    api = in_cluster_api(environ)
    if api is None:
        log.info(
            "kubernetes skipped",
            extra={"fields": {"reason": "no kubeconfig and not in a Kubernetes cluster"}},
        )
    return api


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
    def from_environment(
        cls, environ: Mapping[str, str] = os.environ, **kwargs: object
    ) -> EventRecorder:
        """A recorder for this pod, or a disabled one (logged once) outside a cluster,
        without the downward-API variables, or with PERENNIAL_KUBERNETES_EVENTS=false."""
        if environ.get("PERENNIAL_KUBERNETES_EVENTS", "true").lower() in ("false", "0", "no"):
            log.info(
                "kubernetes events off", extra={"fields": {"reason": "PERENNIAL_KUBERNETES_EVENTS"}}
            )
            return cls(None, None, **kwargs)  # type: ignore[arg-type]
        pod = PodRef.from_env(environ)
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
            self._queue.put_nowait((reason, message, datetime.now(timezone.utc)))
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


# --- release pods (`perennial status`) ------------------------------------------------------

# Metric families that name what a pod serves, per component (see shared/perennial/metrics.py).
VERSION_INFO = "perennial_inference_adapter_version_info"  # 1 for {adapter, version} served
SERVED_SEQUENCE = (
    "perennial_inference_served_sequence"  # {adapter} -> sequence of the served version
)
TRAINER_SEQUENCE = "perennial_trainer_snapshot_sequence"  # {adapter} -> newest snapshot's sequence


@dataclass(frozen=True)
class AdapterVersion:
    """One adapter as a pod reports it: the version id when the pod exports it, and/or the
    sequence number of that version (version ids are `v<sequence>-<sha prefix>`)."""

    adapter: str
    version: str = ""
    sequence: int | None = None


@dataclass(frozen=True)
class ReleasePod:
    """One pod of a release, and what it serves (inference) or last snapshotted (trainer)."""

    name: str
    component: str
    phase: str
    ready: bool
    node: str = ""
    restarts: int = 0
    started: datetime | None = None
    adapters: tuple[AdapterVersion, ...] = field(default_factory=tuple)
    error: str = ""  # why adapters could not be read (pod not running, proxy refused, ...)


def parse_adapter_versions(metrics_text: str) -> tuple[AdapterVersion, ...]:
    """Adapter versions from a Prometheus exposition (a pod's /metrics)."""
    versions: dict[str, str] = {}
    sequences: dict[str, int] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            adapter = sample.labels.get("adapter")
            if not adapter:
                continue
            if sample.name == VERSION_INFO and sample.value == 1:
                versions[adapter] = sample.labels.get("version", "")
            elif sample.name in (SERVED_SEQUENCE, TRAINER_SEQUENCE):
                sequences[adapter] = int(sample.value)
    return tuple(
        AdapterVersion(a, versions.get(a, ""), sequences.get(a))
        for a in sorted(set(versions) | set(sequences))
    )


def release_selector(release: str) -> str:
    """Label selector of a release's pods (labels set by helm/perennial)."""
    return f"app.kubernetes.io/instance={release},app.kubernetes.io/part-of=perennial"


def _metrics_port(pod: client.V1Pod) -> int | None:
    for container in pod.spec.containers or []:
        for port in container.ports or []:
            if port.name == "metrics":
                return port.container_port
    return None


def _is_ready(pod: client.V1Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))


def list_release_pods(
    release: str, namespace: str, *, api: client.ApiClient | None = None, read_versions: bool = True
) -> list[ReleasePod]:
    """The pods of `release` in `namespace`, sorted by component and name.

    `api`: an API client (default: `connect()`: the kubeconfig, as kubectl would, or the
    in-cluster service account; with neither, one log line and an empty list). With
    `read_versions`, each running pod's /metrics is read through the API server proxy; a pod
    that cannot be read keeps its row with `error` set. API errors of the listing itself
    (e.g. 403: the caller may not list pods) raise `kubernetes.client.ApiException`.
    """
    if api is None:
        api = connect()
        if api is None:
            return []
    core = client.CoreV1Api(api)
    pods = core.list_namespaced_pod(
        namespace, label_selector=release_selector(release), _request_timeout=REQUEST_TIMEOUT
    ).items
    rows = []
    for pod in pods:
        labels = pod.metadata.labels or {}
        statuses = pod.status.container_statuses or []
        row = dict(
            name=pod.metadata.name,
            component=labels.get("app.kubernetes.io/component", ""),
            phase=pod.status.phase or "Unknown",
            ready=_is_ready(pod),
            node=pod.spec.node_name or "",
            restarts=sum(s.restart_count or 0 for s in statuses),
            started=pod.status.start_time,
        )
        adapters: tuple[AdapterVersion, ...] = ()
        error = ""
        port = _metrics_port(pod)
        if read_versions and row["phase"] == "Running" and port is not None:
            try:
                text = core.connect_get_namespaced_pod_proxy_with_path(
                    f"{pod.metadata.name}:{port}",
                    namespace,
                    "metrics",
                    _request_timeout=REQUEST_TIMEOUT,
                )
                adapters = parse_adapter_versions(text)
            except ApiException as exc:
                error = f"metrics via API proxy: HTTP {exc.status} {exc.reason}"
            except Exception as exc:  # connection errors, timeouts, unparsable exposition
                error = f"metrics via API proxy: {type(exc).__name__}: {exc}"
        elif read_versions:
            error = f"not running ({row['phase']})" if port is not None else "no port named metrics"
        rows.append(ReleasePod(**row, adapters=adapters, error=error))
    return sorted(rows, key=lambda r: (r.component, r.name))

"""The pods of a Helm release, their addresses, and the adapter versions each serves
(`perennial pods`; `perennial status --release` takes the trainers' addresses from here).

Versions are read by *calling each pod*: its /metrics endpoint through the API
server's pod proxy (`GET pods/<name>:<port>/proxy/metrics`), so it works from an
operator's laptop, needs no write access for the services (a pod annotation would
need `patch pods` for every inference replica and an API write per swap) and
shows what the process really serves. The caller needs `list pods` and
`get pods/proxy`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from prometheus_client.parser import text_string_to_metric_families

from perennial.cli.cluster import connect_cluster
from perennial.kube import REQUEST_TIMEOUT
from perennial.metrics import full_name

# Metric families that name what a pod serves (services/*/metrics.py).
VERSION_INFO = full_name("inference", "adapter_version_info")  # 1 for {adapter, version} served
SERVED_SEQUENCE = full_name(
    "inference", "served_sequence"
)  # {adapter} -> sequence of the served version
TRAINER_SEQUENCE = full_name(
    "trainer", "snapshot_sequence"
)  # {adapter} -> newest snapshot's sequence


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
    ip: str = ""  # the pod's IP ("" until it is scheduled and has one)
    ports: dict[str, int] = field(default_factory=dict)  # named container ports -> number
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


def release_selector(release: str, component: str | None = None) -> str:
    """Label selector of a release's pods (labels set by helm/perennial), of one component
    ("trainer", "inference") when given."""
    selector = f"app.kubernetes.io/instance={release},app.kubernetes.io/part-of=perennial"
    return f"{selector},app.kubernetes.io/component={component}" if component else selector


def _named_ports(pod: client.V1Pod) -> dict[str, int]:
    return {
        port.name: port.container_port
        for container in pod.spec.containers or []
        for port in container.ports or []
        if port.name
    }


def _is_ready(pod: client.V1Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))


def list_release_pods(
    release: str,
    namespace: str,
    *,
    api: client.ApiClient | None = None,
    read_versions: bool = True,
    component: str | None = None,
) -> list[ReleasePod]:
    """The pods of `release` in `namespace` (only `component`'s, when given), sorted by
    component and name.

    `api`: an API client (default: `connect_cluster()`: the kubeconfig, as kubectl would, or the
    in-cluster service account; with neither it raises `perennial.cli.cluster.NoCluster`). With
    `read_versions`, each running pod's /metrics is read through the API server proxy; a pod
    that cannot be read keeps its row with `error` set. API errors of the listing itself
    (e.g. 403: the caller may not list pods) raise `kubernetes.client.ApiException`.
    """
    if api is None:
        api = connect_cluster().api
    core = client.CoreV1Api(api)
    pods = core.list_namespaced_pod(
        namespace,
        label_selector=release_selector(release, component),
        _request_timeout=REQUEST_TIMEOUT,
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
            ip=pod.status.pod_ip or "",
            ports=_named_ports(pod),
        )
        adapters: tuple[AdapterVersion, ...] = ()
        error = ""
        port = row["ports"].get("metrics")
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

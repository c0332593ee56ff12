"""services.trainer.kube_events: the requests the kubernetes client builds, and the skip path outside a cluster.

The requests go over real HTTPS to a loopback endpoint that records them (tests/deploy/conftest.py),
with the in-cluster token and CA files a pod would have. No API server runs here.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest
from kubernetes import client
from prometheus_client import CollectorRegistry, Gauge, generate_latest

from perennial.cli.cluster import NoCluster
from perennial.cli.pods import list_release_pods, parse_adapter_versions
from perennial.kube import in_cluster_api
from services.inference.metrics import InferenceMetrics
from services.trainer.kube_events import EventReason, EventRecorder, PodRef, build_event

EVENTS = "/api/v1/namespaces/ml/events"


def _recorder(endpoint, **kwargs) -> EventRecorder:
    api = in_cluster_api(
        endpoint.environ, token_file=str(endpoint.token_file), ca_file=str(endpoint.ca_file)
    )
    assert api is not None
    env = endpoint.environ
    pod = PodRef(
        env["PERENNIAL_POD_NAME"], env["PERENNIAL_POD_NAMESPACE"], env["PERENNIAL_POD_UID"]
    )
    return EventRecorder(api, pod, **kwargs)


def test_event_body_names_the_pod_reason_and_type() -> None:
    pod = PodRef("perennial-trainer-0", "ml", "uid-1")
    now = datetime(2026, 11, 23, 15, 0, 0, tzinfo=UTC)
    body = client.ApiClient().sanitize_for_serialization(
        build_event(pod, EventReason.GUARDRAIL_HELD, "x" * 5000, now)
    )
    assert body["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": "perennial-trainer-0",
        "namespace": "ml",
        "uid": "uid-1",
    }
    assert body["reason"] == "GuardrailHeld" and body["type"] == "Warning"
    assert body["metadata"]["name"] == f"perennial-trainer-0.{int(now.timestamp() * 1e9):x}"
    assert body["source"] == {"component": "perennial-trainer"}
    assert body["firstTimestamp"] == body["lastTimestamp"] == "2026-11-23T15:00:00+00:00"
    assert len(body["message"]) == 1024  # capped


def test_reasons_and_types() -> None:
    assert {(r.reason, r.type) for r in EventReason} == {
        ("DriftDetected", "Warning"),
        ("GuardrailHeld", "Warning"),
        ("Promoted", "Normal"),
        ("RolledBack", "Normal"),
        ("SnapshotCorrupted", "Warning"),
    }


def test_recorder_posts_event_with_service_account_token(api_endpoint) -> None:
    api_endpoint.route("POST", EVENTS, 201)  # the API server answers with the created object
    recorder = _recorder(api_endpoint)
    recorder.record(EventReason.PROMOTED, "adapter wordnet: v000012-3f2a promoted to head")
    assert recorder.flush()

    [request] = api_endpoint.requests
    assert (request.method, request.path) == ("POST", EVENTS)
    assert request.headers["authorization"].lower() == "bearer test-service-account-token"
    assert request.body["kind"] == "Event" and request.body["apiVersion"] == "v1"
    assert request.body["involvedObject"]["name"] == "perennial-trainer-7d9f-abcde"
    assert request.body["involvedObject"]["uid"] == "0b9e8c1a-1111-2222-3333-444455556666"
    assert request.body["reason"] == "Promoted" and request.body["type"] == "Normal"
    assert request.body["message"] == "adapter wordnet: v000012-3f2a promoted to head"
    assert request.body["count"] == 1


def test_repeated_event_patches_the_count(api_endpoint) -> None:
    api_endpoint.route("POST", EVENTS, 201)  # the API server answers with the created object
    recorder = _recorder(api_endpoint)
    recorder.record(EventReason.DRIFT_DETECTED, "adapter wordnet: input drift")
    assert recorder.flush()
    name = api_endpoint.requests[0].body["metadata"]["name"]
    api_endpoint.route("PATCH", f"{EVENTS}/{name}", 200, api_endpoint.requests[0].body)
    recorder.record(EventReason.DRIFT_DETECTED, "adapter wordnet: input drift")
    recorder.record(EventReason.ROLLED_BACK, "adapter wordnet: rolled back to v000010-aa11")
    assert recorder.flush()

    methods = [(r.method, r.path) for r in api_endpoint.requests]
    assert methods == [("POST", EVENTS), ("PATCH", f"{EVENTS}/{name}"), ("POST", EVENTS)]
    patch = api_endpoint.requests[1]
    assert patch.body["count"] == 2 and patch.body["lastTimestamp"].endswith("Z")
    assert patch.headers["content-type"] in (
        "application/strategic-merge-patch+json",
        "application/merge-patch+json",
    )


def test_api_errors_are_logged_not_raised(api_endpoint, caplog) -> None:
    api_endpoint.route("POST", EVENTS, 403, {"kind": "Status", "code": 403, "reason": "Forbidden"})
    recorder = _recorder(api_endpoint)
    with caplog.at_level(logging.WARNING, logger="services.trainer.kube_events"):
        recorder.record(EventReason.GUARDRAIL_HELD, "held")
        assert recorder.flush()
    assert "kubernetes event not recorded" in caplog.text


def test_outside_a_cluster_recording_is_skipped_with_one_log_line(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="services.trainer.kube_events"):
        recorder = EventRecorder.for_pod("p", "ns", environ={})
        for _ in range(3):
            recorder.record(EventReason.PROMOTED, "no cluster here")
    assert not recorder.enabled
    assert [r.getMessage() for r in caplog.records] == ["kubernetes events skipped"]
    assert recorder.flush(timeout=0.1)


def test_skipped_without_downward_api_or_when_switched_off(api_endpoint) -> None:
    environ = api_endpoint.environ
    assert EventRecorder.for_pod("p", "ml", enabled=False, environ=environ).enabled is False
    assert EventRecorder.for_pod("", "ml", environ=environ).enabled is False
    # service host set but no token mounted (the inference pods): no API client
    assert in_cluster_api(api_endpoint.environ, token_file="/nonexistent/token") is None


def _pod(name: str, component: str, phase: str = "Running", ready: bool = True) -> dict:
    port = {"inference": 9101, "trainer": 9100}[component]
    return {
        "metadata": {
            "name": name,
            "namespace": "ml",
            "labels": {
                "app.kubernetes.io/component": component,
                "app.kubernetes.io/instance": "prod",
            },
        },
        "spec": {
            "nodeName": "node-a",
            "containers": [
                {
                    "name": component,
                    "image": "x",
                    "ports": [{"name": "metrics", "containerPort": port}],
                }
            ],
        },
        "status": {
            "phase": phase,
            "conditions": [{"type": "Ready", "status": str(ready)}],
            "containerStatuses": [
                {
                    "name": component,
                    "restartCount": 2,
                    "ready": ready,
                    "image": "x",
                    "imageID": "",
                    "started": True,
                }
            ],
            "startTime": "2026-11-23T14:00:00Z",
        },
    }


def _inference_metrics() -> str:
    registry = CollectorRegistry()
    metrics = InferenceMetrics(registry)
    metrics.served_sequence.labels(adapter="wordnet").set(12)
    metrics.served_sequence.labels(adapter="tickets").set(3)
    metrics.version_info.labels(adapter="wordnet", version="v000012-3f2a").set(1)
    metrics.version_info.labels(adapter="wordnet", version="v000011-9c0d").set(0)  # swapped out
    return generate_latest(registry).decode()


def test_release_pods_with_the_versions_they_serve(api_endpoint) -> None:
    pods = "/api/v1/namespaces/ml/pods"
    api_endpoint.route(
        "GET",
        pods,
        200,
        {
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {},
            "items": [
                _pod("prod-perennial-inference-b", "inference"),
                _pod("prod-perennial-inference-a", "inference"),
                _pod("prod-perennial-trainer-x", "trainer"),
                _pod("prod-perennial-inference-c", "inference", "Pending", False),
            ],
        },
    )
    api_endpoint.route(
        "GET",
        f"{pods}/prod-perennial-inference-a:9101/proxy/metrics",
        200,
        _inference_metrics(),
        "text/plain; version=0.0.4",
    )
    api_endpoint.route(
        "GET",
        f"{pods}/prod-perennial-inference-b:9101/proxy/metrics",
        503,
        {"kind": "Status", "code": 503, "reason": "ServiceUnavailable"},
    )
    trainer_registry = CollectorRegistry()
    Gauge(
        "snapshot_sequence",
        "x",
        ["adapter"],
        namespace="perennial",
        subsystem="trainer",
        registry=trainer_registry,
    ).labels(adapter="wordnet").set(13)
    api_endpoint.route(
        "GET",
        f"{pods}/prod-perennial-trainer-x:9100/proxy/metrics",
        200,
        generate_latest(trainer_registry).decode(),
        "text/plain",
    )
    api = in_cluster_api(
        api_endpoint.environ,
        token_file=str(api_endpoint.token_file),
        ca_file=str(api_endpoint.ca_file),
    )

    rows = list_release_pods("prod", "ml", api=api)

    listing = api_endpoint.requests[0]
    assert listing.path == pods
    assert listing.query["labelSelector"] == [
        "app.kubernetes.io/instance=prod,app.kubernetes.io/part-of=perennial"
    ]
    assert [(r.name, r.component, r.ready) for r in rows] == [
        ("prod-perennial-inference-a", "inference", True),
        ("prod-perennial-inference-b", "inference", True),
        ("prod-perennial-inference-c", "inference", False),
        ("prod-perennial-trainer-x", "trainer", True),
    ]
    a, b, c, trainer = rows
    assert [(v.adapter, v.version, v.sequence) for v in a.adapters] == [
        ("tickets", "", 3),
        ("wordnet", "v000012-3f2a", 12),
    ]
    assert a.restarts == 2 and a.node == "node-a" and a.error == ""
    assert b.adapters == () and "HTTP 503" in b.error
    assert c.error == "not running (Pending)"
    assert [(v.adapter, v.sequence) for v in trainer.adapters] == [("wordnet", 13)]
    # only running pods were called, each through the API server proxy
    assert len(api_endpoint.requests) == 4


def test_release_pods_outside_any_cluster_is_an_error_naming_kubeconfig(
    monkeypatch, tmp_path
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(NoCluster, match="KUBECONFIG=.*no-such-kubeconfig does not exist"):
        list_release_pods("prod", "ml")


def test_parse_ignores_unrelated_metrics() -> None:
    text = "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 1.0\n"
    assert parse_adapter_versions(text) == ()

"""`perennial status --release`: trainer pods from the (recording) Kubernetes API, each asked at
its IP and control port, here two real trainer control servers on 127.0.0.1."""

from __future__ import annotations

import json

from tests.shared.cli.conftest import TOKEN, write_kubeconfig

PODS = "/api/v1/namespaces/ml/pods"


def _pod(name: str, control_port: int | None, phase: str = "Running") -> dict:
    ports = [{"name": "metrics", "containerPort": 9100}]
    if control_port is not None:
        ports.insert(0, {"name": "control", "containerPort": control_port})
    status = {"phase": phase}
    if phase == "Running":
        status["podIP"] = "127.0.0.1"
    return {
        "metadata": {
            "name": name,
            "labels": {
                "app.kubernetes.io/component": "trainer",
                "app.kubernetes.io/instance": "prod",
            },
        },
        "spec": {"containers": [{"name": "trainer", "ports": ports}]},
        "status": status,
    }


def _route_pods(api_endpoint, replicas) -> None:
    api_endpoint.route(
        "GET",
        PODS,
        200,
        {
            "kind": "PodList",
            "apiVersion": "v1",
            "metadata": {},
            "items": [
                _pod("prod-perennial-trainer-b", replicas[1].port),
                _pod("prod-perennial-trainer-a", replicas[0].port),
                _pod("prod-perennial-trainer-c", 50051, phase="Pending"),
                _pod("prod-perennial-trainer-d", 1),  # running, but nothing listens
            ],
        },
    )


def _status(perennial, api_endpoint, tmp_path, *args: str):
    kubeconfig = write_kubeconfig(api_endpoint, tmp_path / "config")
    env = {"KUBECONFIG": str(kubeconfig), "PERENNIAL_AUTH_TOKEN": TOKEN}
    return perennial("status", "--release", "prod", "--timeout", "2", *args, env=env)


def test_status_of_every_replica_as_json(perennial, api_endpoint, tmp_path, replicas) -> None:
    _route_pods(api_endpoint, replicas)

    result = _status(perennial, api_endpoint, tmp_path, "-o", "json")

    assert result.exit_code == 1  # one replica could not be asked
    [listing] = api_endpoint.requests  # only the listing: the pods are called directly
    assert listing.query["labelSelector"] == [
        "app.kubernetes.io/instance=prod,app.kubernetes.io/part-of=perennial,"
        "app.kubernetes.io/component=trainer"
    ]
    rows = {r["pod"]: r for r in json.loads(result.stdout)}
    assert list(rows) == [f"prod-perennial-trainer-{x}" for x in "abcd"]  # sorted by name
    a, b, c, d = rows.values()
    topic = replicas[0].topic
    assert a["address"] == replicas[0].address and a["partitions"] == [f"{topic}:0"]
    assert [s["adapter"] for s in a["adapters"]] == ["wordnet"] and a["error"] == ""
    assert a["adapters"][0]["examples"] == "8"
    assert b["partitions"] == [f"{topic}:1"] and [s["adapter"] for s in b["adapters"]] == [
        "tickets"
    ]
    assert c == {
        "pod": c["pod"],
        "address": "",
        "partitions": [],
        "adapters": [],
        "error": "not running (Pending)",
    }
    assert d["address"] == "127.0.0.1:1" and d["error"].startswith("UNAVAILABLE: ")


def test_status_of_every_replica_as_a_table(perennial, api_endpoint, tmp_path, replicas) -> None:
    _route_pods(api_endpoint, replicas)

    result = _status(perennial, api_endpoint, tmp_path)

    lines = [line.split() for line in result.stdout.splitlines() if line.strip()]
    assert lines[0] == [
        "pod",
        "partitions",
        "adapter",
        "head",
        "candidate",
        "examples",
        "lag",
        "paused",
        "classes",
        "note",
    ]
    by_pod = {line[0]: line for line in lines[2:]}  # [1] is the rule under the header
    topic = replicas[0].topic
    assert by_pod["prod-perennial-trainer-a"][1:3] == [f"{topic}:0", "wordnet"]
    assert by_pod["prod-perennial-trainer-b"][1:3] == [f"{topic}:1", "tickets"]
    assert by_pod["prod-perennial-trainer-c"][-3:] == ["not", "running", "(Pending)"]
    assert "UNAVAILABLE:" in by_pod["prod-perennial-trainer-d"]


def test_status_of_one_adapter_across_replicas(perennial, api_endpoint, tmp_path, replicas) -> None:
    _route_pods(api_endpoint, replicas)
    result = _status(perennial, api_endpoint, tmp_path, "tickets", "-o", "json")
    owners = [r["pod"] for r in json.loads(result.stdout) if r["adapters"]]
    assert owners == ["prod-perennial-trainer-b"]


def test_no_trainer_pods_is_an_error(perennial, api_endpoint, tmp_path) -> None:
    api_endpoint.route("GET", PODS, 200, {"kind": "PodList", "apiVersion": "v1", "items": []})
    result = _status(perennial, api_endpoint, tmp_path)
    assert result.exit_code == 1
    assert result.stderr == "perennial: no trainer pods of release 'prod' in namespace 'ml'\n"

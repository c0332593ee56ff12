"""`perennial pods` and the cluster it asks: the kubeconfig's namespace, and no cluster is an
error, over real HTTPS to the recording endpoint of tests/deploy (no API server runs here)."""

from __future__ import annotations

import json

import pytest

from perennial.cli.cluster import NoCluster, connect_cluster
from tests.shared.cli.conftest import write_kubeconfig

LISTING = {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": []}


def _trainer_pod(name: str) -> dict:
    return {
        "metadata": {"name": name, "labels": {"app.kubernetes.io/component": "trainer"}},
        "spec": {
            "containers": [
                {"name": "trainer", "ports": [{"name": "metrics", "containerPort": 9100}]}
            ]
        },
        "status": {"phase": "Pending"},
    }


@pytest.mark.parametrize(
    "context_namespace, args, expected",
    [
        ("ml", [], "ml"),  # the current context's namespace
        (None, [], "default"),  # a context without one
        ("ml", ["-n", "prod-ns"], "prod-ns"),  # typed
        ("ml", ["--namespace", "prod-ns"], "prod-ns"),
    ],
)
def test_pods_namespace_from_the_kubeconfig_context(
    perennial, api_endpoint, tmp_path, context_namespace, args, expected
) -> None:
    api_endpoint.route(
        "GET", f"/api/v1/namespaces/{expected}/pods", 200, {**LISTING, "items": [_trainer_pod("t")]}
    )
    kubeconfig = write_kubeconfig(api_endpoint, tmp_path / "config", context_namespace)

    result = perennial("pods", "prod", *args, env={"KUBECONFIG": str(kubeconfig)})

    assert result.exit_code == 0, result.output
    [listing] = api_endpoint.requests
    assert listing.path == f"/api/v1/namespaces/{expected}/pods"
    assert listing.headers["authorization"] == "Bearer operator-token"
    assert listing.query["labelSelector"] == [
        "app.kubernetes.io/instance=prod,app.kubernetes.io/part-of=perennial"
    ]
    assert "t" in result.stdout.split() and "not running (Pending)" in result.stdout


def test_pods_json(perennial, api_endpoint, tmp_path) -> None:
    api_endpoint.route(
        "GET", "/api/v1/namespaces/ml/pods", 200, {**LISTING, "items": [_trainer_pod("t")]}
    )
    kubeconfig = write_kubeconfig(api_endpoint, tmp_path / "config")
    result = perennial("-o", "json", "pods", "prod", env={"KUBECONFIG": str(kubeconfig)})
    assert result.exit_code == 0, result.output
    [pod] = json.loads(result.stdout)
    assert pod["name"] == "t" and pod["component"] == "trainer" and pod["phase"] == "Pending"
    assert pod["ports"] == {"metrics": 9100} and pod["error"] == "not running (Pending)"


def test_no_pods_is_said_on_stderr(perennial, api_endpoint, tmp_path) -> None:
    api_endpoint.route("GET", "/api/v1/namespaces/ml/pods", 200, LISTING)
    kubeconfig = write_kubeconfig(api_endpoint, tmp_path / "config")
    result = perennial("pods", "prod", env={"KUBECONFIG": str(kubeconfig)})
    assert result.exit_code == 0 and result.stdout == ""
    assert "no pods of release 'prod' in namespace 'ml'" in result.stderr


@pytest.mark.parametrize("kubeconfig_set", [True, False])
def test_pods_without_a_cluster_is_an_error_naming_kubeconfig(
    perennial, tmp_path, kubeconfig_set
) -> None:
    env = {"KUBECONFIG": str(tmp_path / "no-such-kubeconfig")} if kubeconfig_set else {}
    result = perennial("pods", "prod", env=env)
    assert result.exit_code == 1 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("perennial: no Kubernetes cluster to ask: ")
    tried = (
        f"KUBECONFIG={tmp_path}/no-such-kubeconfig does not exist"
        if kubeconfig_set
        else "KUBECONFIG is unset and ~/.kube/config does not exist"
    )
    assert tried in line and "KUBERNETES_SERVICE_HOST is unset" in line
    assert line.endswith("set KUBECONFIG to your cluster's kubeconfig")


def test_an_api_error_is_one_line(perennial, api_endpoint, tmp_path) -> None:
    api_endpoint.route(
        "GET",
        "/api/v1/namespaces/ml/pods",
        403,
        {"kind": "Status", "code": 403, "reason": "Forbidden", "message": "pods is forbidden"},
    )
    kubeconfig = write_kubeconfig(api_endpoint, tmp_path / "config")
    result = perennial("pods", "prod", env={"KUBECONFIG": str(kubeconfig)})
    assert result.exit_code == 1
    assert result.stderr == "perennial: Kubernetes API: HTTP 403 Forbidden: pods is forbidden\n"


def test_an_api_server_that_does_not_answer_is_one_line(perennial, api_endpoint, tmp_path) -> None:
    kubeconfig = write_kubeconfig(api_endpoint, tmp_path / "config", port=1)  # nothing listens
    result = perennial("pods", "prod", env={"KUBECONFIG": str(kubeconfig)})
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line.startswith(
        f"perennial: Kubernetes API at https://127.0.0.1:1 (kubeconfig {kubeconfig}, context test) "
        "not reached: "
    )
    assert "Connection refused" in line


def test_a_broken_kubeconfig_is_named(tmp_path) -> None:
    broken = tmp_path / "config"
    broken.write_text("apiVersion: v1\nkind: Config\n")  # no contexts
    with pytest.raises(NoCluster, match=f"kubeconfig {broken} cannot be used"):
        connect_cluster({"KUBECONFIG": str(broken)})


def test_in_a_pod_the_service_account_and_its_namespace(api_endpoint, tmp_path) -> None:
    (api_endpoint.token_file.parent / "namespace").write_text("ml-ns")
    environ = {**api_endpoint.environ, "KUBECONFIG": str(tmp_path / "none")}
    cluster = connect_cluster(
        environ, token_file=str(api_endpoint.token_file), ca_file=str(api_endpoint.ca_file)
    )
    assert (cluster.namespace, cluster.source) == ("ml-ns", "in-cluster service account")
    with pytest.raises(NoCluster, match="no service-account token at /nonexistent/token"):
        connect_cluster(environ, token_file="/nonexistent/token")

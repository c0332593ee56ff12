"""helm/perennial: strict lint, renders with every value set validated against Kubernetes 1.30 and
1.37 schemas, and the properties operators rely on (probes, selectors, hardening, GPU, secrets)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import helm_python
import pytest
import yaml
from kubernetes_validate import utils as kv

from tests.deploy.values import EXISTING_SECRETS, FULL, GPU, MINIMAL, VALUE_SETS

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "perennial"
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
# Custom resources: no schema in kubernetes-validate; checked field by field below.
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule", "KafkaTopic"}
STARTUP_BUDGET_SECONDS = 120  # loading the backbone on a busy node


def _env(rendered, component: str) -> dict[str, object]:
    """Environment of a component's container: ConfigMap data + env entries (value or valueFrom)."""
    deployment = rendered.one("Deployment", component)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    environment: dict[str, object] = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        [config_map] = [o for o in rendered.all("ConfigMap") if o["metadata"]["name"] == name]
        environment.update(config_map["data"])
    for entry in container.get("env", []):
        environment[entry["name"]] = entry.get("value", entry.get("valueFrom"))
    return environment


def _pod_spec(rendered, component: str) -> dict:
    return rendered.one("Deployment", component)["spec"]["template"]["spec"]


# --- lint and schema validation --------------------------------------------------------------


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_lint_strict(value_set: str) -> None:
    report = helm_python.lint(
        str(CHART), VALUE_SETS[value_set], strict=True, namespace="ml", kube_version="v1.30.0"
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # warnings and errors
    assert report["errors"] == [] and problems == [], report


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_every_object_validates_strictly(render, value_set: str, version: str) -> None:
    rendered = render(VALUE_SETS[value_set])
    assert rendered.objects
    for obj in rendered.objects:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        try:
            validated = kv.validate(obj, version, strict=True)
        except kv.ValidationError as error:
            pytest.fail(
                f"{obj['kind']}/{obj['metadata']['name']} ({value_set}, {version}): "
                f"{'.'.join(map(str, error.path))}: {error.message}"
            )
        assert validated == version.rsplit(".", 1)[0]  # the exact schema, not an older fallback


def test_kubernetes_validate_has_the_versions_we_test() -> None:
    assert {"1.30.0", "1.37.0"} <= set(kv.all_versions())


def test_schema_rejects_bad_values(chart) -> None:
    for bad, where in [
        ({"trainer": {"replicas": "two"}}, "/trainer/replicas"),
        ({"kafka": {"securityProtocol": "TLS"}}, "/kafka/securityProtocol"),
        ({"inference": {"grpcPort": 70000}}, "/inference/grpcPort"),
        ({"redis": {"url": "redis-master:6379"}}, "/redis/url"),
        ({"trainer": {"pet": "ia3"}}, "/trainer/pet"),
        ({"typo": 1}, "typo"),
    ]:
        with pytest.raises(helm_python.HelmValuesError, match=where):
            chart.render(values=bad, name="perennial", namespace="ml")


@pytest.mark.parametrize(
    "values, message",
    [
        ({"trainer": {"replicas": 7}}, r"trainer.replicas \(7\) must be <= kafka.partitions \(6\)"),
        ({"auth": {"enabled": True}}, "auth.enabled needs auth.token or auth.existingSecret"),
        ({"tls": {"enabled": True, "cert": "x"}}, "tls.enabled needs tls.existingSecret or both"),
        (
            {"kafka": {"securityProtocol": "SASL_SSL", "sasl": {"username": "u"}}},
            "needs kafka.sasl.password",
        ),
        (
            {"tls": {"enabled": True, "cert": "c", "key": "k", "mutual": True}},
            "tls.mutual needs tls.ca",
        ),
    ],
)
def test_render_fails_with_a_clear_message(chart, values: dict, message: str) -> None:
    with pytest.raises(helm_python.HelmRenderError, match=message):
        chart.render(values=values, name="perennial", namespace="ml")


# --- probes, ports, services ------------------------------------------------------------------


@pytest.mark.parametrize("value_set", ["default", "minimal", "gpu"])
def test_probes_are_native_grpc_on_the_ports_the_services_listen_on(render, value_set: str) -> None:
    rendered = render(VALUE_SETS[value_set])
    for component, port_variable in (
        ("inference", "PERENNIAL_GRPC_PORT"),
        ("trainer", "PERENNIAL_CONTROL_PORT"),
    ):
        container = _pod_spec(rendered, component)["containers"][0]
        listening = int(_env(rendered, component)[port_variable])
        declared = {p["containerPort"] for p in container["ports"]}
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = container[kind]
            assert probe["grpc"]["port"] == listening and listening in declared, (component, kind)
        startup = container["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= STARTUP_BUDGET_SECONDS


def test_default_ports(render) -> None:
    rendered = render({})
    assert _env(rendered, "inference")["PERENNIAL_GRPC_PORT"] == "8001"
    assert _env(rendered, "inference")["PERENNIAL_METRICS_PORT"] == "9101"
    assert _env(rendered, "trainer")["PERENNIAL_CONTROL_PORT"] == "50051"
    assert _env(rendered, "trainer")["PERENNIAL_METRICS_PORT"] == "9100"
    assert _env(rendered, "inference")["PERENNIAL_REST_PORT"] == "8000"
    service = rendered.one("Service", "inference")
    assert {(p["name"], p["port"], p["appProtocol"]) for p in service["spec"]["ports"]} == {
        ("grpc", 8001, "kubernetes.io/h2c"),
        ("http", 8000, "http"),
        ("metrics", 9101, "http"),
    }


@pytest.mark.parametrize("value_set", ["default", "full"])
def test_the_rest_port_is_declared_served_and_allowed_where_the_service_listens(
    render, value_set: str
) -> None:
    rendered = render(VALUE_SETS[value_set])
    listening = int(_env(rendered, "inference")["PERENNIAL_REST_PORT"])
    container = _pod_spec(rendered, "inference")["containers"][0]
    assert {"name": "http", "containerPort": listening, "protocol": "TCP"} in container["ports"]
    [port] = [
        p for p in rendered.one("Service", "inference")["spec"]["ports"] if p["name"] == "http"
    ]
    assert port["targetPort"] == "http"
    tls = VALUE_SETS[value_set].get("tls", {}).get("enabled", False)
    assert port["appProtocol"] == ("https" if tls else "http")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert "httpGet" not in container[probe]  # gRPC health stays the probe
    if rendered.all("NetworkPolicy"):
        client_rule = rendered.one("NetworkPolicy", "inference")["spec"]["ingress"][0]
        assert {"port": listening, "protocol": "TCP"} in client_rule["ports"]


def test_with_tls_the_probes_exec_the_health_script_with_the_pod_certificates(render) -> None:
    rendered = render(FULL)
    for component, port in (("inference", 8001), ("trainer", 50051)):
        spec = _pod_spec(rendered, component)
        container = spec["containers"][0]
        command = container["readinessProbe"]["exec"]["command"]
        assert command[:2] == ["python", "/opt/perennial/probe/grpc-health-probe.py"]
        assert f"--port={port}" in command and f"--server-name=pn-{component}" in command
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert (
            mounts["probe"] == "/opt/perennial/probe"
            and mounts["tls"] == "/var/run/secrets/perennial/tls"
        )
        environment = _env(rendered, component)
        assert environment["PERENNIAL_TLS_CERT_FILE"] == "/var/run/secrets/perennial/tls/tls.crt"
        assert (
            environment["PERENNIAL_TLS_CLIENT_CA_FILE"] == "/var/run/secrets/perennial/tls/ca.crt"
        )
    [probe_map] = [o for o in rendered.all("ConfigMap") if o["metadata"]["name"] == "pn-probe"]
    script = probe_map["data"]["grpc-health-probe.py"]
    assert script == open(CHART / "files/grpc-health-probe.py").read()
    assert rendered.one("Service", "inference")["spec"]["ports"][0]["appProtocol"] == "grpc"


@pytest.mark.parametrize("value_set", ["default", "full"])
def test_services_select_their_pods(render, value_set: str) -> None:
    rendered = render(VALUE_SETS[value_set])
    for component in ("inference", "trainer"):
        selector = rendered.one("Service", component)["spec"]["selector"]
        pod_labels = rendered.one("Deployment", component)["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= pod_labels.items()
        ports = {p["name"] for p in _pod_spec(rendered, component)["containers"][0]["ports"]}
        assert {
            p["targetPort"] for p in rendered.one("Service", component)["spec"]["ports"]
        } <= ports


# --- monitoring -----------------------------------------------------------------------------


def _matches(selector: dict, labels: dict) -> bool:
    """Kubernetes label-selector semantics (matchLabels + matchExpressions)."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        value, present = labels.get(expression["key"]), expression["key"] in labels
        operator = expression["operator"]
        if operator == "In" and value not in expression["values"]:
            return False
        if operator == "NotIn" and value in expression["values"]:
            return False
        if operator == "Exists" and not present or operator == "DoesNotExist" and present:
            return False
    return True


@pytest.mark.parametrize("value_set", ["full", "monitoring-only"])
def test_service_monitor_selects_both_services_and_their_metrics_ports(
    render, value_set: str
) -> None:
    values = FULL if value_set == "full" else {"monitoring": {"serviceMonitor": {"enabled": True}}}
    rendered = render(values, namespace="observed")
    monitor = rendered.one("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["observed"]}
    selected = [
        s
        for s in rendered.all("Service")
        if _matches(monitor["spec"]["selector"], s["metadata"]["labels"])
    ]
    assert sorted(s["metadata"]["labels"]["app.kubernetes.io/component"] for s in selected) == [
        "inference",
        "trainer",
    ]
    for endpoint in monitor["spec"]["endpoints"]:
        for service in selected:
            assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
        assert endpoint["path"] == "/metrics"
    # and nothing of another release
    other = render(values, name="other", namespace="observed")
    assert not [
        s
        for s in other.all("Service")
        if _matches(monitor["spec"]["selector"], s["metadata"]["labels"])
    ]


def test_prometheus_rule_embeds_the_rules_with_a_configurable_release_label(render) -> None:
    rules = yaml.safe_load(open(CHART / "files/prometheus-rules.yml"))
    for release in ("kube-prometheus-stack", "prom"):
        rendered = render(
            {
                "monitoring": {
                    "release": release,
                    "prometheusRule": {"enabled": True},
                    "serviceMonitor": {"enabled": True},
                }
            }
        )
        rule, monitor = rendered.one("PrometheusRule"), rendered.one("ServiceMonitor")
        assert (
            rule["metadata"]["labels"]["release"]
            == monitor["metadata"]["labels"]["release"]
            == release
        )
        assert rule["spec"]["groups"] == (rules.get("groups") or [])
    assert (
        "release"
        not in render({"monitoring": {"release": "", "prometheusRule": {"enabled": True}}}).one(
            "PrometheusRule"
        )["metadata"]["labels"]
    )


def test_tracing_is_off_by_default_and_configures_both_services(render) -> None:
    for component in ("inference", "trainer"):
        assert "PERENNIAL_TRACING_ENDPOINT" not in _env(render({}), component)
    endpoint = "http://otel-collector.observability:4317"
    rendered = render({"tracing": {"endpoint": endpoint, "sampleRatio": 0.25}})
    for component in ("inference", "trainer"):
        environment = _env(rendered, component)
        assert environment["PERENNIAL_TRACING_ENDPOINT"] == endpoint
        assert environment["PERENNIAL_TRACING_SAMPLE_RATIO"] == "0.25"


def test_alert_runbook_urls_are_built_from_the_chart_value(render) -> None:
    base = "https://runbooks.internal/perennial/RUNBOOK.md"
    rule = render({"monitoring": {"prometheusRule": {"enabled": True}, "runbookUrl": base}}).one(
        "PrometheusRule"
    )
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
    assert alerts
    for alert in alerts:
        assert alert["annotations"]["runbook_url"] == f"{base}#{alert['alert'].lower()}"


def test_service_monitor_labels_series_with_the_release(render) -> None:
    monitor = render({"monitoring": {"serviceMonitor": {"enabled": True}}}).one("ServiceMonitor")
    [endpoint] = monitor["spec"]["endpoints"]
    assert {
        "sourceLabels": ["__meta_kubernetes_service_label_app_kubernetes_io_instance"],
        "targetLabel": "release",
    } in endpoint["relabelings"]


def test_grafana_dashboard_config_map(render) -> None:
    rendered = render(FULL)
    [dashboard] = [
        o for o in rendered.all("ConfigMap") if "grafana_dashboard" in o["metadata"]["labels"]
    ]
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["namespace"] == "grafana"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "Perennial"}
    assert json.loads(dashboard["data"]["perennial.json"]) == json.load(
        open(CHART / "files/grafana-dashboard.json")
    )


def test_monitoring_objects_are_off_by_default(render) -> None:
    kinds = {o["kind"] for o in render({}).objects}
    assert not kinds & {"ServiceMonitor", "PrometheusRule", "KafkaTopic", "NetworkPolicy"}


# --- trainer: GPU, CPU-only, replicas --------------------------------------------------------


def test_gpu_mode(render) -> None:
    rendered = render(GPU)
    spec = _pod_spec(rendered, "trainer")
    container = spec["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 2
    assert container["image"].endswith("/perennial-trainer:0.1.0-cuda")
    assert spec["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]
    assert {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"} in spec[
        "tolerations"
    ]
    assert spec["runtimeClassName"] == "nvidia"
    assert _env(rendered, "trainer")["PERENNIAL_DEVICE"] == "cuda"
    assert rendered.one("Deployment", "trainer")["spec"]["replicas"] == 3


def test_cpu_only_mode(render) -> None:
    rendered = render(VALUE_SETS["cpu-only"])
    spec = _pod_spec(rendered, "trainer")
    resources = spec["containers"][0]["resources"]
    assert not any("gpu" in key for part in resources.values() for key in part)
    assert "runtimeClassName" not in spec and "tolerations" not in spec
    assert spec["containers"][0]["image"].endswith("/perennial-trainer:0.1.0")
    assert _env(rendered, "trainer")["PERENNIAL_DEVICE"] == "cpu"


def test_trainer_rollout_never_exceeds_replicas(render) -> None:
    strategy = render({}).one("Deployment", "trainer")["spec"]["strategy"]
    assert strategy["rollingUpdate"]["maxSurge"] == 0


def test_kafka_topics_for_strimzi(render) -> None:
    topics = {t["spec"]["topicName"]: t for t in render(FULL).all("KafkaTopic")}
    assert set(topics) == {"perennial.examples", "perennial.examples.dlq", "perennial.events"}
    assert topics["perennial.examples"]["spec"]["partitions"] == 12
    for topic in topics.values():
        assert topic["apiVersion"] == "kafka.strimzi.io/v1beta2"
        assert topic["metadata"]["labels"]["strimzi.io/cluster"] == "prod"
        assert topic["spec"]["replicas"] == 3


# --- inference: HPA, PDB, spread ------------------------------------------------------------


def test_hpa_pdb_and_topology_spread_target_the_inference_pods(render) -> None:
    rendered = render({})
    deployment = rendered.one("Deployment", "inference")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert "replicas" not in deployment["spec"]  # the HPA owns the count
    hpa = rendered.one("HorizontalPodAutoscaler", "inference")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert _matches(
        rendered.one("PodDisruptionBudget", "inference")["spec"]["selector"], pod_labels
    )
    for constraint in deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]:
        assert _matches(constraint["labelSelector"], pod_labels)
    minimal = render(MINIMAL)
    assert minimal.one("Deployment", "inference")["spec"]["replicas"] == 1
    assert not minimal.all("HorizontalPodAutoscaler") and not minimal.all("PodDisruptionBudget")


# --- hardening, RBAC, network ---------------------------------------------------------------


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_pods_are_hardened(render, value_set: str) -> None:
    rendered = render(VALUE_SETS[value_set])
    for component in ("inference", "trainer"):
        spec = _pod_spec(rendered, component)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
            assert {"cpu", "memory"} <= container["resources"]["limits"].keys()
            assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_least_rbac(render) -> None:
    rendered = render({})
    [role] = rendered.all("Role")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]}
    ]
    binding = rendered.one("RoleBinding", "trainer")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "perennial-trainer", "namespace": "ml"}
    ]
    assert _pod_spec(rendered, "inference")["automountServiceAccountToken"] is False
    assert _pod_spec(rendered, "trainer")["automountServiceAccountToken"] is True
    assert _pod_spec(rendered, "trainer")["serviceAccountName"] == "perennial-trainer"
    assert not rendered.all("ClusterRole") and not rendered.all("ClusterRoleBinding")
    quiet = render({"trainer": {"kubernetesEvents": False}})
    assert (
        not quiet.all("Role")
        and _pod_spec(quiet, "trainer")["automountServiceAccountToken"] is False
    )


def test_network_policies(render) -> None:
    rendered = render(FULL)
    inference = rendered.one("NetworkPolicy", "inference")["spec"]
    grpc_rule, metrics_rule = inference["ingress"]
    assert grpc_rule["ports"] == [
        {"port": 8001, "protocol": "TCP"},  # gRPC
        {"port": 8000, "protocol": "TCP"},  # REST
    ]
    assert grpc_rule["from"] == FULL["networkPolicy"]["clientSelectors"]
    assert metrics_rule["from"] == FULL["networkPolicy"]["monitoringSelectors"]
    trainer = rendered.one("NetworkPolicy", "trainer")["spec"]
    assert trainer["ingress"][0]["from"] == [{"podSelector": {}}]  # same namespace only by default
    assert trainer["ingress"][0]["ports"] == [{"port": 50051, "protocol": "TCP"}]


# --- configuration: the environment contract, secrets ----------------------------------------

COMMON = {
    "PERENNIAL_REDIS_URL",
    "PERENNIAL_REDIS_SENTINELS",
    "PERENNIAL_REDIS_SENTINEL_MASTER",
    "PERENNIAL_REDIS_CLUSTER",
    "PERENNIAL_REDIS_PASSWORD",
    "PERENNIAL_METRICS_PORT",
    "PERENNIAL_LOG_LEVEL",
    "PERENNIAL_TORCH_THREADS",
    "PERENNIAL_BACKBONE_PATH",
    "PERENNIAL_TLS_CERT_FILE",
    "PERENNIAL_TLS_KEY_FILE",
    "PERENNIAL_TLS_CLIENT_CA_FILE",
    "PERENNIAL_AUTH_TOKEN_FILE",
    "PERENNIAL_POD_NAME",
    "PERENNIAL_POD_NAMESPACE",
}
INFERENCE = {
    "PERENNIAL_GRPC_HOST",
    "PERENNIAL_GRPC_PORT",
    "PERENNIAL_GRPC_WORKERS",
    "PERENNIAL_RECONCILE_SECONDS",
    "PERENNIAL_DRAIN_SECONDS",
    "PERENNIAL_MAX_BATCH_SIZE",
    "PERENNIAL_MAX_QUEUE_DELAY_MS",
    "PERENNIAL_MAX_QUEUE_SIZE",
    "PERENNIAL_ADAPTER_MEMORY_BYTES",
    "PERENNIAL_MAX_TEXT_CHARS",
    "PERENNIAL_MAX_MESSAGE_BYTES",
}
TRAINER = {
    "PERENNIAL_KAFKA_BOOTSTRAP",
    "PERENNIAL_KAFKA_SECURITY_PROTOCOL",
    "PERENNIAL_KAFKA_SASL_MECHANISM",
    "PERENNIAL_KAFKA_SASL_USERNAME",
    "PERENNIAL_KAFKA_SASL_PASSWORD",
    "PERENNIAL_KAFKA_SSL_CAFILE",
    "PERENNIAL_TOPIC",
    "PERENNIAL_DEAD_LETTER_TOPIC",
    "PERENNIAL_EVENTS_TOPIC",
    "PERENNIAL_GROUP_ID",
    "PERENNIAL_BATCH_SIZE",
    "PERENNIAL_BATCH_WAIT_SECONDS",
    "PERENNIAL_SNAPSHOT_EVERY_EXAMPLES",
    "PERENNIAL_SNAPSHOT_EVERY_SECONDS",
    "PERENNIAL_SEED",
    "PERENNIAL_DEVICE",
    "PERENNIAL_CONTROL_PORT",
    "PERENNIAL_PET",
    "PERENNIAL_LEARNER",
    "PERENNIAL_RETAIN_VERSIONS",
    "PERENNIAL_MAX_PENDING",
    "PERENNIAL_MAX_RECORD_BYTES",
    "PERENNIAL_GUARDRAIL_MARGIN",
    "PERENNIAL_HOLDOUT_EVERY",
    "PERENNIAL_HOLDOUT_PER_CLASS",
}


def test_full_values_set_every_variable_of_the_contract(render) -> None:
    rendered = render(FULL)
    assert COMMON | INFERENCE <= _env(rendered, "inference").keys()
    assert COMMON | TRAINER <= _env(rendered, "trainer").keys()
    assert not TRAINER & _env(rendered, "inference").keys()  # no Kafka credentials where not needed


def test_numbers_stay_whole_and_unset_knobs_are_left_to_the_services(render) -> None:
    full = render(FULL)
    assert _env(full, "trainer")["PERENNIAL_SNAPSHOT_EVERY_EXAMPLES"] == "1000000"  # not 1e+06
    assert _env(full, "inference")["PERENNIAL_MAX_MESSAGE_BYTES"] == "16777216"
    assert _env(full, "trainer")["PERENNIAL_GUARDRAIL_MARGIN"] == "0.02"
    assert _env(full, "inference")["PERENNIAL_DRIFT_INPUT_WINDOW"] == "512"
    assert _env(full, "trainer")["PERENNIAL_FORGETTING_EVERY_SECONDS"] == "60"
    default = _env(render({}), "trainer")
    assert (
        not {"PERENNIAL_GUARDRAIL_MARGIN", "PERENNIAL_RETAIN_VERSIONS", "PERENNIAL_MAX_PENDING"}
        & default.keys()
    )


def test_downward_api(render) -> None:
    environment = _env(render({}), "trainer")
    assert environment["PERENNIAL_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert environment["PERENNIAL_POD_NAMESPACE"] == {
        "fieldRef": {"fieldPath": "metadata.namespace"}
    }
    assert environment["PERENNIAL_POD_UID"] == {"fieldRef": {"fieldPath": "metadata.uid"}}


def _secret_refs(rendered) -> set[tuple[str, str]]:
    """(secret, key) pairs the pods read, from env secretKeyRefs and secret volumes (with items)."""
    refs = set()
    for component in ("inference", "trainer"):
        spec = _pod_spec(rendered, component)
        for entry in spec["containers"][0].get("env", []):
            ref = entry.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                refs.add((ref["name"], ref["key"]))
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                refs.add((volume["secret"]["secretName"], "*"))
    return refs


def test_secrets_created_from_values_hold_what_the_pods_read(render) -> None:
    rendered = render(FULL)
    secrets = {
        s["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in s["data"].items()}
        for s in rendered.all("Secret")
    }
    assert secrets["pn-auth"] == {"token": "s3cr3t-token"}
    assert secrets["pn-redis"] == {"password": "redis-secret"}
    assert secrets["pn-kafka-sasl"] == {"password": "kafka-secret"}
    assert set(secrets["pn-tls"]) == {"tls.crt", "tls.key", "ca.crt"}
    for name, key in _secret_refs(rendered):
        assert name in secrets and (key == "*" or key in secrets[name]), (name, key)
    trainer = _env(rendered, "trainer")
    assert trainer["PERENNIAL_AUTH_TOKEN_FILE"] == "/var/run/secrets/perennial/auth/token"
    assert trainer["PERENNIAL_KAFKA_SSL_CAFILE"] == "/var/run/secrets/perennial/kafka-ca/ca.crt"
    # no secret value in a ConfigMap
    for config_map in rendered.all("ConfigMap"):
        text = json.dumps(config_map["data"])
        assert (
            "s3cr3t-token" not in text and "redis-secret" not in text and "kafka-secret" not in text
        )


def test_existing_secrets_are_referenced_not_created(render) -> None:
    rendered = render(EXISTING_SECRETS)
    assert rendered.all("Secret") == []
    assert _secret_refs(rendered) == {
        ("redis", "redis-password"),
        ("perennial-kafka-user", "password"),
        ("perennial-token", "*"),
        ("perennial-tls", "*"),
        ("prod-cluster-ca-cert", "*"),
    }
    trainer = _env(rendered, "trainer")
    assert trainer["PERENNIAL_REDIS_CLUSTER"] == "true"
    assert trainer["PERENNIAL_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"


def test_config_change_rolls_the_pods(render) -> None:
    def checksum(values: dict) -> str:
        return render(values).one("Deployment", "inference")["spec"]["template"]["metadata"][
            "annotations"
        ]["checksum/config"]

    assert checksum({}) != checksum({"redis": {"url": "redis://other:6379/0"}})


def test_notes(render) -> None:
    notes = render(GPU).notes
    assert (
        "GPU (2 x nvidia.com/gpu)" in notes
        and "port-forward svc/perennial-inference 8001:8001" in notes
    )


def test_rendered_prometheus_rule_passes_promtool(render, tmp_path) -> None:
    """The rules survive the chart's YAML round trip (fromYaml/toYaml) as valid Prometheus rules."""
    import shutil
    import subprocess

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus; `make setup` installs it)")
    rule = render({"monitoring": {"prometheusRule": {"enabled": True}}}).one("PrometheusRule")
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_values_reference_in_the_chart_readme_covers_every_value() -> None:
    readme = open(CHART / "README.md").read()
    documented = set(re.findall(r"^\| `([A-Za-z0-9_.]+)` \|", readme, re.MULTILINE))

    def missing(node: object, path: str) -> list[str]:
        if path in documented:
            return []
        if isinstance(node, dict) and node:
            return [
                m
                for key, value in node.items()
                for m in missing(value, f"{path}.{key}" if path else key)
            ]
        return [path]

    assert missing(yaml.safe_load(open(CHART / "values.yaml")), "") == []
    schema = json.load(open(CHART / "values.schema.json"))
    assert set(schema["properties"]) == set(yaml.safe_load(open(CHART / "values.yaml")))


@pytest.mark.parametrize("value_set", ["default", "full"])
def test_helm_test_pod_checks_both_services_through_the_cluster_network(render, value_set) -> None:
    rendered = render(VALUE_SETS[value_set])
    [template] = [t for t in rendered.templates if t.endswith("templates/tests/health.yaml")]
    [pod] = rendered.templates[template]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    container = pod["spec"]["containers"][0]
    command = container["args"][0]
    for component in ("inference", "trainer"):
        service = rendered.one("Service", component)
        port = service["spec"]["ports"][0]["port"]
        assert f"--host={service['metadata']['name']} --port={port}" in command
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    names = {e["name"] for e in container.get("env", [])}
    assert "PERENNIAL_REDIS_PASSWORD" not in names and "PERENNIAL_KAFKA_SASL_PASSWORD" not in names
    if value_set == "full":
        assert names == {
            "PERENNIAL_AUTH_TOKEN_FILE",
            "PERENNIAL_TLS_CERT_FILE",
            "PERENNIAL_TLS_KEY_FILE",
            "PERENNIAL_TLS_CLIENT_CA_FILE",
        }


@pytest.mark.parametrize(
    ("values", "wait"), [(FULL, "1"), (MINIMAL, None)], ids=["sentinel", "single"]
)
def test_with_sentinel_the_trainer_waits_for_a_replica(render, values: dict, wait) -> None:
    """A snapshot must be on a replica before its offsets are committed, or a failover loses it."""
    maps = {
        o["metadata"]["name"]: o["data"] for o in render(values).objects if o["kind"] == "ConfigMap"
    }
    trainer = next(data for name, data in maps.items() if name.endswith("trainer"))
    inference = next(data for name, data in maps.items() if name.endswith("inference"))
    assert trainer.get("PERENNIAL_REDIS_WAIT_REPLICAS") == wait
    assert "PERENNIAL_REDIS_WAIT_REPLICAS" not in inference  # a trainer setting only


def test_feedback_gives_the_inference_pods_the_prediction_log_and_kafka(render) -> None:
    from .values import FEEDBACK

    default = _env(render({}), "inference")
    assert not {k for k in default if "KAFKA" in k or "PREDICTION" in k}  # off by default
    assert "PERENNIAL_FEEDBACK" not in _env(render({}), "trainer")
    rendered = render(FEEDBACK)
    inference, trainer = _env(rendered, "inference"), _env(rendered, "trainer")
    assert inference["PERENNIAL_PREDICTION_LOG"] == "true"
    assert inference["PERENNIAL_PREDICTION_LOG_INPUTS"] == "sha256"
    assert inference["PERENNIAL_PREDICTION_LOG_TOPIC"] == trainer["PERENNIAL_PREDICTIONS_TOPIC"]
    for name in ("BOOTSTRAP", "SECURITY_PROTOCOL", "SASL_USERNAME", "SSL_CAFILE"):
        assert inference[f"PERENNIAL_KAFKA_{name}"] == trainer[f"PERENNIAL_KAFKA_{name}"]
    assert inference["PERENNIAL_KAFKA_SASL_PASSWORD"] == trainer["PERENNIAL_KAFKA_SASL_PASSWORD"]
    assert trainer["PERENNIAL_FEEDBACK"] == "true"
    assert trainer["PERENNIAL_FEEDBACK_WINDOW_SECONDS"] == "3600"
    pod = rendered.one("Deployment", "inference")["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert inference["PERENNIAL_KAFKA_SSL_CAFILE"].startswith(mounts["kafka-ca"] + "/")
    assert {t["spec"]["topicName"] for t in rendered.all("KafkaTopic")} >= {
        "perennial.predictions",
        "perennial.feedback",
    }

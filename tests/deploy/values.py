"""Value sets tests/deploy renders the chart with: default, GPU, CPU-only, minimal, full, ..."""

from __future__ import annotations

PEM_CERT = "-----BEGIN CERTIFICATE-----\nMIIBtest\n-----END CERTIFICATE-----\n"
PEM_KEY = "-----BEGIN PRIVATE KEY-----\nMIIBtest\n-----END PRIVATE KEY-----\n"

DEFAULT: dict = {}

GPU: dict = {
    "trainer": {
        "replicas": 3,
        "gpu": {
            "enabled": True,
            "count": 2,
            "nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
            "runtimeClassName": "nvidia",
        },
        "tolerations": [
            {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}
        ],
    },
}

CPU_ONLY: dict = {"trainer": {"gpu": {"enabled": False}, "replicas": 2}}

# The least an operator writes: where Kafka and Redis are; everything optional off.
MINIMAL: dict = {
    "kafka": {"bootstrap": "kafka:9092"},
    "redis": {"url": "redis://redis:6379/0"},
    "inference": {
        "autoscaling": {"enabled": False},
        "replicas": 1,
        "podDisruptionBudget": {"enabled": False},
        "topologySpreadConstraints": [],
    },
    "trainer": {"kubernetesEvents": False},
    "serviceAccount": {"create": False},
    "rbac": {"create": False},
}

# Everything on, secrets created by the chart from values.
FULL: dict = {
    "fullnameOverride": "pn",
    "commonLabels": {"team": "ml-platform"},
    "image": {"registry": "registry.example.com/ml", "pullSecrets": ["regcred"]},
    "logLevel": "DEBUG",
    "backbonePath": "/models/minilm",
    "backbone": "image",
    "imageBackbone": {"shape": "1,28,28", "size": 32},
    "inference": {
        "image": {"digest": "sha256:" + "a" * 64},
        "priorityClassName": "high",
        "podAnnotations": {"example.com/owner": "ml"},
        "extraEnv": [{"name": "EXTRA", "value": "1"}],
        "maxTextChars": 2048,
        "maxMessageBytes": 16777216,
        "config": {"PERENNIAL_DRIFT_INPUT_WINDOW": 512},
        "extraVolumes": [{"name": "models", "persistentVolumeClaim": {"claimName": "models"}}],
        "extraVolumeMounts": [{"name": "models", "mountPath": "/models", "readOnly": True}],
        "service": {"type": "LoadBalancer", "annotations": {"example.com/lb": "internal"}},
        "affinity": {
            "nodeAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 1,
                        "preference": {
                            "matchExpressions": [
                                {"key": "pool", "operator": "In", "values": ["inference"]}
                            ]
                        },
                    }
                ]
            }
        },
    },
    "trainer": {
        "replicas": 6,
        "gpu": {"enabled": True, "runtimeClassName": "nvidia"},
        "retainVersions": 20,
        "maxPending": 4096,
        "maxRecordBytes": 1048576,
        "learner": "lae",
        "pet": "adapter",
        "snapshotEveryExamples": 1000000,
        "guardrail": {"margin": 0.02, "holdoutEvery": 10, "holdoutPerClass": 50},
        "config": {"PERENNIAL_FORGETTING_EVERY_SECONDS": "60"},
        "extraVolumes": [{"name": "models", "persistentVolumeClaim": {"claimName": "models"}}],
        "extraVolumeMounts": [{"name": "models", "mountPath": "/models", "readOnly": True}],
    },
    "kafka": {
        "bootstrap": "prod-kafka-bootstrap.kafka:9093",
        "securityProtocol": "SASL_SSL",
        "partitions": 12,
        "sasl": {"mechanism": "SCRAM-SHA-512", "username": "perennial", "password": "kafka-secret"},
        "tls": {"caCert": PEM_CERT},
        "strimzi": {"enabled": True, "cluster": "prod"},
    },
    "redis": {
        "url": "redis://redis:6379/0",
        "sentinels": ["redis-node-0.redis:26379", "redis-node-1.redis:26379"],
        "sentinelMaster": "mymaster",
        "password": "redis-secret",
    },
    "auth": {"enabled": True, "token": "s3cr3t-token"},
    "tls": {"enabled": True, "cert": PEM_CERT, "key": PEM_KEY, "ca": PEM_CERT, "mutual": True},
    "monitoring": {
        "release": "prom",
        "serviceMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "grafanaDashboard": {
            "enabled": True,
            "namespace": "grafana",
            "annotations": {"grafana_folder": "Perennial"},
        },
    },
    "networkPolicy": {
        "enabled": True,
        "clientSelectors": [{"namespaceSelector": {"matchLabels": {"perennial-client": "true"}}}],
        "monitoringSelectors": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ],
    },
}

# Secrets that already exist in the cluster (cert-manager, Strimzi KafkaUser, Bitnami Redis).
EXISTING_SECRETS: dict = {
    "kafka": {
        "securityProtocol": "SASL_SSL",
        "sasl": {"username": "perennial", "existingSecret": "perennial-kafka-user"},
        "tls": {"existingSecret": "prod-cluster-ca-cert"},
    },
    "redis": {
        "cluster": True,
        "url": "redis://redis-cluster:6379/0",
        "existingSecret": "redis",
        "existingSecretKey": "redis-password",
    },
    "auth": {"enabled": True, "existingSecret": "perennial-token"},
    "tls": {"enabled": True, "existingSecret": "perennial-tls"},
}

# The feedback loop on, over SASL_SSL with secrets that exist: the inference pods get Kafka too.
FEEDBACK: dict = {
    **EXISTING_SECRETS,
    "kafka": {
        **EXISTING_SECRETS["kafka"],
        "strimzi": {"enabled": True, "cluster": "prod"},
    },
    "feedback": {"enabled": True, "inputs": "sha256", "windowSeconds": 3600},
}

VALUE_SETS: dict[str, dict] = {
    "default": DEFAULT,
    "gpu": GPU,
    "cpu-only": CPU_ONLY,
    "minimal": MINIMAL,
    "full": FULL,
    "existing-secrets": EXISTING_SECRETS,
    "feedback": FEEDBACK,
}

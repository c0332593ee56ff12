"""The Kubernetes API client as both the trainer and the `perennial` CLI build it.

`in_cluster_api` uses the pod's service-account token (the trainer's Events);
`connect` tries the kubeconfig first, as kubectl does, then the service account
(the CLI, from a laptop or from a pod).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from kubernetes import client
from kubernetes.config.incluster_config import (
    SERVICE_CERT_FILENAME,
    SERVICE_HOST_ENV_NAME,
    SERVICE_TOKEN_FILENAME,
    InClusterConfigLoader,
)

log = logging.getLogger(__name__)
REQUEST_TIMEOUT = (2.0, 5.0)  # connect, read (seconds)


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

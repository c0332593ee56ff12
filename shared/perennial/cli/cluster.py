"""The Kubernetes API as the CLI reaches it: the kubeconfig as kubectl reads it, else the pod's
service account, else an error saying what was tried (never a silent empty answer)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from kubernetes import client, config
from kubernetes.config.config_exception import ConfigException
from kubernetes.config.incluster_config import (
    SERVICE_CERT_FILENAME,
    SERVICE_HOST_ENV_NAME,
    SERVICE_TOKEN_FILENAME,
)

from perennial.kube import in_cluster_api

DEFAULT_KUBECONFIG = "~/.kube/config"
DEFAULT_NAMESPACE = "default"


class NoCluster(Exception):
    """No Kubernetes API to ask: no usable kubeconfig and not inside a cluster."""


@dataclass(frozen=True)
class Cluster:
    """An API client, and the namespace to use when none is given (kubectl's choice)."""

    api: client.ApiClient
    namespace: str
    source: str  # for messages, e.g. "kubeconfig ~/.kube/config, context prod"


def connect_cluster(
    environ: Mapping[str, str] = os.environ,
    *,
    token_file: str = SERVICE_TOKEN_FILENAME,
    ca_file: str = SERVICE_CERT_FILENAME,
) -> Cluster:
    """The cluster of KUBECONFIG (a path list, as kubectl) or ~/.kube/config and its current
    context's namespace; else, inside a pod, its service account and the pod's namespace.
    Raises `NoCluster` naming each place tried."""
    kubeconfig = environ.get("KUBECONFIG") or DEFAULT_KUBECONFIG
    paths = [Path(p).expanduser() for p in kubeconfig.split(os.pathsep) if p]
    if any(p.exists() for p in paths):
        # Passed explicitly: the library's own default is KUBECONFIG read once at import.
        config_file = os.pathsep.join(str(p) for p in paths)
        try:
            _, current = config.list_kube_config_contexts(config_file=config_file)
            api = config.new_client_from_config(config_file=config_file)
        except (ConfigException, OSError, yaml.YAMLError, KeyError, TypeError) as error:
            raise NoCluster(f"kubeconfig {kubeconfig} cannot be used: {error}") from None
        namespace = (current.get("context") or {}).get("namespace") or DEFAULT_NAMESPACE
        return Cluster(api, namespace, f"kubeconfig {kubeconfig}, context {current.get('name')}")
    tried = (
        f"KUBECONFIG={kubeconfig} does not exist"
        if environ.get("KUBECONFIG")
        else f"KUBECONFIG is unset and {DEFAULT_KUBECONFIG} does not exist"
    )
    if not environ.get(SERVICE_HOST_ENV_NAME):
        raise NoCluster(
            f"no Kubernetes cluster to ask: {tried}, and this is not a pod "
            f"({SERVICE_HOST_ENV_NAME} is unset); set KUBECONFIG to your cluster's kubeconfig"
        )
    api = in_cluster_api(environ, token_file=token_file, ca_file=ca_file)
    if api is None:
        raise NoCluster(
            f"no Kubernetes cluster to ask: {tried}, and this pod has no service-account "
            f"token at {token_file}; set KUBECONFIG to your cluster's kubeconfig"
        )
    namespace_file = Path(token_file).with_name("namespace")
    namespace = (
        namespace_file.read_text().strip() if namespace_file.exists() else ""
    ) or DEFAULT_NAMESPACE
    return Cluster(api, namespace, "in-cluster service account")

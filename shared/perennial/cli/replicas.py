"""`perennial status --release`: every trainer replica of a release, each asked directly.

The trainer Service spreads calls over its replicas, and each replica owns only the adapters of
its Kafka partitions, so a status through the Service shows one replica at random. Here the
release's trainer pods come from the Kubernetes API and each pod's control port (its container
port named `control` in helm/perennial) is called at the pod's IP: that works where pod IPs are
routable, i.e. from inside the cluster (a `kubectl run`/`kubectl exec` with the image).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

from perennial.cli.connection import TrainerClient, TrainerError, bearer_token, tls_credentials
from perennial.cli.options import Connection
from perennial.v1 import trainer_pb2

if TYPE_CHECKING:  # perennial.cli.pods loads the kubernetes client, which is slow to import
    from perennial.cli.pods import ReleasePod

CONTROL_PORT = "control"  # the trainer container's port name (helm/perennial trainer Deployment)
MAX_PARALLEL_CALLS = 8


@dataclass(frozen=True)
class ReplicaStatus:
    """One trainer pod: what its control API answered, or why it could not be asked."""

    pod: str
    address: str  # "ip:port" called, "" when there was none to call
    partitions: tuple[str, ...] = ()
    adapters: tuple[trainer_pb2.AdapterStatus, ...] = ()
    error: str = ""


def pod_address(pod: ReleasePod) -> str:
    """`ip:port` of the pod's control API ("" without an IP or a port named `control`)."""
    port = pod.ports.get(CONTROL_PORT)
    if not pod.ip or port is None:
        return ""
    return f"[{pod.ip}]:{port}" if ":" in pod.ip else f"{pod.ip}:{port}"


def _ask(pod: ReleasePod, connection: Connection, adapter: str) -> ReplicaStatus:
    address = pod_address(pod)
    if CONTROL_PORT not in pod.ports:
        return ReplicaStatus(pod.name, address, error=f"no container port named {CONTROL_PORT}")
    if pod.phase != "Running" or not address:
        return ReplicaStatus(pod.name, address, error=f"not running ({pod.phase})")
    try:
        with TrainerClient(connection, address) as trainer:
            reply = trainer.call("GetStatus", trainer_pb2.GetStatusRequest())
    except TrainerError as error:
        return ReplicaStatus(pod.name, address, error=str(error))
    return ReplicaStatus(
        pod.name,
        address,
        tuple(reply.partitions),
        tuple(a for a in reply.adapters if not adapter or a.adapter == adapter),
    )


def ask_replicas(
    pods: list[ReleasePod], connection: Connection, adapter: str = ""
) -> list[ReplicaStatus]:
    """Each pod's status (only `adapter`'s, when given), in the order of `pods`; the calls run
    in parallel, each bounded by the connection's timeout."""
    # A bad token or TLS file is the operator's mistake: one error, not one per pod.
    bearer_token(connection)
    if connection.uses_tls:
        tls_credentials(connection)
    if not pods:
        return []
    with ThreadPoolExecutor(min(MAX_PARALLEL_CALLS, len(pods))) as pool:
        return list(pool.map(lambda pod: _ask(pod, connection, adapter), pods))

"""gRPC control API `perennial.v1.Trainer`: protobuf ↔ trainer commands, nothing else.

Every call that reads or changes adapter state runs on the training thread
(`Trainer.submit`), between steps. Domain errors become status codes in the shared
`perennial.grpc_errors.DomainErrorInterceptor`, as in the inference service.
"""

from __future__ import annotations

from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from perennial import grpc_errors
from perennial.codec import ADAPTER_ID, valid_adapter_id
from perennial.errors import InvalidInput, NotFound, NotReady
from perennial.grpc_errors import DomainErrorInterceptor
from perennial.store import Manifest
from perennial.v1 import trainer_pb2, trainer_pb2_grpc
from services.trainer.ingest import Ingest
from services.trainer.worker import AdapterState, Trainer

SERVICE_NAME = trainer_pb2.DESCRIPTOR.services_by_name["Trainer"].full_name
COMMAND_TIMEOUT_SECONDS = 120.0


def version_info(
    manifest: Manifest, head: str | None = None, candidate: str | None = None
) -> trainer_pb2.VersionInfo:
    info = trainer_pb2.VersionInfo(
        version=manifest.version,
        parent=manifest.parent or "",
        sequence=manifest.sequence,
        examples=manifest.examples,
        head=manifest.version == head,
        candidate=manifest.version == candidate,
        metrics={k: float(v) for k, v in manifest.metrics.items()},
    )
    info.created.FromNanoseconds(int(manifest.created_at * 1e9))
    return info


class ControlServicer(trainer_pb2_grpc.TrainerServicer):
    """The `perennial.v1.Trainer` handlers: protobuf in, trainer commands, protobuf out."""

    def __init__(self, trainer: Trainer | None = None, ingest: Ingest | None = None) -> None:
        self._trainer, self._ingest = trainer, ingest

    def attach(self, trainer: Trainer, ingest: Ingest) -> None:
        """Serve `trainer` from now on (the port is open, answering UNAVAILABLE, before this)."""
        self._trainer, self._ingest = trainer, ingest

    @property
    def trainer(self) -> Trainer:
        if self._trainer is None:
            raise NotReady("the trainer is starting; retry shortly")
        return self._trainer

    @property
    def ingest(self) -> Ingest:
        if self._ingest is None:
            raise NotReady("the trainer is starting; retry shortly")
        return self._ingest

    def _run(self, command):
        try:
            return self.trainer.submit(command).result(timeout=COMMAND_TIMEOUT_SECONDS)
        except futures.TimeoutError as error:
            raise NotReady("the trainer is busy; retry") from error

    def _adapter(self, name: str) -> str:
        if not name:
            raise InvalidInput("adapter is empty; name the adapter id")
        if not valid_adapter_id(name):  # full match: "evil\n" and hash-tag braces are refused
            raise InvalidInput(f"adapter {name[:80]!r} is not an adapter id ({ADAPTER_ID.pattern})")
        return name

    def _status(self, adapter: str, state: AdapterState) -> trainer_pb2.AdapterStatus:
        lag = len(state.pending) + sum(self.ingest.lag.get(p, 0) for p in state.applied)
        return trainer_pb2.AdapterStatus(
            adapter=adapter,
            head=state.head.version if state.head else "",
            candidate=state.latest.version if state.latest else "",
            examples=state.learner.examples,
            lag=lag,
            paused=state.paused,
            last_error=state.last_error,
            classes=list(state.learner.classes),
            held_reason=state.held_reason,
        )

    def GetStatus(self, request, context):
        def status():
            names = [request.adapter] if request.adapter else sorted(self.trainer.adapters)
            return [self._status(name, self.trainer.owned(name)) for name in names]

        return trainer_pb2.GetStatusResponse(
            adapters=self._run(status), partitions=self.ingest.assigned()
        )

    def ListVersions(self, request, context):
        adapter, store = self._adapter(request.adapter), self.trainer.store
        head, latest = store.head(adapter), store.latest(adapter)
        manifests = [
            m for m in (store.manifest(adapter, v) for v in reversed(store.versions(adapter))) if m
        ]
        if not manifests:
            raise NotFound(f"adapter {adapter!r} has no versions")
        return trainer_pb2.ListVersionsResponse(
            versions=[
                version_info(m, head.version if head else None, latest.version if latest else None)
                for m in manifests
            ]
        )

    def _version(self, adapter: str, manifest: Manifest) -> trainer_pb2.VersionResponse:
        store = self.trainer.store
        head, latest = store.head(adapter), store.latest(adapter)
        return trainer_pb2.VersionResponse(
            version=version_info(
                manifest, head.version if head else None, latest.version if latest else None
            )
        )

    def Snapshot(self, request, context):
        adapter = self._adapter(request.adapter)
        return self._version(adapter, self._run(lambda: self.trainer.snapshot_now(adapter)))

    def Promote(self, request, context):
        adapter = self._adapter(request.adapter)
        return self._version(
            adapter, self._run(lambda: self.trainer.promote(adapter, request.version))
        )

    def Rollback(self, request, context):
        adapter = self._adapter(request.adapter)
        return self._version(
            adapter, self._run(lambda: self.trainer.rollback(adapter, request.version))
        )

    def Pause(self, request, context):
        adapter = self._adapter(request.adapter)
        return self._run(lambda: self._status(adapter, self.trainer.set_paused(adapter, True)))

    def Resume(self, request, context):
        adapter = self._adapter(request.adapter)
        return self._run(lambda: self._status(adapter, self.trainer.set_paused(adapter, False)))


def build_control_server(
    servicer: ControlServicer,
    health_servicer: health.HealthServicer,
    *,
    interceptors=(),
    workers: int = 4,
) -> grpc.Server:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="control"),
        interceptors=[*interceptors, DomainErrorInterceptor()],
        options=[("grpc.so_reuseport", 0)],  # a port another process holds is an error, not shared
    )
    trainer_pb2_grpc.add_TrainerServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (
            SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    return server


def set_health(health_servicer: health.HealthServicer, serving: bool) -> None:
    grpc_errors.set_health(health_servicer, SERVICE_NAME, serving)

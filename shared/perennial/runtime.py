"""Process start-up shared by the services: logs, threads, metrics endpoint, signals, and
start-up errors that read as one line instead of a traceback."""

from __future__ import annotations

import errno
import logging
import signal
import sys
import threading
from collections.abc import Callable

import grpc
import redis
import torch
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    disable_created_metrics,
    start_http_server,
)

from perennial import logs, tracing
from perennial.backbone import ImageBackbone, TextBackbone
from perennial.config import ConfigError, ProcessSettings, Settings, help_requested, variable
from perennial.grpc_security import ServerSecurity

log = logging.getLogger(__name__)


class StartupError(RuntimeError):
    """A dependency the service needs at start is not usable (Redis unreachable, a port taken)."""


def main(service: str, settings_class: type[Settings], run: Callable[[Settings], None]) -> None:
    """Run a service's `run(settings)`: `--help` prints the settings; a configuration or
    start-up mistake is one JSON log line and exit status 2, never a traceback."""
    if help_requested(settings_class, service):
        raise SystemExit(0)
    logs.configure("INFO")
    try:
        settings = settings_class.load()
        run(settings)
    except (ConfigError, StartupError) as error:
        kind = "configuration error" if isinstance(error, ConfigError) else "cannot start"
        log.error(kind, extra={"fields": {"service": service, "error": str(error)}})
        print(f"{service}: {kind}: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def start(service: str, settings: ProcessSettings) -> tuple[CollectorRegistry, threading.Event]:
    """Configure logging and torch threads, serve /metrics, turn SIGTERM/SIGINT into an event."""
    logs.configure(settings.log_level)
    tracing.configure(
        f"perennial-{service}", settings.tracing_endpoint, settings.tracing_sample_ratio
    )
    if settings.torch_threads > 0:
        torch.set_num_threads(settings.torch_threads)
    registry = service_registry()
    try:
        start_http_server(settings.metrics_port, addr=settings.metrics_host, registry=registry)
    except OSError as error:
        raise StartupError(_bind_error("metrics_port", settings.metrics_port, error)) from None
    stop = threading.Event()

    def _stop(signum: int, _frame) -> None:
        log.info(
            "stopping",
            extra={"fields": {"service": service, "signal": signal.Signals(signum).name}},
        )
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    log.info(
        "starting", extra={"fields": {"service": service, "metrics_port": settings.metrics_port}}
    )
    return registry, stop


def service_registry() -> CollectorRegistry:
    """The registry a service exposes: its own metrics plus the default process (`process_*`),
    platform and GC (`python_*`) collectors; no `*_created` series (they double the series
    count and no rule or panel reads them)."""
    disable_created_metrics()
    registry = CollectorRegistry()
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)
    return registry


def _bind_error(field: str, port: int, error: OSError | RuntimeError) -> str:
    if (
        isinstance(error, OSError)
        and error.errno == errno.EADDRINUSE
        or "bind" in str(error).lower()
    ):
        return f"{variable(field)}={port}: the port is already in use; choose another"
    return f"{variable(field)}={port}: cannot listen: {error}"


def listen(server: grpc.Server, security: ServerSecurity, host: str, port: int, field: str) -> None:
    """Open the server's port (TLS when configured); a taken port names its variable."""
    try:
        bound = security.add_port(server, f"{host}:{port}")
    except RuntimeError as error:
        raise StartupError(_bind_error(field, port, error)) from None
    if port and not bound:
        raise StartupError(_bind_error(field, port, RuntimeError("bind failed")))


def bind(start: Callable[[str, int], int], host: str, port: int, field: str) -> int:
    """Call `start(host, port)` (a server that listens and returns its port); a taken port
    names its variable."""
    try:
        return start(host, port)
    except OSError as error:
        raise StartupError(_bind_error(field, port, error)) from None


def load_backbone(
    settings: ProcessSettings, device: torch.device | None = None
) -> TextBackbone | ImageBackbone:
    """The configured backbone (`PERENNIAL_BACKBONE`) on `device`, its frozen part on the
    configured runtime."""
    device = device or torch.device("cpu")
    if settings.runtime != "torch" and device.type != "cpu":
        raise ConfigError(
            f"{variable('runtime')}={settings.runtime} runs on the CPU, the backbone on {device}: "
            f"set {variable('runtime')}=torch on both services"
        )
    if settings.backbone == "image":
        backbone = ImageBackbone.load(image_size=settings.image_size).to(device)
    else:
        backbone = TextBackbone.load(settings.backbone_path).to(device)
    backbone.use_runtime(settings.runtime, settings.onnx_cache_dir, settings.torch_threads)
    return backbone


def check_redis(client: redis.Redis, where: str) -> None:
    """Fail at start, saying why, when Redis cannot be used (unreachable, wrong password)."""
    try:
        client.ping()
    except redis.AuthenticationError as error:
        raise StartupError(
            f"Redis at {where} refused the credentials ({error}); check PERENNIAL_REDIS_PASSWORD"
        ) from None
    except redis.RedisError as error:
        raise StartupError(f"Redis at {where} is not usable: {error}") from None

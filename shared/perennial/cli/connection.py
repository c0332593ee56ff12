"""One trainer's control API as the CLI calls it: token, TLS, deadline, and readable errors."""

from __future__ import annotations

import os
import ssl
from pathlib import Path
from types import TracebackType

import grpc
from google.protobuf.message import Message

from perennial.cli.options import TOKEN_VARIABLE, Connection
from perennial.grpc_security import bearer_metadata
from perennial.v1 import trainer_pb2_grpc

# After UNAVAILABLE or DEADLINE_EXCEEDED: how long to wait for the channel to connect before
# saying the trainer was never reached (a trainer that answered is connected already).
REACHABLE_PROBE_SECONDS = 1.0


class CommandLineError(Exception):
    """A mistake in what the operator typed or pointed at (unreadable file, bad TLS material)."""


class TrainerError(Exception):
    """A control call that failed: its gRPC status, and whether the trainer was reached at all."""

    def __init__(self, code: grpc.StatusCode, details: str, *, reached: bool) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code, self.details, self.reached = code, details, reached


def _read(path: Path, option: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CommandLineError(f"{option} {path}: {error.strerror or error}") from None
    if not data.strip():
        raise CommandLineError(f"{option} {path} is empty")
    return data


def _reason(error: ssl.SSLError) -> str:
    return f" ({error.reason})" if error.reason else ""


def bearer_token(connection: Connection) -> str | None:
    """The token from --token-file (or PERENNIAL_AUTH_TOKEN_FILE), else PERENNIAL_AUTH_TOKEN,
    else None (no auth)."""
    if connection.token_file is not None:
        return _read(connection.token_file, "--token-file").decode().strip()
    return os.environ.get(TOKEN_VARIABLE) or None


def tls_credentials(connection: Connection) -> grpc.ChannelCredentials:
    """Credentials from the PEM files, checked here so a bad file is one clear line, not a
    handshake failure at the first call."""
    if (connection.cert_file is None) != (connection.key_file is None):
        raise CommandLineError("mutual TLS needs both --cert-file and --key-file")
    ca = _read(connection.ca_file, "--ca-file") if connection.ca_file else None
    if ca is not None:
        try:
            ssl.create_default_context(cadata=ca.decode("utf-8", "replace"))
        except ssl.SSLError as error:
            raise CommandLineError(
                f"--ca-file {connection.ca_file}: not a PEM CA certificate{_reason(error)}"
            ) from None
    cert = key = None
    if connection.cert_file and connection.key_file:
        cert = _read(connection.cert_file, "--cert-file")
        key = _read(connection.key_file, "--key-file")
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(
                connection.cert_file, connection.key_file
            )
        except ssl.SSLError as error:
            raise CommandLineError(
                f"--cert-file {connection.cert_file} / --key-file {connection.key_file}: "
                f"not a PEM certificate and its private key{_reason(error)}"
            ) from None
    return grpc.ssl_channel_credentials(ca, key, cert)


def open_channel(connection: Connection, target: str) -> grpc.Channel:
    if not connection.uses_tls:
        if connection.server_name:
            raise CommandLineError("--server-name needs TLS (--tls or --ca-file)")
        return grpc.insecure_channel(target)
    options = (
        [("grpc.ssl_target_name_override", connection.server_name)]
        if connection.server_name
        else []
    )
    return grpc.secure_channel(target, tls_credentials(connection), options)


class TrainerClient:
    """A channel to one trainer (`target`, default: --target) and its `perennial.v1.Trainer`
    calls with the bearer token and the deadline; failures raise `TrainerError`."""

    def __init__(self, connection: Connection, target: str | None = None) -> None:
        self.connection = connection
        self.target = target or connection.target
        token = bearer_token(connection)
        self._metadata = list(bearer_metadata(token).items()) if token else None
        self._channel = open_channel(connection, self.target)
        self._stub = trainer_pb2_grpc.TrainerStub(self._channel)

    def __enter__(self) -> TrainerClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._channel.close()

    def call(self, method: str, request: Message) -> Message:
        """`method` of perennial.v1.Trainer (e.g. "GetStatus") with `request`."""
        try:
            return getattr(self._stub, method)(
                request, metadata=self._metadata, timeout=self.connection.timeout
            )
        except grpc.RpcError as error:
            code, details = error.code(), error.details() or ""
            reached = (
                code
                not in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                )
                or self._connects()
            )
            raise TrainerError(code, details, reached=reached) from None

    def _connects(self) -> bool:
        ready = grpc.channel_ready_future(self._channel)
        try:
            ready.result(timeout=min(REACHABLE_PROBE_SECONDS, self.connection.timeout))
            return True
        except grpc.FutureTimeoutError:
            return False
        finally:
            ready.cancel()

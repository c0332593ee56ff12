"""Transport security and bearer-token auth for every Perennial gRPC server and client
(and the inference service's REST port, which takes the same settings).

Server side (both services call these in `main()`):

- `ServerSecurity.from_settings(settings)` reads
  `PERENNIAL_TLS_CERT_FILE` + `PERENNIAL_TLS_KEY_FILE` (PEM; set both → TLS),
  `PERENNIAL_TLS_CLIENT_CA_FILE` (PEM; set → mutual TLS: clients must present a
  certificate signed by this CA), and `PERENNIAL_AUTH_TOKEN` or
  `PERENNIAL_AUTH_TOKEN_FILE` (a bearer token, or a file holding one, e.g. a
  mounted Kubernetes Secret; the file is read once at start).
- `security.interceptors()` goes into `grpc.server(..., interceptors=...)`;
  `security.add_port(server, "0.0.0.0:8001")` opens a TLS port when certificates
  are configured and a plaintext one otherwise.

With a token set, every call must carry the metadata `authorization: Bearer <token>`
or it fails with UNAUTHENTICATED — except `grpc.health.v1` (Kubernetes probes
cannot send headers) and server reflection (service discovery, no data).

Client side: `channel_credentials(...)` builds `grpc.ChannelCredentials` from a CA,
an optional client certificate (mTLS) and an optional token, for
`grpc.secure_channel(address, credentials)`; `bearer_metadata(token)` is the
metadata to send per call when a client (such as tritonclient's `headers=`)
takes headers instead of credentials.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from perennial.config import ConfigError, GrpcSecuritySettings, variable

log = logging.getLogger(__name__)

#: Method prefixes that never need a token: health probes and reflection.
OPEN_METHOD_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


def _read(path: Path, field: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ConfigError(
            f"{variable(field)}={str(path)!r} cannot be read: {error.strerror}"
        ) from None


@dataclass(frozen=True)
class ServerSecurity:
    """TLS material (PEM bytes) and the bearer token of one gRPC server; all optional."""

    cert_chain: bytes | None = None
    private_key: bytes | None = None
    client_ca: bytes | None = None
    token: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_chain is None) != (self.private_key is None):
            raise ConfigError(
                "TLS needs both PERENNIAL_TLS_CERT_FILE and PERENNIAL_TLS_KEY_FILE; one is unset"
            )
        if self.client_ca is not None and self.cert_chain is None:
            raise ConfigError(
                "PERENNIAL_TLS_CLIENT_CA_FILE (mutual TLS) needs PERENNIAL_TLS_CERT_FILE "
                "and PERENNIAL_TLS_KEY_FILE too"
            )
        if self.token is not None and not self.token:
            raise ConfigError(
                "the bearer token is empty; unset PERENNIAL_AUTH_TOKEN(_FILE) to disable auth"
            )

    @classmethod
    def from_settings(cls, settings: GrpcSecuritySettings) -> ServerSecurity:
        """Read the configured PEM and token files; unset = off. Unreadable files are a
        `ConfigError` naming the variable."""
        pem = {
            name: _read(getattr(settings, name), name) if getattr(settings, name) else None
            for name in ("tls_cert_file", "tls_key_file", "tls_client_ca_file")
        }
        token = settings.auth_token.get_secret_value() if settings.auth_token else None
        if token and settings.auth_token_file:
            raise ConfigError(
                f"set {variable('auth_token')} or {variable('auth_token_file')}, not both"
            )
        if settings.auth_token_file:
            token = _read(settings.auth_token_file, "auth_token_file").decode().strip()
        return cls(pem["tls_cert_file"], pem["tls_key_file"], pem["tls_client_ca_file"], token)

    @property
    def tls(self) -> bool:
        return self.cert_chain is not None

    @property
    def mutual_tls(self) -> bool:
        return self.client_ca is not None

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """TLS credentials (requiring a client certificate when a client CA is set), or None."""
        if not self.tls:
            return None
        return grpc.ssl_server_credentials(
            [(self.private_key, self.cert_chain)],
            root_certificates=self.client_ca,
            require_client_auth=self.mutual_tls,
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        """TLS for an HTTP server with the same certificate, key and client CA (mutual TLS), or None."""
        if not self.tls:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        with _pem_path(self.cert_chain) as cert, _pem_path(self.private_key) as key:
            context.load_cert_chain(cert, key)
        if self.mutual_tls:
            context.load_verify_locations(cadata=self.client_ca.decode())
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def authorized(self, authorization: str) -> bool:
        """Whether an `Authorization` header value passes (always, when no token is set)."""
        if not self.token:
            return True
        return hmac.compare_digest(authorization.encode(), f"Bearer {self.token}".encode())

    def interceptors(self) -> list[grpc.ServerInterceptor]:
        return [BearerTokenInterceptor(self.token)] if self.token else []

    def add_port(self, server: grpc.Server, address: str) -> int:
        """Listen on `address` with TLS if configured, else plaintext; returns the bound port."""
        credentials = self.server_credentials()
        port = (
            server.add_secure_port(address, credentials)
            if credentials
            else server.add_insecure_port(address)
        )
        log.info(
            "gRPC port",
            extra={
                "fields": {
                    "address": address,
                    "tls": self.tls,
                    "mutual_tls": self.mutual_tls,
                    "auth": bool(self.token),
                }
            },
        )
        return port


@contextlib.contextmanager
def _pem_path(pem: bytes) -> Iterator[str]:
    """A path holding `pem` that never touches a disk (an anonymous memory file): `ssl` loads
    certificates and keys only from paths, and the key was read once, at start."""
    descriptor = os.memfd_create("pem", os.MFD_CLOEXEC)
    try:
        os.write(descriptor, pem)
        yield f"/proc/self/fd/{descriptor}"
    finally:
        os.close(descriptor)


class BearerTokenInterceptor(grpc.ServerInterceptor):
    """Rejects calls without `authorization: Bearer <token>` (UNAUTHENTICATED), in constant time.

    Health checks and reflection pass without a token (`OPEN_METHOD_PREFIXES`).
    """

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_METHOD_PREFIXES):
            return handler
        presented = dict(handler_call_details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(presented.encode(), self._expected):
            return handler
        return _replace_behaviour(handler, _reject)


def _reject(_request, context: grpc.ServicerContext):
    context.abort(
        grpc.StatusCode.UNAUTHENTICATED,
        "missing or wrong bearer token: send metadata 'authorization: Bearer <token>'",
    )


def _replace_behaviour(
    handler: grpc.RpcMethodHandler, behaviour: Callable
) -> grpc.RpcMethodHandler:
    """The same kind of handler (unary/stream), with `behaviour` instead of the method."""
    kind = (
        "unary_unary"
        if not handler.request_streaming and not handler.response_streaming
        else "unary_stream"
        if not handler.request_streaming
        else "stream_unary"
        if not handler.response_streaming
        else "stream_stream"
    )
    return handler._replace(**{kind: behaviour})


def channel_credentials(
    root_ca_file: str | Path | None = None,
    cert_file: str | Path | None = None,
    key_file: str | Path | None = None,
    token: str | None = None,
) -> grpc.ChannelCredentials:
    """Client credentials for `grpc.secure_channel`.

    root_ca_file: CA that signed the server certificate (None: the system roots).
    cert_file, key_file: the client certificate and key, for servers that require mutual TLS.
    token: sent as `authorization: Bearer <token>` on every call.
    """
    if (cert_file is None) != (key_file is None):
        raise ValueError("a client certificate needs both cert_file and key_file")

    def read(path):
        return Path(path).read_bytes() if path is not None else None

    credentials = grpc.ssl_channel_credentials(read(root_ca_file), read(key_file), read(cert_file))
    if token:
        credentials = grpc.composite_channel_credentials(
            credentials, grpc.access_token_call_credentials(token)
        )
    return credentials


def bearer_metadata(token: str) -> dict[str, str]:
    """Per-call metadata carrying `token`, e.g. `tritonclient.grpc`'s `headers=` argument."""
    return {"authorization": f"Bearer {token}"}

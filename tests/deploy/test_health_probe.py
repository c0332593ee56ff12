"""helm/perennial/files/grpc-health-probe.py, the exec probe of TLS-enabled pods, against a real
gRPC server with grpc.health.v1: plaintext, TLS, mutual TLS and a bearer token."""

from __future__ import annotations

import datetime
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

PROBE = (
    Path(__file__).resolve().parents[2] / "helm" / "perennial" / "files" / "grpc-health-probe.py"
)
SERVER_NAME = "perennial-inference"


def _certificates(directory: Path) -> dict[str, Path]:
    """A CA, and a certificate for SERVER_NAME signed by it (usable as server and client cert)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "perennial-test-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAME)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(SERVER_NAME)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    files = {
        "ca": directory / "ca.crt",
        "cert": directory / "tls.crt",
        "key": directory / "tls.key",
    }
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


class _RequireToken(grpc.ServerInterceptor):
    """Rejects calls without `authorization: Bearer <token>` (what the services' auth does)."""

    def __init__(self, token: str) -> None:
        self.token = token

    def intercept_service(self, continuation, handler_call_details):
        if ("authorization", f"Bearer {self.token}") in handler_call_details.invocation_metadata:
            return continuation(handler_call_details)

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

        return grpc.unary_unary_rpc_method_handler(deny)


class _Server:
    def __init__(
        self, credentials: grpc.ServerCredentials | None, token: str | None = None
    ) -> None:
        interceptors = [_RequireToken(token)] if token else []
        self.server = grpc.server(futures.ThreadPoolExecutor(2), interceptors=interceptors)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        address = "127.0.0.1:0"
        self.port = (
            self.server.add_secure_port(address, credentials)
            if credentials
            else self.server.add_insecure_port(address)
        )
        self.server.start()

    def serving(self, yes: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if yes
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        self.health.set("", status)


@pytest.fixture
def certs(tmp_path: Path) -> dict[str, Path]:
    return _certificates(tmp_path)


@pytest.fixture
def servers() -> Iterator[list[_Server]]:
    started: list[_Server] = []
    yield started
    for server in started:
        server.server.stop(None)


def _probe(
    port: int, environment: dict[str, str], server_name: str = SERVER_NAME
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(PROBE), f"--port={port}", f"--server-name={server_name}"],
        env={"PATH": "/usr/bin:/bin", **environment},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_plaintext_serving_and_not_serving(servers) -> None:
    server = _Server(None)
    servers.append(server)
    server.serving(False)
    result = _probe(server.port, {})
    assert result.returncode == 1 and "NOT_SERVING" in result.stdout
    server.serving(True)
    assert _probe(server.port, {}).returncode == 0


def test_tls_verifies_the_server_with_the_ca_beside_the_certificate(servers, certs) -> None:
    credentials = grpc.ssl_server_credentials(
        [(certs["key"].read_bytes(), certs["cert"].read_bytes())]
    )
    server = _Server(credentials)
    servers.append(server)
    server.serving(True)
    environment = {
        "PERENNIAL_TLS_CERT_FILE": str(certs["cert"]),
        "PERENNIAL_TLS_KEY_FILE": str(certs["key"]),
    }
    assert _probe(server.port, environment).returncode == 0
    wrong_name = _probe(server.port, environment, server_name="someone-else")
    assert wrong_name.returncode == 1 and "UNAVAILABLE" in wrong_name.stdout


def test_mutual_tls_and_bearer_token(servers, certs, tmp_path) -> None:
    credentials = grpc.ssl_server_credentials(
        [(certs["key"].read_bytes(), certs["cert"].read_bytes())],
        root_certificates=certs["ca"].read_bytes(),
        require_client_auth=True,
    )
    server = _Server(credentials, token="s3cr3t")
    servers.append(server)
    server.serving(True)
    token_file = tmp_path / "token"
    token_file.write_text("s3cr3t\n")
    environment = {
        "PERENNIAL_TLS_CERT_FILE": str(certs["cert"]),
        "PERENNIAL_TLS_KEY_FILE": str(certs["key"]),
        "PERENNIAL_TLS_CLIENT_CA_FILE": str(certs["ca"]),
    }
    assert (
        _probe(
            server.port, {**environment, "PERENNIAL_AUTH_TOKEN_FILE": str(token_file)}
        ).returncode
        == 0
    )
    no_token = _probe(server.port, environment)
    assert no_token.returncode == 1 and "UNAUTHENTICATED" in no_token.stdout

"""Fixtures of the deployment tests: the chart, its renders, and a loopback HTTPS endpoint that
records the requests the kubernetes client sends.

No API server can run on our machines. This endpoint is not one: it stores every request
(method, path, query, headers, JSON body) and answers with documents the test registers,
so tests can assert the exact requests `services.trainer.kube_events` builds, over real TLS with the
in-cluster token and CA files, and how it reads the answers.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass
class Request:
    """A request the fake API endpoint received."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # names lower-cased
    body: object


@dataclass
class Reply:
    """A canned answer of the fake API endpoint."""

    status: int
    body: str | bytes | dict | list | None  # None: answer with the request body (a create)
    content_type: str = "application/json"


@dataclass
class RecordingEndpoint:
    """Serves HTTPS on 127.0.0.1; `routes[(method, path)]` answers, everything is recorded."""

    workdir: Path
    routes: dict[tuple[str, str], Reply] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ca_file, self.cert_file, self.key_file = _self_signed(self.workdir)
        self.token_file = self.workdir / "token"
        self.token_file.write_text(
            "test-service-account-token"
        )  # projected tokens end without a newline
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                url = urlsplit(self.path)
                path = unquote(url.path)  # decoded, as the API server (Go net/http) sees it
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                endpoint.requests.append(
                    Request(
                        self.command,
                        path,
                        parse_qs(url.query),
                        {k.lower(): v for k, v in self.headers.items()},
                        json.loads(raw) if raw else None,
                    )
                )
                reply = endpoint.routes.get(
                    (self.command, path),
                    Reply(
                        404,
                        {
                            "kind": "Status",
                            "apiVersion": "v1",
                            "status": "Failure",
                            "code": 404,
                            "reason": "NotFound",
                            "message": f"no route for {self.command} {path}",
                        },
                    ),
                )
                body = reply.body if reply.body is not None else (raw or b"{}")  # None: echo
                data = (
                    body
                    if isinstance(body, bytes)
                    else (body.encode() if isinstance(body, str) else json.dumps(body).encode())
                )
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _handle

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_file, self.key_file)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def route(
        self,
        method: str,
        path: str,
        status: int,
        body: str | bytes | dict | list | None = None,
        content_type: str = "application/json",
    ) -> None:
        """Answer `method path` with `status` and `body` from now on."""
        self.routes[(method, path)] = Reply(status, body, content_type)

    @property
    def environ(self) -> dict[str, str]:
        """What the kubelet sets in a pod (service host/port) plus the downward-API variables."""
        return {
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(self.port),
            "PERENNIAL_POD_NAME": "perennial-trainer-7d9f-abcde",
            "PERENNIAL_POD_NAMESPACE": "ml",
            "PERENNIAL_POD_UID": "0b9e8c1a-1111-2222-3333-444455556666",
        }

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _self_signed(workdir: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it (like a cluster's CA)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-cluster-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = (
        workdir / "ca.crt",
        workdir / "server.crt",
        workdir / "server.key",
    )
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_file, cert_file, key_file


@pytest.fixture
def api_endpoint(tmp_path: Path) -> Iterator[RecordingEndpoint]:
    """A recording HTTPS endpoint with the token and CA files a pod would have."""
    endpoint = RecordingEndpoint(tmp_path)
    try:
        yield endpoint
    finally:
        endpoint.close()


# --- the chart ---------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "helm" / "perennial"


@dataclass(frozen=True)
class Rendered:
    """One render of the chart: objects (parsed), by template, and NOTES.txt."""

    objects: list[dict]
    templates: dict[str, list[dict]]
    notes: str

    def one(self, kind: str, component: str | None = None) -> dict:
        found = self.all(kind, component)
        assert len(found) == 1, f"{len(found)} {kind} objects for component {component}"
        return found[0]

    def all(self, kind: str, component: str | None = None) -> list[dict]:
        return [
            o
            for o in self.objects
            if o["kind"] == kind
            and (
                component is None
                or o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component
            )
        ]


@pytest.fixture(scope="session")
def chart() -> Iterator[object]:
    """helm/perennial loaded with helm-python-sdk (Helm's Go SDK through ctypes)."""
    import helm_python

    with helm_python.Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def render(chart):
    """render(values) -> Rendered, as release "perennial" in namespace "ml"."""
    import yaml

    def _render(values: dict, *, name: str = "perennial", namespace: str = "ml") -> Rendered:
        manifests = chart.render(values=values, name=name, namespace=namespace)
        objects, templates, notes = [], {}, ""
        for template, text in sorted(manifests.items()):
            if template.endswith("NOTES.txt"):
                notes = text
                continue
            docs = [d for d in yaml.safe_load_all(text) if d]
            templates[template] = docs
            objects.extend(docs)
        return Rendered(objects, templates, notes)

    return _render

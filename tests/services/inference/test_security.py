"""TLS, mutual TLS and bearer-token auth (perennial.grpc_security) on the inference server, with
certificates generated at test time (a CA, a server certificate for 127.0.0.1/localhost, clients)."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from perennial.config import ConfigError, GrpcSecuritySettings
from perennial.grpc_security import ServerSecurity, bearer_metadata, channel_credentials

from .conftest import publish


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str, issuer_key, issuer_name, key, *, ca: bool, sans=()
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(directory: Path, name: str, key, certificate) -> tuple[Path, Path]:
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.crt"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """ca.crt; server.crt/key for 127.0.0.1 and localhost; client.crt/key by the CA; rogue.crt/key by another CA."""
    directory = tmp_path_factory.mktemp("pki")
    files = {}
    ca_key, rogue_ca_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca = _certificate("perennial test CA", ca_key, _name("perennial test CA"), ca_key, ca=True)
    files["ca"], _ = _write(directory, "ca", ca_key, ca)
    for name, issuer_key, issuer, sans in [
        (
            "server",
            ca_key,
            ca.subject,
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")],
        ),
        ("client", ca_key, ca.subject, []),
        ("rogue", rogue_ca_key, _name("rogue CA"), []),
    ]:
        key = ec.generate_private_key(ec.SECP256R1())
        files[f"{name}_cert"], files[f"{name}_key"] = _write(
            directory, name, key, _certificate(name, issuer_key, issuer, key, ca=False, sans=sans)
        )
    return files


def _secure_service(start_service, learner, security: ServerSecurity):
    service = start_service(security=security)
    publish(service.store, learner)
    return service.ready()


def _infer_request():
    from services.inference.tensors import encode_bytes

    request = service_pb2.ModelInferRequest(model_name="demo")
    request.inputs.add(name="text", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(encode_bytes([b"a dog"]))
    return request


def _security(pki, mutual=False, token=None) -> ServerSecurity:
    return ServerSecurity(
        pki["server_cert"].read_bytes(),
        pki["server_key"].read_bytes(),
        pki["ca"].read_bytes() if mutual else None,
        token,
    )


def test_tls_serves_a_client_that_trusts_the_ca_and_refuses_plaintext(start_service, learner, pki):
    service = _secure_service(start_service, learner, _security(pki))
    client = service.client(ssl=True, root_certificates=str(pki["ca"]))
    from .conftest import text_input

    assert client.infer("demo", [text_input(["a dog"])]).as_numpy("label").shape == (1,)
    with pytest.raises(grpc.RpcError) as caught:
        service_pb2_grpc.GRPCInferenceServiceStub(
            grpc.insecure_channel(service.address)
        ).ModelInfer(_infer_request(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(
    ("client_cert", "accepted"), [("client", True), (None, False), ("rogue", False)]
)
def test_mutual_tls_requires_a_client_certificate_from_the_ca(
    start_service, learner, pki, client_cert, accepted
):
    service = _secure_service(start_service, learner, _security(pki, mutual=True))
    credentials = channel_credentials(
        pki["ca"], pki.get(f"{client_cert}_cert"), pki.get(f"{client_cert}_key")
    )
    stub = service_pb2_grpc.GRPCInferenceServiceStub(
        grpc.secure_channel(service.address, credentials)
    )
    if accepted:
        assert stub.ModelInfer(_infer_request(), timeout=5).model_version
    else:
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(_infer_request(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_bearer_token_is_required_except_for_health_and_reflection(start_service, learner):
    service = start_service(security=ServerSecurity(token="s3cret"))
    publish(service.store, learner)
    service.ready()
    from .conftest import text_input

    client = service.client()
    for headers in (None, bearer_metadata("wrong"), {"authorization": "s3cret"}):
        with pytest.raises(InferenceServerException) as caught:
            client.infer("demo", [text_input(["a dog"])], headers=headers)
        assert caught.value.status() == "StatusCode.UNAUTHENTICATED"
        assert "bearer token" in caught.value.message()
    result = client.infer("demo", [text_input(["a dog"])], headers=bearer_metadata("s3cret"))
    assert result.get_response().model_version
    health = health_pb2_grpc.HealthStub(grpc.insecure_channel(service.address))
    assert (
        health.Check(health_pb2.HealthCheckRequest()).status
        == health_pb2.HealthCheckResponse.SERVING
    )
    assert (
        service.sample("perennial_inference_requests_total", {"adapter": "demo", "code": "OK"}) == 1
    )


def test_tls_with_token_through_channel_credentials(start_service, learner, pki):
    service = _secure_service(start_service, learner, _security(pki, mutual=True, token="t0ken"))
    good = channel_credentials(pki["ca"], pki["client_cert"], pki["client_key"], token="t0ken")
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.secure_channel(service.address, good))
    assert stub.ModelInfer(_infer_request(), timeout=5).model_version
    no_token = channel_credentials(pki["ca"], pki["client_cert"], pki["client_key"])
    stub = service_pb2_grpc.GRPCInferenceServiceStub(grpc.secure_channel(service.address, no_token))
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(_infer_request(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_security_from_the_environment(monkeypatch, pki, tmp_path):
    for name in (
        "PERENNIAL_TLS_CERT_FILE",
        "PERENNIAL_TLS_KEY_FILE",
        "PERENNIAL_TLS_CLIENT_CA_FILE",
        "PERENNIAL_AUTH_TOKEN",
        "PERENNIAL_AUTH_TOKEN_FILE",
    ):
        monkeypatch.delenv(name, raising=False)

    def security() -> ServerSecurity:
        return ServerSecurity.from_settings(GrpcSecuritySettings.load())

    assert security() == ServerSecurity()
    token_file = tmp_path / "token"
    token_file.write_text("from-a-file\n")
    monkeypatch.setenv("PERENNIAL_TLS_CERT_FILE", str(pki["server_cert"]))
    monkeypatch.setenv("PERENNIAL_TLS_KEY_FILE", str(pki["server_key"]))
    monkeypatch.setenv("PERENNIAL_TLS_CLIENT_CA_FILE", str(pki["ca"]))
    monkeypatch.setenv("PERENNIAL_AUTH_TOKEN_FILE", str(token_file))
    configured = security()
    assert configured.tls and configured.mutual_tls and configured.token == "from-a-file"
    monkeypatch.setenv("PERENNIAL_AUTH_TOKEN", "also")
    with pytest.raises(ConfigError, match="not both"):
        security()
    monkeypatch.delenv("PERENNIAL_AUTH_TOKEN")
    monkeypatch.delenv("PERENNIAL_TLS_KEY_FILE")
    with pytest.raises(ConfigError, match="PERENNIAL_TLS_KEY_FILE"):
        security()
    monkeypatch.setenv("PERENNIAL_TLS_KEY_FILE", str(tmp_path / "missing.key"))
    with pytest.raises(ConfigError, match="PERENNIAL_TLS_KEY_FILE=.*missing.key.* cannot be read"):
        security()

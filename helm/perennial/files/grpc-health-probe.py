"""gRPC health probe for TLS-enabled pods (kubelet's native `grpc:` probe speaks only h2c).

Mounted by the chart from a ConfigMap and run by exec probes when tls.enabled:
    python grpc-health-probe.py --port 8001 --server-name perennial-inference
Exit 0 if grpc.health.v1 answers SERVING within --timeout, 1 otherwise. Uses the pod's own
files from the environment contract: PERENNIAL_TLS_CERT_FILE / _KEY_FILE (client certificate
for mutual TLS), the CA next to them (ca.crt) or PERENNIAL_TLS_CLIENT_CA_FILE to verify the
server, and PERENNIAL_AUTH_TOKEN(_FILE) as a bearer token.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def _read(name: str) -> bytes | None:
    path = os.environ.get(name)
    return Path(path).read_bytes() if path else None


def _credentials() -> grpc.ChannelCredentials | None:
    cert_file = os.environ.get("PERENNIAL_TLS_CERT_FILE")
    if not cert_file:
        return None
    ca_file = os.environ.get("PERENNIAL_TLS_CLIENT_CA_FILE") or str(
        Path(cert_file).with_name("ca.crt")
    )
    root = Path(ca_file).read_bytes() if Path(ca_file).exists() else None
    mutual = bool(os.environ.get("PERENNIAL_TLS_CLIENT_CA_FILE"))
    return grpc.ssl_channel_credentials(
        root_certificates=root,
        private_key=_read("PERENNIAL_TLS_KEY_FILE") if mutual else None,
        certificate_chain=_read("PERENNIAL_TLS_CERT_FILE") if mutual else None,
    )


def _token() -> str | None:
    token = os.environ.get("PERENNIAL_AUTH_TOKEN")
    if not token and os.environ.get("PERENNIAL_AUTH_TOKEN_FILE"):
        token = Path(os.environ["PERENNIAL_AUTH_TOKEN_FILE"]).read_text().strip()
    return token or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--server-name", default="", help="name the server certificate must carry")
    parser.add_argument("--service", default="", help="grpc.health.v1 service name ('' = server)")
    parser.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args(argv)

    target = f"{args.host}:{args.port}"
    credentials = _credentials()
    if credentials is None:
        channel = grpc.insecure_channel(target)
    else:
        options = [("grpc.ssl_target_name_override", args.server_name)] if args.server_name else []
        channel = grpc.secure_channel(target, credentials, options=options)
    token = _token()
    metadata = [("authorization", f"Bearer {token}")] if token else None
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service),
                timeout=args.timeout,
                metadata=metadata,
            )
        except grpc.RpcError as error:
            print(f"health check of {target} failed: {error.code().name} {error.details()}")
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        print(f"{target} is {status}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

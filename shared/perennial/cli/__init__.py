"""`perennial`: the operator's command line for a trainer replica's control API.

    perennial status [ADAPTER]           head, candidate, lag, examples, last error
    perennial versions ADAPTER           retained versions, newest first
    perennial snapshot ADAPTER           write a snapshot now
    perennial promote ADAPTER [VERSION]  make a version (default: the candidate) the head
    perennial rollback ADAPTER VERSION   serve VERSION and continue training from it
    perennial pause|resume ADAPTER       stop / restart learning an adapter
    perennial pods RELEASE [-n NAMESPACE]  the release's pods and the adapter versions they serve
                                         (Kubernetes API via your kubeconfig; no trainer needed)

Connection: --target (or PERENNIAL_TRAINER_TARGET, default localhost:50051); a
bearer token from PERENNIAL_AUTH_TOKEN or --token-file; TLS with --tls, --ca-file
and, for mutual TLS, --cert-file/--key-file.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import grpc

from perennial.grpc_security import bearer_metadata, channel_credentials
from perennial.v1 import trainer_pb2, trainer_pb2_grpc


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="perennial",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument(
        "--target", default=os.environ.get("PERENNIAL_TRAINER_TARGET", "localhost:50051")
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        help="file holding the bearer token (default: the PERENNIAL_AUTH_TOKEN variable)",
    )
    parser.add_argument("--tls", action="store_true", help="connect with TLS")
    parser.add_argument("--ca-file", type=Path, help="CA of the server certificate (implies --tls)")
    parser.add_argument("--cert-file", type=Path, help="client certificate for mutual TLS")
    parser.add_argument("--key-file", type=Path, help="client key for mutual TLS")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per call")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("status").add_argument("adapter", nargs="?", default="")
    for name in ("versions", "snapshot", "pause", "resume"):
        commands.add_parser(name).add_argument("adapter")
    promote = commands.add_parser("promote")
    promote.add_argument("adapter")
    promote.add_argument("version", nargs="?", default="")
    pods = commands.add_parser("pods")
    pods.add_argument("release")
    pods.add_argument("-n", "--namespace", default="default")
    rollback = commands.add_parser("rollback")
    rollback.add_argument("adapter")
    rollback.add_argument("version")
    return parser


def table(rows: list[Sequence[object]], header: Sequence[str]) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip() for row in cells
    ]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def _when(info: trainer_pb2.VersionInfo) -> str:
    return datetime.fromtimestamp(info.created.seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _versions(infos) -> str:
    rows = [
        (("head " if v.head else "") + ("candidate" if v.candidate else "")).strip() or "-"
        for v in infos
    ]
    return table(
        [
            (v.version, flag, v.examples, v.parent or "-", _when(v))
            for v, flag in zip(infos, rows, strict=False)
        ],
        ("version", "role", "examples", "parent", "created (UTC)"),
    )


def _statuses(adapters, partitions=()) -> str:
    text = table(
        [
            (
                a.adapter,
                a.head or "-",
                a.candidate or "-",
                a.examples,
                a.lag,
                "yes" if a.paused else "no",
                len(a.classes),
                a.held_reason or a.last_error or "-",
            )
            for a in adapters
        ],
        ("adapter", "head", "candidate", "examples", "lag", "paused", "classes", "note"),
    )
    return text + (f"\npartitions: {', '.join(partitions)}" if partitions else "")


def _channel(args: argparse.Namespace) -> grpc.Channel:
    if args.tls or args.ca_file or args.cert_file:
        return grpc.secure_channel(
            args.target, channel_credentials(args.ca_file, args.cert_file, args.key_file)
        )
    return grpc.insecure_channel(args.target)


def _pods(release: str, namespace: str) -> str:
    from perennial.cli.pods import list_release_pods

    pods = list_release_pods(release, namespace)
    if not pods:
        return (
            f"no pods of release {release!r} in namespace {namespace!r} (or no cluster configured)"
        )
    return table(
        [
            (
                p.name,
                p.component,
                p.phase,
                "yes" if p.ready else "no",
                ", ".join(f"{a.adapter}={a.version or a.sequence}" for a in p.adapters)
                or p.error
                or "-",
            )
            for p in pods
        ],
        ("pod", "component", "phase", "ready", "adapters"),
    )


def run(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "pods":
        print(_pods(args.release, args.namespace))
        return 0
    token = (
        args.token_file.read_text().strip()
        if args.token_file
        else os.environ.get("PERENNIAL_AUTH_TOKEN")
    )
    metadata = list(bearer_metadata(token).items()) if token else None
    with _channel(args) as channel:
        stub = trainer_pb2_grpc.TrainerStub(channel)
        call = {"metadata": metadata, "timeout": args.timeout}
        try:
            if args.command == "status":
                reply = stub.GetStatus(trainer_pb2.GetStatusRequest(adapter=args.adapter), **call)
                print(_statuses(reply.adapters, reply.partitions))
            elif args.command == "versions":
                reply = stub.ListVersions(
                    trainer_pb2.ListVersionsRequest(adapter=args.adapter), **call
                )
                print(_versions(reply.versions))
            elif args.command in ("pause", "resume"):
                method = stub.Pause if args.command == "pause" else stub.Resume
                print(_statuses([method(trainer_pb2.AdapterRequest(adapter=args.adapter), **call)]))
            else:
                request = {
                    "snapshot": lambda: stub.Snapshot(
                        trainer_pb2.SnapshotRequest(adapter=args.adapter), **call
                    ),
                    "promote": lambda: stub.Promote(
                        trainer_pb2.PromoteRequest(adapter=args.adapter, version=args.version),
                        **call,
                    ),
                    "rollback": lambda: stub.Rollback(
                        trainer_pb2.RollbackRequest(adapter=args.adapter, version=args.version),
                        **call,
                    ),
                }[args.command]
                print(_versions([request().version]))
        except grpc.RpcError as error:
            print(f"perennial: {error.code().name}: {error.details()}", file=sys.stderr)
            return 1
    return 0


def main() -> None:
    raise SystemExit(run())


if __name__ == "__main__":
    main()

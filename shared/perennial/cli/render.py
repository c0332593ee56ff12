"""What `perennial` prints: rich tables for people, JSON for programs.

JSON of control-API replies is protobuf's JSON mapping with the proto field names and every
field present (so the keys do not depend on the values); int64 counts are strings there.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from google.protobuf import json_format
from google.protobuf.message import Message
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from perennial.v1 import trainer_pb2

if TYPE_CHECKING:  # perennial.cli.pods loads the kubernetes client: only the commands that use it
    from perennial.cli.pods import ReleasePod
    from perennial.cli.replicas import ReplicaStatus

WIDTH_WHEN_PIPED = 4096


def message_dict(message: Message) -> dict:
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Message):
        return message_dict(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def print_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=_json_default) + "\n")


def print_table(table: Table) -> None:
    console = Console(highlight=False)
    if console.is_terminal:
        console.print(table)
        return
    # Piped: one line per row however wide, without the padding after the last column.
    console = Console(highlight=False, width=WIDTH_WHEN_PIPED)
    with console.capture() as captured:
        console.print(table)
    sys.stdout.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))


def _table(columns: Sequence[str], rows: Iterable[Sequence[object]], caption: str = "") -> Table:
    table = Table(
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        caption=caption or None,
        caption_justify="left",
    )
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(Text(str(cell)) for cell in row))  # Text: no markup from data
    return table


# -- trainer replies -------------------------------------------------------------------------

STATUS_COLUMNS = ("adapter", "head", "candidate", "examples", "lag", "paused", "classes", "note")


def _status_cells(status: trainer_pb2.AdapterStatus) -> tuple[object, ...]:
    return (
        status.adapter,
        status.head or "-",
        status.candidate or "-",
        status.examples,
        status.lag,
        "yes" if status.paused else "no",
        len(status.classes),
        status.held_reason or status.last_error or "-",
    )


def status_table(
    adapters: Iterable[trainer_pb2.AdapterStatus], partitions: Sequence[str] = ()
) -> Table:
    caption = f"partitions: {', '.join(partitions)}" if partitions else ""
    return _table(STATUS_COLUMNS, (_status_cells(a) for a in adapters), caption)


def _created(info: trainer_pb2.VersionInfo) -> str:
    return datetime.fromtimestamp(info.created.seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def versions_table(infos: Iterable[trainer_pb2.VersionInfo]) -> Table:
    def role(info: trainer_pb2.VersionInfo) -> str:
        return " ".join(
            name for name, on in (("head", info.head), ("candidate", info.candidate)) if on
        )

    return _table(
        ("version", "role", "examples", "parent", "created (UTC)"),
        ((v.version, role(v) or "-", v.examples, v.parent or "-", _created(v)) for v in infos),
    )


def replicas_table(replicas: Iterable[ReplicaStatus]) -> Table:
    """One row per adapter of each replica; a replica without adapters, or that could not be
    asked, keeps one row (with the error as its note)."""
    rows = []
    for replica in replicas:
        partitions = ", ".join(replica.partitions) or "-"
        if replica.error or not replica.adapters:
            note = replica.error or "no adapters"
            rows.append((replica.pod, partitions, *("-",) * (len(STATUS_COLUMNS) - 1), note))
        for status in replica.adapters:
            rows.append((replica.pod, partitions, *_status_cells(status)))
    return _table(("pod", "partitions", *STATUS_COLUMNS), rows)


def replicas_json(replicas: Iterable[ReplicaStatus]) -> list[dict]:
    return [
        {
            "pod": r.pod,
            "address": r.address,
            "partitions": list(r.partitions),
            "adapters": [message_dict(a) for a in r.adapters],
            "error": r.error,
        }
        for r in replicas
    ]


# -- Kubernetes ------------------------------------------------------------------------------


def pods_table(pods: Iterable[ReleasePod]) -> Table:
    def adapters(pod: ReleasePod) -> str:
        served = ", ".join(f"{a.adapter}={a.version or a.sequence}" for a in pod.adapters)
        return served or pod.error or "-"

    return _table(
        ("pod", "component", "phase", "ready", "restarts", "adapters"),
        (
            (p.name, p.component, p.phase, "yes" if p.ready else "no", p.restarts, adapters(p))
            for p in pods
        ),
    )


def pods_json(pods: Iterable[ReleasePod]) -> list[dict]:
    return [dataclasses.asdict(pod) for pod in pods]

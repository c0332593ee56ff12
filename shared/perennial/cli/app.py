"""The `perennial` commands (typer): each calls the trainer's control API or the Kubernetes API
and prints a table or JSON. Errors: `perennial: ...` on stderr (no traceback), exit status 1
or 2; a trainer that was never reached gets a hint on where to point the CLI."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Annotated, Any, NoReturn

import typer

import perennial
from perennial.cli import render
from perennial.cli.connection import CommandLineError, TrainerClient, TrainerError
from perennial.cli.options import (
    DEFAULT_TARGET,
    FAILED,
    MISTAKE,
    TARGET_VARIABLE,
    Connection,
    Output,
    shared_options,
)
from perennial.cli.replicas import ask_replicas
from perennial.v1 import trainer_pb2

app = typer.Typer(
    name="perennial",
    help="Operate Perennial's trainers: status, versions, snapshot, promote, rollback, "
    "pause/resume through the control API (perennial.v1.Trainer), and a release's pods "
    "through the Kubernetes API.",
    epilog=f"Connection and output options go before or after the command. Trainer: --target, "
    f"else {TARGET_VARIABLE}, else {DEFAULT_TARGET}. Exit status: 0 done, {FAILED} the trainer "
    f"or Kubernetes failed or was not reached, {MISTAKE} a mistake on the command line.",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # a bug's traceback must not print the token
)


def _fail(message: str, status: int = FAILED) -> NoReturn:
    typer.echo(f"perennial: {message}", err=True)
    raise typer.Exit(status)


def _unreachable_hint(connection: Connection) -> str:
    return (
        f"no trainer answered at {connection.target} (from {connection.target_origin}).\n"
        f"  Point the CLI at one with --target HOST:PORT or {TARGET_VARIABLE}=HOST:PORT.\n"
        f"  On Kubernetes: kubectl -n NAMESPACE port-forward svc/RELEASE-perennial-trainer "
        f"50051\n"
        f"  (svc/RELEASE-trainer when the release name contains 'perennial'), then "
        f"--target localhost:50051;\n"
        f"  or, from inside the cluster, every replica: perennial status --release RELEASE"
    )


def _one_line_errors(func: Callable) -> Callable:
    """Run the command; the failures an operator can cause or meet become one line + exit."""

    @functools.wraps(func)
    def command(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except CommandLineError as error:
            _fail(str(error), MISTAKE)
        except TrainerError as error:
            connection = kwargs.get("connection")
            hint = "" if error.reached or connection is None else _unreachable_hint(connection)
            _fail(f"{error}" + (f"\nperennial: {hint}" if hint else ""))

    return command


def _command(func: Callable) -> Callable:
    """Register `func` as a command with the shared options and one-line errors."""
    return app.command()(shared_options(_one_line_errors(func)))


def _version(show: bool) -> None:
    if show:
        typer.echo(f"perennial {perennial.__version__}")
        raise typer.Exit()


@app.callback()
@shared_options
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    *,
    connection: Connection,
    output: Output,
) -> None:
    """Operate Perennial's trainers and see what a release serves."""


# -- arguments -------------------------------------------------------------------------------

Adapter = Annotated[
    str, typer.Argument(metavar="ADAPTER", help="Adapter id, e.g. wordnet.", show_default=False)
]
Namespace = Annotated[
    str | None,
    typer.Option(
        "-n",
        "--namespace",
        metavar="NAMESPACE",
        help="Kubernetes namespace. Default: the kubeconfig context's, else 'default'.",
        show_default=False,
    ),
]


def _show(output: Output, data: object, table: Callable[[], Any]) -> None:
    if output.json:
        render.print_json(data)
    else:
        render.print_table(table())


def _release_pods(release: str, namespace: str | None, **kwargs: Any) -> tuple[list, str]:
    """The release's pods (`list_release_pods` arguments) and the namespace they were read from;
    any Kubernetes failure ends the command with one line."""
    # Imported here: the kubernetes client takes ~0.4 s to load, which no trainer command needs.
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    from perennial.cli.cluster import NoCluster, connect_cluster
    from perennial.cli.pods import list_release_pods

    try:
        cluster = connect_cluster()
    except NoCluster as error:
        _fail(str(error))
    namespace = namespace or cluster.namespace
    try:
        return list_release_pods(release, namespace, api=cluster.api, **kwargs), namespace
    except ApiException as error:
        _fail(f"Kubernetes API: HTTP {error.status} {error.reason}{_status_message(error.body)}")
    except HTTPError as error:  # urllib3: no answer (refused, TLS, timeout) after its retries
        reason = getattr(error, "reason", None) or error
        host = cluster.api.configuration.host
        _fail(f"Kubernetes API at {host} ({cluster.source}) not reached: {reason}")


def _status_message(body: object) -> str:
    """The message of a Kubernetes Status body as ": message", or "" when it has none."""
    try:
        message = json.loads(body or "{}").get("message", "")
    except (TypeError, ValueError, AttributeError):
        message = ""
    return f": {message}" if message else ""


def _call(connection: Connection, method: str, request: Any) -> Any:
    with TrainerClient(connection) as trainer:
        return trainer.call(method, request)


# -- commands --------------------------------------------------------------------------------


@_command
def status(
    adapter: Annotated[
        str,
        typer.Argument(
            metavar="ADAPTER", help="Adapter id. Default: every adapter.", show_default=False
        ),
    ] = "",
    release: Annotated[
        str | None,
        typer.Option(
            metavar="RELEASE",
            help="Ask every trainer replica of this Helm release, pod by pod, instead of "
            "--target (pods from the Kubernetes API; their IPs must be routable: run it "
            "inside the cluster).",
            show_default=False,
        ),
    ] = None,
    namespace: Namespace = None,
    *,
    connection: Connection,
    output: Output,
) -> None:
    """Adapters of a trainer: head, candidate, examples, lag, paused, classes, note."""
    if release is None:
        if namespace is not None:
            raise CommandLineError("--namespace goes with --release")
        reply = _call(connection, "GetStatus", trainer_pb2.GetStatusRequest(adapter=adapter))
        _show(
            output,
            render.message_dict(reply),
            lambda: render.status_table(reply.adapters, reply.partitions),
        )
        return
    pods, namespace = _release_pods(release, namespace, read_versions=False, component="trainer")
    if not pods:
        _fail(f"no trainer pods of release {release!r} in namespace {namespace!r}")
    replicas = ask_replicas(pods, connection, adapter)
    _show(output, render.replicas_json(replicas), lambda: render.replicas_table(replicas))
    if any(r.error for r in replicas):
        raise typer.Exit(FAILED)


@_command
def versions(adapter: Adapter, *, connection: Connection, output: Output) -> None:
    """Retained versions of an adapter, newest first."""
    reply = _call(connection, "ListVersions", trainer_pb2.ListVersionsRequest(adapter=adapter))
    _show(output, render.message_dict(reply), lambda: render.versions_table(reply.versions))


def _version_reply(output: Output, reply: trainer_pb2.VersionResponse) -> None:
    _show(output, render.message_dict(reply), lambda: render.versions_table([reply.version]))


@_command
def snapshot(adapter: Adapter, *, connection: Connection, output: Output) -> None:
    """Write a snapshot of what the adapter has learned now (it becomes the candidate)."""
    request = trainer_pb2.SnapshotRequest(adapter=adapter)
    _version_reply(output, _call(connection, "Snapshot", request))


@_command
def promote(
    adapter: Adapter,
    version: Annotated[
        str,
        typer.Argument(
            metavar="VERSION",
            help="A retained version. Default: the candidate.",
            show_default=False,
        ),
    ] = "",
    *,
    connection: Connection,
    output: Output,
) -> None:
    """Make a version the head (served by inference), past the forgetting guardrail."""
    request = trainer_pb2.PromoteRequest(adapter=adapter, version=version)
    _version_reply(output, _call(connection, "Promote", request))


@_command
def rollback(
    adapter: Adapter,
    version: Annotated[
        str, typer.Argument(metavar="VERSION", help="A retained version.", show_default=False)
    ],
    *,
    connection: Connection,
    output: Output,
) -> None:
    """Serve an older retained version and continue training from it."""
    request = trainer_pb2.RollbackRequest(adapter=adapter, version=version)
    _version_reply(output, _call(connection, "Rollback", request))


def _pause_or_resume(method: str, adapter: str, connection: Connection, output: Output) -> None:
    reply = _call(connection, method, trainer_pb2.AdapterRequest(adapter=adapter))
    _show(output, render.message_dict(reply), lambda: render.status_table([reply]))


@_command
def pause(adapter: Adapter, *, connection: Connection, output: Output) -> None:
    """Stop learning an adapter (its records wait in Kafka)."""
    _pause_or_resume("Pause", adapter, connection, output)


@_command
def resume(adapter: Adapter, *, connection: Connection, output: Output) -> None:
    """Learn an adapter again after pause."""
    _pause_or_resume("Resume", adapter, connection, output)


@_command
def pods(
    release: Annotated[
        str, typer.Argument(metavar="RELEASE", help="Helm release name.", show_default=False)
    ],
    namespace: Namespace = None,
    *,
    output: Output,
) -> None:
    """A release's pods and the adapter versions each serves (Kubernetes API, kubeconfig)."""
    found, namespace = _release_pods(release, namespace)
    if not found and not output.json:
        typer.echo(f"no pods of release {release!r} in namespace {namespace!r}", err=True)
        return
    _show(output, render.pods_json(found), lambda: render.pods_table(found))


def main() -> None:
    """The `perennial` console script."""
    app()

"""Options every `perennial` command accepts before or after its name, declared once.

Typer parses the app callback's options only before the command name. So each option group
is a dataclass whose fields carry their `typer.Option`; `shared_options` gives a command every
field of the groups it asks for (a keyword-only parameter typed with the dataclass) and the
callback gets them all. A value typed after the command wins; otherwise the callback's value
(typed before it, or from the environment, or the default) applies.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, get_type_hints

import typer
from typer.models import OptionInfo

CONNECTION = "Connection to the trainer"
OUTPUT = "Output"
DEFAULT_TARGET = "localhost:50051"
TARGET_VARIABLE = "PERENNIAL_TRAINER_TARGET"
TOKEN_VARIABLE = "PERENNIAL_AUTH_TOKEN"
TOKEN_FILE_VARIABLE = "PERENNIAL_AUTH_TOKEN_FILE"
# Exit status: 1 = the trainer or the Kubernetes API failed or could not be reached,
# 2 = a mistake on the command line (typer's usage errors use 2 as well).
FAILED, MISTAKE = 1, 2


class Format(StrEnum):
    """How results are printed."""

    table = "table"
    json = "json"


@dataclasses.dataclass(frozen=True)
class Connection:
    """Where a trainer's control API is and how to authenticate to it."""

    target: Annotated[
        str,
        typer.Option(
            envvar=TARGET_VARIABLE,
            metavar="HOST:PORT",
            help="Address of a trainer's control API (perennial.v1.Trainer).",
            rich_help_panel=CONNECTION,
        ),
    ] = DEFAULT_TARGET
    token_file: Annotated[
        Path | None,
        typer.Option(
            envvar=TOKEN_FILE_VARIABLE,  # set in the chart's pods: the CLI works there as is
            metavar="FILE",
            help=f"File holding the bearer token. Default: the {TOKEN_VARIABLE} variable.",
            rich_help_panel=CONNECTION,
        ),
    ] = None
    tls: Annotated[
        bool,
        typer.Option(
            "--tls",
            help="Connect with TLS (implied by --ca-file, --cert-file, --key-file).",
            rich_help_panel=CONNECTION,
        ),
    ] = False
    ca_file: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="PEM CA that signed the trainer's certificate. Default: the system's CAs.",
            rich_help_panel=CONNECTION,
        ),
    ] = None
    cert_file: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="PEM client certificate, for mutual TLS (with --key-file).",
            rich_help_panel=CONNECTION,
        ),
    ] = None
    key_file: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="PEM private key of --cert-file.",
            rich_help_panel=CONNECTION,
        ),
    ] = None
    server_name: Annotated[
        str | None,
        typer.Option(
            metavar="NAME",
            help="Name to verify in the trainer's TLS certificate when it is not the target's "
            "host (port-forwards, pod IPs), e.g. RELEASE-perennial-trainer.",
            rich_help_panel=CONNECTION,
        ),
    ] = None
    timeout: Annotated[
        float,
        typer.Option(
            min=0.01,
            metavar="SECONDS",
            help="Deadline of each call.",
            rich_help_panel=CONNECTION,
        ),
    ] = 30.0
    # Not an option: where `target` came from, for the hint when the trainer cannot be reached.
    target_origin: str = "the default"

    @property
    def uses_tls(self) -> bool:
        return bool(self.tls or self.ca_file or self.cert_file or self.key_file)


def _format(value: str) -> Format:
    # Parsed here, not as a choice: an unknown format is one line, not a usage panel.
    try:
        return Format(value.lower())
    except ValueError:
        formats = " or ".join(f.value for f in Format)
        typer.echo(f"perennial: -o/--output {value!r}: use {formats}", err=True)
        raise typer.Exit(MISTAKE) from None


@dataclasses.dataclass(frozen=True)
class Output:
    """How a command prints its result."""

    output: Annotated[
        str,
        typer.Option(
            "-o",
            "--output",
            metavar="table|json",
            callback=_format,
            help="table: for people; json: for programs (protobuf JSON mapping, stable keys).",
            rich_help_panel=OUTPUT,
        ),
    ] = Format.table

    @property
    def json(self) -> bool:
        return self.output == Format.json


def _option_fields(group: type) -> dict[str, inspect.Parameter]:
    """The fields of `group` declared as typer options, as keyword-only parameters."""
    hints = get_type_hints(group, include_extras=True)
    return {
        f.name: inspect.Parameter(
            f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=hints[f.name]
        )
        for f in dataclasses.fields(group)
        if any(isinstance(m, OptionInfo) for m in getattr(hints[f.name], "__metadata__", ()))
    }


# ctx.meta is one dict for the whole context chain: the callback leaves its values there.
_CALLBACK_VALUES = "perennial.cli.options"
_CONTEXT = "_typer_context"  # the parameter typer fills with the command's context


def _source(ctx: typer.Context, name: str) -> str:
    """Where a parameter's value came from: COMMANDLINE, ENVIRONMENT, DEFAULT, ..."""
    source = ctx.get_parameter_source(name)
    return source.name if source is not None else ""


def _merged(ctx: typer.Context, group: type, values: dict[str, Any]) -> Any:
    """This context's values of `group`. The callback (the root context) takes everything it
    resolved: typed, from the environment, or the default. A command takes what was typed after
    its name and the callback's values for the rest."""
    if ctx.parent is None:
        merged = group(**values)
        if group is Connection:
            origin = {"COMMANDLINE": "--target", "ENVIRONMENT": TARGET_VARIABLE}
            merged = dataclasses.replace(
                merged, target_origin=origin.get(_source(ctx, "target"), "the default")
            )
        ctx.meta.setdefault(_CALLBACK_VALUES, {})[group] = merged
        return merged
    typed = {n: v for n, v in values.items() if _source(ctx, n) == "COMMANDLINE"}
    merged = dataclasses.replace(ctx.meta[_CALLBACK_VALUES][group], **typed)
    if group is Connection and "target" in typed:
        merged = dataclasses.replace(merged, target_origin="--target")
    return merged


def shared_options(func: Callable) -> Callable:
    """`func` with every option of the groups its keyword-only parameters are typed with
    (`*, connection: Connection, output: Output`), handed over as one object per group."""
    hints = get_type_hints(func, include_extras=True)
    signature = inspect.signature(func)
    groups = {
        name: hints[name]
        for name, p in signature.parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and hints.get(name) in (Connection, Output)
    }
    fields = {name: _option_fields(group) for name, group in groups.items()}
    own = [
        p.replace(annotation=hints.get(p.name, p.annotation))
        for p in signature.parameters.values()
        if p.name not in groups
    ]
    context = inspect.Parameter(_CONTEXT, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)

    @functools.wraps(func)
    def command(*args: Any, **kwargs: Any) -> Any:
        ctx = kwargs.pop(_CONTEXT)
        for name, group in groups.items():
            values = {field: kwargs.pop(field) for field in fields[name]}
            kwargs[name] = _merged(ctx, group, values)
        return func(*args, **kwargs)

    params = [*own, *(p for group in fields.values() for p in group.values()), context]
    command.__signature__ = signature.replace(parameters=params)  # what typer reads
    return command

"""`perennial` against real trainer control servers: help, options anywhere, JSON, errors."""

from __future__ import annotations

import json

import pytest
import typer

from perennial import __version__
from perennial.cli import app
from tests.shared.cli.conftest import TOKEN

COMMANDS = ["status", "versions", "snapshot", "promote", "rollback", "pause", "resume", "pods"]
CLOSED = "127.0.0.1:1"  # nothing listens on port 1


@pytest.mark.parametrize("command", [[], *([c] for c in COMMANDS)])
def test_help_of_every_command(perennial, command) -> None:
    result = perennial(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and "--output" in result.output


def test_every_command_option_and_argument_has_help() -> None:
    group = typer.main.get_command(app)
    ctx = group.make_context("perennial", ["--help"], resilient_parsing=True)
    assert group.help
    missing = [f"perennial {p.name}" for p in group.params if not getattr(p, "help", "")]
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command.help, name
        missing += [f"{name} {p.name}" for p in command.params if not getattr(p, "help", "")]
    assert missing == []


def test_version(perennial) -> None:
    result = perennial("--version")
    assert (result.exit_code, result.output) == (0, f"perennial {__version__}\n")


def _json(result) -> object:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize(
    "where",
    [
        "before",  # perennial --target T -o json status wordnet
        "after",  # perennial status --target T -o json wordnet
        "mixed",  # perennial -o JSON status wordnet --target T
    ],
)
def test_options_before_or_after_the_command(perennial, replicas, where) -> None:
    wordnet = replicas[0]
    target, output = ["--target", wordnet.address], ["-o", "json"]
    args = {
        "before": [*target, *output, "status", "wordnet"],
        "after": ["status", *target, *output, "wordnet"],
        "mixed": ["-o", "JSON", "status", "wordnet", *target],  # any case
    }[where]
    reply = _json(perennial(*args, env={"PERENNIAL_AUTH_TOKEN": TOKEN}))
    assert [a["adapter"] for a in reply["adapters"]] == ["wordnet"]
    assert reply["partitions"] == [f"{wordnet.topic}:0"]


def test_typed_options_beat_the_environment_before_and_after_the_command(
    perennial, replicas, tmp_path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    env = {"PERENNIAL_TRAINER_TARGET": CLOSED, "PERENNIAL_AUTH_TOKEN": "wrong"}
    address = replicas[1].address
    for args in (
        ["--target", address, "--token-file", str(token_file), "status", "-o", "json"],
        ["--target", CLOSED, "status", "--target", address, "--token-file", str(token_file)],
    ):
        result = perennial(*args, "-o", "json", env=env)
        assert [a["adapter"] for a in _json(result)["adapters"]] == ["tickets"], args
    # the variables apply when nothing is typed; a token file's beats a token's
    env.update(PERENNIAL_TRAINER_TARGET=address, PERENNIAL_AUTH_TOKEN_FILE=str(token_file))
    result = perennial("status", "-o", "json", env=env)
    assert [a["adapter"] for a in _json(result)["adapters"]] == ["tickets"]


def test_json_of_every_trainer_command(perennial, replicas) -> None:
    def run(*args: str):
        return _json(
            perennial(
                *args,
                "-o",
                "json",
                "--target",
                replicas[0].address,
                env={"PERENNIAL_AUTH_TOKEN": TOKEN},
            )
        )

    status = run("status")
    [wordnet] = status["adapters"]
    assert set(wordnet) == {
        "adapter",
        "head",
        "candidate",
        "examples",
        "lag",
        "paused",
        "last_error",
        "classes",
        "held_reason",
    }
    assert wordnet["examples"] == "8"  # int64: a string in protobuf's JSON mapping
    assert sorted(wordnet["classes"]) == ["animal", "plant"] and wordnet["paused"] is False

    snapshot = run("snapshot", "wordnet")["version"]
    assert {
        "version",
        "parent",
        "sequence",
        "examples",
        "created",
        "head",
        "candidate",
        "metrics",
    } <= set(snapshot)
    versions = run("versions", "wordnet")["versions"]
    assert [v["version"] for v in versions][:1] == [snapshot["version"]]
    first = versions[-1]["version"]
    assert run("rollback", "wordnet", first)["version"]["head"] is True
    assert (
        run("promote", "wordnet", snapshot["version"])["version"]["version"] == snapshot["version"]
    )
    assert run("pause", "wordnet")["paused"] is True
    assert run("resume", "wordnet")["paused"] is False


def test_table_output(perennial, replicas) -> None:
    result = perennial(
        "status", "--target", replicas[0].address, env={"PERENNIAL_AUTH_TOKEN": TOKEN}
    )
    assert result.exit_code == 0, result.output
    header, *_ = [line for line in result.stdout.splitlines() if line.strip()]
    assert header.split() == [
        "adapter",
        "head",
        "candidate",
        "examples",
        "lag",
        "paused",
        "classes",
        "note",
    ]
    assert "wordnet" in result.stdout and f"partitions: {replicas[0].topic}:0" in result.stdout


def test_a_trainer_error_is_its_code_and_details_on_one_line(perennial, replicas) -> None:
    result = perennial(
        "rollback",
        "wordnet",
        "v999999-none",
        "--target",
        replicas[0].address,
        env={"PERENNIAL_AUTH_TOKEN": TOKEN},
    )
    assert result.exit_code == 1 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("perennial: NOT_FOUND: ")

    unauthenticated = perennial("status", "--target", replicas[0].address)
    assert unauthenticated.exit_code == 1
    assert unauthenticated.stderr.startswith("perennial: UNAUTHENTICATED: ")
    assert "port-forward" not in unauthenticated.stderr  # it was reached: no hint


@pytest.mark.parametrize(
    "args, env, origin",
    [
        (["--target", CLOSED], {}, "--target"),
        ([], {"PERENNIAL_TRAINER_TARGET": CLOSED}, "PERENNIAL_TRAINER_TARGET"),
    ],
)
def test_an_unreachable_trainer_gets_a_hint(perennial, args, env, origin) -> None:
    result = perennial("status", "--timeout", "2", *args, env=env)
    assert result.exit_code == 1 and result.stdout == ""
    first, *hint = result.stderr.splitlines()
    assert first.startswith("perennial: UNAVAILABLE: ")
    hint = "\n".join(hint)
    assert f"no trainer answered at {CLOSED} (from {origin})" in hint
    assert "--target HOST:PORT or PERENNIAL_TRAINER_TARGET" in hint
    assert "kubectl -n NAMESPACE port-forward svc/RELEASE-perennial-trainer 50051" in hint


def test_the_default_target_is_named_in_the_hint(perennial) -> None:
    result = perennial("versions", "wordnet", "--timeout", "2")
    assert result.exit_code == 1
    assert "no trainer answered at localhost:50051 (from the default)" in result.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--token-file", "{tmp}/missing"],
            "--token-file {tmp}/missing: No such file or directory",
        ),
        (["--token-file", "{tmp}/empty"], "--token-file {tmp}/empty is empty"),
        (["--ca-file", "{tmp}/garbage"], "--ca-file {tmp}/garbage: not a PEM CA certificate"),
        (["--ca-file", "{tmp}/missing"], "--ca-file {tmp}/missing: No such file or directory"),
        (["--cert-file", "{tmp}/garbage"], "mutual TLS needs both --cert-file and --key-file"),
        (
            ["--cert-file", "{tmp}/garbage", "--key-file", "{tmp}/garbage"],
            "--cert-file {tmp}/garbage / --key-file {tmp}/garbage: not a PEM certificate and its "
            "private key",
        ),
        (["--server-name", "x"], "--server-name needs TLS (--tls or --ca-file)"),
        (["-n", "ml"], "--namespace goes with --release"),
    ],
)
def test_mistakes_are_one_line_and_exit_2(perennial, tmp_path, args, message) -> None:
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "garbage").write_text("not a certificate\n")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = perennial("status", "--target", CLOSED, *args)
    assert result.exit_code == 2 and result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("perennial: " + message.replace("{tmp}", str(tmp_path))), line


@pytest.mark.parametrize("where", ["before", "after"])
def test_an_unknown_output_format_is_one_line(perennial, where) -> None:
    args = ["-o", "xml", "status"] if where == "before" else ["status", "-o", "xml"]
    result = perennial(*args)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr == "perennial: -o/--output 'xml': use table or json\n"

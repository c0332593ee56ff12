"""`make bench-protocols`: REST vs gRPC latency of the inference service, side by side.

    .venv/bin/python -m bench.protocols [--requests 300] [--repeats 3] \
        [--out bench/protocols-results.json] [--doc docs/BENCHMARKS.md]

One inference process (`python -m services.inference`, one torch thread) serving one model
(MiniLM + an LAE LoRA ensemble after 20 micro-batches of WordNet, as `make bench-serving`);
closed-loop load, one text per request, `--requests` measured requests per point after a
warm-up, every client thread with its own connection: `tritonclient.grpc` against the gRPC
port, `tritonclient.http` (binary tensors) against the REST port, at concurrency 1 and 8.
The points are interleaved (gRPC c=1, REST c=1, gRPC c=8, REST c=8) and the whole round is
repeated, so both protocols see the same machine load; the section reports the median of
the repeats and their range. Also written: `--render` re-renders the section from a results
JSON, `--servers` adds the HTTP-server comparison of bench/rest_servers.py.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import redis
import torch
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http

from bench.report import write_section
from bench.serving import ADAPTER, THREADS, machine, trained_snapshot
from perennial.backbone import TextBackbone
from perennial.store import SnapshotStore, to_safetensors
from perennial_dev.datasets.wordnet import read_noun_glosses
from perennial_dev.launch import start_inference
from perennial_dev.localstack import start_redis

ROOT = Path(__file__).resolve().parents[1]
SECTION = ("<!-- protocols:begin -->", "<!-- protocols:end -->")
OUTPUTS = ("probabilities", "label")
CLIENTS = {"grpc": triton_grpc, "rest": triton_http}
WARMUP = 20  # requests per thread before measuring


def run_load(
    protocol: str, address: str, concurrency: int, requests: int, texts: list[str]
) -> dict:
    """Closed loop: `concurrency` threads, each its own client; `requests` measured in all."""
    module = CLIENTS[protocol]
    per_thread = max(1, requests // concurrency)
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency

    def worker(index: int) -> None:
        client = module.InferenceServerClient(address)
        inputs = []
        for text in texts[index::concurrency][:64]:
            tensor = module.InferInput("text", [1], "BYTES")
            tensor.set_data_from_numpy(np.array([text.encode()], dtype=np.object_))
            inputs.append(tensor)
        outputs = [module.InferRequestedOutput(name) for name in OUTPUTS]
        for n in range(WARMUP + per_thread):
            started = time.perf_counter()
            try:
                client.infer(ADAPTER, [inputs[n % len(inputs)]], outputs=outputs)
                if n >= WARMUP:
                    latencies[index].append(time.perf_counter() - started)
            except Exception:  # counted, not raised: the error count is a result
                errors[index] += 1
        client.close()

    began = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    elapsed = time.perf_counter() - began
    samples = np.array([x for per in latencies for x in per])
    return {
        "protocol": protocol,
        "concurrency": concurrency,
        "requests": int(samples.size),
        "errors": int(sum(errors)),
        "throughput": round(concurrency * (WARMUP + per_thread) / elapsed, 1),
        "p50_ms": round(float(np.percentile(samples, 50) * 1000), 2),
        "p99_ms": round(float(np.percentile(samples, 99) * 1000), 2),
    }


def section(results: dict) -> str:
    """The Markdown section, from the results JSON only."""
    lines = [
        "## REST vs gRPC",
        "",
        f"`make bench-protocols`, {results['date']}: {results['machine']}, Python "
        f"{results['python']}; the 2 cores were **shared** with other work (load average at "
        f"start {results['load_average']}). One inference process, one torch thread, one "
        f"model ({results['classes']} classes); {results['requests']} measured requests per "
        f"point (rounded down to a multiple of the concurrency), one text per request; the "
        f"points interleaved and the round repeated "
        f"{results['repeats']} times. Median of the repeats, range in brackets.",
        "",
        "| protocol | concurrency | p50 ms | p99 ms | requests/s | errors |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    points = results["points"]
    for concurrency in (1, 8):
        for protocol in ("grpc", "rest"):
            runs = [
                p for p in points if (p["protocol"], p["concurrency"]) == (protocol, concurrency)
            ]

            def cell(key: str, runs=runs) -> str:
                values = [r[key] for r in runs]
                return f"{statistics.median(values):.1f} [{min(values):.1f}–{max(values):.1f}]"

            errors = sum(r["errors"] for r in runs)
            name = {"grpc": "gRPC (`tritonclient.grpc`)", "rest": "REST (`tritonclient.http`, binary tensors)"}[protocol]  # fmt: skip
            lines.append(
                f"| {name} | {concurrency} | {cell('p50_ms')} | {cell('p99_ms')} | "
                f"{cell('throughput')} | {errors} |"
            )
    lines += _comparison(points)
    if "servers" in results:
        lines += _servers(results["servers"])
    return "\n".join(lines)


def _comparison(points: list[dict]) -> list[str]:
    out = [""]
    for concurrency in (1, 8):
        p50 = {
            protocol: [p["p50_ms"] for p in points
                       if (p["protocol"], p["concurrency"]) == (protocol, concurrency)]
            for protocol in ("grpc", "rest")
        }  # fmt: skip
        rest, grpc = statistics.median(p50["rest"]), statistics.median(p50["grpc"])
        overlap = min(p50["rest"]) <= max(p50["grpc"]) and min(p50["grpc"]) <= max(p50["rest"])
        # the points are interleaved: each repeat compares the two under the same load
        paired = [r - g for r, g in zip(p50["rest"], p50["grpc"], strict=True)]
        out.append(
            f"At concurrency {concurrency}, REST's median p50 is {rest - grpc:+.1f} ms against "
            f"gRPC's ({rest / grpc:.2f}×); within each repeat, REST − gRPC is "
            f"{statistics.median(paired):+.1f} ms in the median [{min(paired):+.1f} to "
            f"{max(paired):+.1f}]; the repeats' ranges "
            + ("overlap: on this shared machine the difference is within the run-to-run spread."
               if overlap else "do not overlap.")
        )  # fmt: skip
    return out


def _servers(servers: dict) -> list[str]:
    """The HTTP-server comparison (bench/rest_servers.py) that chose aiohttp."""
    out = [
        "",
        "### Which HTTP server",
        "",
        f"`bench/rest_servers.py`, {servers['when']}, {servers['machine']['cpus']} shared "
        f"cores: each candidate serves the REST handler's shape (parse JSON, run a blocking "
        f"operation on a worker thread that waits for a batch thread, answer JSON) with no "
        f"model; {servers['requests_per_point']} keep-alive requests per point, "
        f"{len({r['repeat'] for r in servers['results']})} repeats, median [range].",
        "",
        "| server | c=1 p50 ms | c=1 p99 ms | c=8 p50 ms | c=8 p99 ms | c=8 requests/s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name in dict.fromkeys(r["server"] for r in servers["results"]):

        def cell(concurrency: int, key: str, name=name) -> str:
            values = [r[key] for r in servers["results"]
                      if (r["server"], r["concurrency"]) == (name, concurrency)]  # fmt: skip
            return f"{statistics.median(values):.2f} [{min(values):.2f}–{max(values):.2f}]"

        out.append(
            f"| {name} | {cell(1, 'p50_ms')} | {cell(1, 'p99_ms')} | {cell(8, 'p50_ms')} | "
            f"{cell(8, 'p99_ms')} | {cell(8, 'throughput_rps')} |"
        )
    slowest = max(r["p50_ms"] for r in servers["results"] if r["concurrency"] == 1)
    out += [
        "",
        f"Every candidate's median at concurrency 1 is at most {slowest:.2f} ms, small next to "
        "the model's time above, and aiohttp is among the fastest at concurrency 8; the choice "
        "fell on what costs least to carry: aiohttp is already in the image (through "
        "`kubernetes`), where uvicorn, Starlette, FastAPI, granian or cheroot would each be new "
        "dependencies.",
    ]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="measured requests per point")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "protocols-results.json")
    parser.add_argument(
        "--servers", type=Path, default=ROOT / "bench" / "rest-servers-results.json"
    )
    parser.add_argument("--doc", type=Path, default=None, help="write the section of this file")
    parser.add_argument("--render", type=Path, default=None, help="re-render from a results JSON")
    args = parser.parse_args()
    if args.render:
        results = json.loads(args.render.read_text())
    else:
        results = measure(args)
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    if args.servers.exists():
        results = {**results, "servers": json.loads(args.servers.read_text())}
    text = section(results)
    print(text)
    if args.doc:
        write_section(args.doc, SECTION, text)


def measure(args) -> dict:
    torch.set_num_threads(THREADS)
    results: dict = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "python": platform.python_version(),
        "command": "make bench-protocols",
        "requests": args.requests,
        "repeats": args.repeats,
        "load_average": " / ".join(f"{x:.1f}" for x in os.getloadavg()),
        "shared_machine": True,
    }
    glosses = read_noun_glosses()
    texts = [g.text for g in glosses[::7]][:4000]
    labels = [g.label for g in glosses[::7]][:4000]
    workdir = Path(tempfile.mkdtemp(prefix="bench-protocols-"))
    redis_server = start_redis(workdir)
    try:
        store = SnapshotStore(redis.Redis.from_url(redis_server.url))
        tensors, metadata = trained_snapshot(TextBackbone.load(), texts[1000:], labels[1000:])
        manifest = store.publish(
            ADAPTER,
            to_safetensors(tensors, metadata),
            parent=None,
            offsets={},
            examples=320,
            classes=json.loads(metadata["classes"]),
        )
        results["classes"] = len(manifest.classes)
        service = start_inference(
            workdir,
            redis_url=redis_server.url,
            PERENNIAL_TORCH_THREADS=THREADS,
            PERENNIAL_LOG_LEVEL="WARNING",
        )
        addresses = {"grpc": service.grpc_address, "rest": service.rest_address}
        try:
            points = []
            for repeat in range(args.repeats):
                for concurrency in (1, 8):
                    for protocol in ("grpc", "rest"):
                        point = run_load(
                            protocol, addresses[protocol], concurrency, args.requests, texts[:1000]
                        )
                        point["repeat"] = repeat
                        print(json.dumps(point), flush=True)
                        points.append(point)
            results["points"] = points
        finally:
            service.stop()
    finally:
        redis_server.stop()
    return results


if __name__ == "__main__":
    main()

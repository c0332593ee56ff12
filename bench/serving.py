"""`make bench-serving`: Perennial's inference service vs KServe's Python model server vs the
in-process limit, on the same model, the same runtime and the same predict function.

    .venv/bin/python -m bench.serving [--quick] [--rounds 3] [--duration 5] [--doc docs/BENCHMARKS.md]
    .venv/bin/python -m bench.serving --render bench/serving-results.json --doc docs/BENCHMARKS.md

The model: the trainer's default learner (`fsa`) after a class-incremental WordNet stream,
published to Redis with the public store API. Servers, all alive for the whole run so their
points can be interleaved (an idle server costs nothing):
- Perennial (`python -m services.inference`) on ONNX Runtime fp32 (the default) with `--threads`
  intra-op threads, and with the other thread count; on torch fp32;
- KServe 0.21 (`bench/kserve_server.py`, .venv-kserve) calling the same
  `services.inference.model.predict`, on ONNX Runtime fp32 and on torch fp32.
Load: `tritonclient.grpc`, closed loop, one random held-out gloss per request, concurrency 1, 8,
32; each round visits every (concurrency, server) point in a rotated order. The in-process limit:
`predict` on random batches of the same queries, every batch size, 1 and 2 threads, once per round.
Before the rounds, `CHUNK_ROWS` is chosen on the training glosses (never the scored queries);
the report says whether the shipped value is the chosen one.
Also: the load generator's CPU share, each server's CPU per request, the load average; a new
version every 100 ms (hot swap); resident adapters; one point cross-checked with perf_analyzer.
Results: bench/serving-results.json; the report (bench/serving_report.py) renders from it alone.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import redis
import torch
import tritonclient.grpc as triton
from prometheus_client.parser import text_string_to_metric_families

from bench.report import write_section
from perennial.backbone import TextBackbone
from perennial.learners import LearnerConfig, build_learner, serving_state
from perennial.store import SnapshotStore, to_safetensors
from perennial_dev.datasets.wordnet import class_incremental_split, read_noun_glosses
from perennial_dev.launch import start_inference
from perennial_dev.localstack import ManagedProcess, free_port, start_redis
from services.inference import model as inference_model
from services.inference.cpus import describe, pin_current_thread, plan_cpus
from services.inference.model import load_version, predict

ROOT = Path(__file__).resolve().parents[1]
ADAPTER = "bench"
OUTPUTS = ("probabilities", "label")
CONCURRENCY = (1, 8, 32)
BATCHES = (1, 2, 4, 8, 16, 32, 64)
THREAD_CHOICES = (1, 2)
CHUNK_CANDIDATES = (2, 4, 8, 16)  # rows per backbone pass of FSA versions (CHUNK_ROWS)
CHUNK_BATCHES = (8, 16, 32)  # batch sizes the servers form at concurrency 8 to 32 and above
THREADS = (
    1  # intra-op threads (torch and ONNX Runtime) of the servers compared: chosen by measurement
)
MICRO_BATCH = 16  # the trainer's default micro-batch


# -- data and model ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Workload:
    """A class-incremental WordNet stream to train on and held-out glosses to query."""

    stream: list[tuple[str, str]]
    queries: list[str]
    classes: int


def workload(train_per_class: int = 48, test_per_class: int = 40) -> Workload:
    """24 WordNet classes: a stream of `train_per_class` glosses each (48: the default learner's
    PET warm-up window, 1024 examples, closes) and held-out queries."""
    split = class_incremental_split(
        read_noun_glosses(), train_per_class=train_per_class, test_per_class=test_per_class
    )
    queries = [g.text for glosses in split.test.values() for g in glosses]
    np.random.default_rng(0).shuffle(queries)
    return Workload([(g.text, g.label) for g in split.train], queries, len(split.classes))


def serving_backbone(runtime: str, threads: int) -> TextBackbone:
    """MiniLM with its frozen part on `runtime`, `threads` intra-op threads (torch and ORT)."""
    torch.set_num_threads(threads)
    backbone = TextBackbone.load()
    backbone.use_runtime(runtime, None, threads)
    return backbone


def trained_snapshot(backbone: TextBackbone, stream: list[tuple[str, str]]) -> tuple[dict, dict]:
    """The trainer's default learner after the stream in micro-batches: what the trainer
    publishes as a version of it (`serving_state`: FSA's solved head and PET), (tensors, metadata)."""
    learner = build_learner(backbone, LearnerConfig(seed=0))
    for start in range(0, len(stream), MICRO_BATCH):
        texts, labels = zip(*stream[start : start + MICRO_BATCH], strict=True)
        learner.learn(list(texts), list(labels))
    return serving_state(learner)


def publish(store: SnapshotStore, adapter: str, tensors: dict, metadata: dict, parent=None):
    return store.publish(
        adapter,
        to_safetensors(tensors, metadata),
        parent=parent,
        offsets={},
        examples=int(metadata.get("examples", 0)),
        classes=json.loads(metadata["classes"]),
    )


def perturbed(tensors: dict, step: int) -> dict:
    """A different set of weights (a new version) with the same shapes: the PET's B matrices."""
    return {k: v + 1e-4 * step if "lora_b" in k else v for k, v in tensors.items()}


# -- measurement primitives -------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_load(
    address: str,
    models: list[str],
    concurrency: int,
    duration: float,
    queries: list[str],
    *,
    pid: int | None = None,
    seed: int = 0,
    warmup: float = 1.0,
    pool: list[float] | None = None,
) -> dict:
    """Closed-loop load: `concurrency` threads, each with its own client, one random query per
    request. Besides latency: the CPU share of this process (the load generator) and the server's
    CPU per request over the measured window. `pool` (if given) gets every latency, seconds."""
    start = time.monotonic()
    record_from, stop_at = start + warmup, start + warmup + duration
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    marks: dict[str, float] = {}

    def worker(index: int) -> None:
        client = triton.InferenceServerClient(address)
        rng = np.random.default_rng([seed, index])
        inputs = []
        for i in rng.choice(len(queries), min(len(queries), 128), replace=False):
            tensor = triton.InferInput("text", [1], "BYTES")
            tensor.set_data_from_numpy(np.array([queries[i].encode()], dtype=np.object_))
            inputs.append(tensor)
        outputs = [triton.InferRequestedOutput(name) for name in OUTPUTS]
        n = 0
        while (now := time.monotonic()) < stop_at:
            model = models[(index + n * concurrency) % len(models)]
            try:
                client.infer(model, [inputs[n % len(inputs)]], outputs=outputs, client_timeout=30)
                if now >= record_from:
                    latencies[index].append(time.monotonic() - now)
            except Exception:  # counted, not raised: the error count is a result
                if now >= record_from:
                    errors[index] += 1
            n += 1
        client.close()

    def marker() -> None:  # CPU counters at the edges of the measured window
        time.sleep(max(0.0, record_from - time.monotonic()))
        marks["client"], marks["at"] = time.process_time(), time.monotonic()
        marks["server"] = cpu_seconds(pid) if pid else 0.0
        time.sleep(max(0.0, stop_at - time.monotonic()))
        marks["client_end"], marks["at_end"] = time.process_time(), time.monotonic()
        marks["server_end"] = cpu_seconds(pid) if pid else 0.0

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    threads.append(threading.Thread(target=marker))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    samples = np.array([x for per in latencies for x in per])
    if pool is not None:
        pool.extend(samples.tolist())
    wall = marks["at_end"] - marks["at"]
    server_cpu = marks["server_end"] - marks["server"]
    return {
        "concurrency": concurrency,
        "requests": int(samples.size),
        "errors": int(sum(errors)),
        "throughput": samples.size / duration,
        "p50_ms": float(np.percentile(samples, 50) * 1000) if samples.size else None,
        "p99_ms": float(np.percentile(samples, 99) * 1000) if samples.size else None,
        "client_cpu_share": (marks["client_end"] - marks["client"]) / wall,
        "server_cpu_share": server_cpu / wall if pid else None,
        "server_cpu_ms_per_request": server_cpu / samples.size * 1000
        if pid and samples.size
        else None,
    }


def limit_round(
    backbone: TextBackbone,
    served,
    queries: list[str],
    threads: int,
    seconds: float,
    seed: int,
    sizes: tuple[int, ...] = BATCHES,
) -> dict[str, float]:
    """rows/s of `predict` in-process on random batches of `queries`, by batch size; on the CPU
    the server's batch thread would be pinned to at these threads (`cpus.plan_cpus`), if any."""
    torch.set_num_threads(threads)
    backbone.use_runtime(backbone.runtime, None, threads)
    rng = np.random.default_rng(seed)
    rates = {}
    plan, everywhere = plan_cpus("auto", threads), os.sched_getaffinity(0)
    if plan is not None:
        pin_current_thread(plan.model)
    try:
        for size in sizes:
            batches = [[queries[i] for i in rng.choice(len(queries), size)] for _ in range(256)]
            predict(backbone, [(served, batches[-1])])  # warm-up at this shape
            calls, started = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - started) < seconds or calls < 2:
                predict(backbone, [(served, batches[calls % len(batches)])])
                calls += 1
            rates[str(size)] = calls * size / elapsed
    finally:
        os.sched_setaffinity(0, everywhere)
    return rates


@contextlib.contextmanager
def chunk_rows(rows: int) -> Iterator[None]:
    """In-process `predict` with `services.inference.model.CHUNK_ROWS` set to `rows`."""
    shipped = inference_model.CHUNK_ROWS
    inference_model.CHUNK_ROWS = rows
    try:
        yield
    finally:
        inference_model.CHUNK_ROWS = shipped


def without_length_chunks() -> contextlib.AbstractContextManager[None]:
    """`predict` with one backbone pass per batch, padded to its longest text (as before
    length chunks): the ablation the limit table shows."""
    return chunk_rows(1 << 30)


def choose_chunk_rows(
    backbone: TextBackbone, served, texts: list[str], threads: int, seconds: float, rounds: int
) -> dict:
    """`CHUNK_ROWS` chosen on held-out texts (the training glosses, never the queries the
    servers are scored on): rows/s of each candidate at CHUNK_BATCHES, where the servers'
    batches fall; the chosen one has the best geometric mean of its per-batch medians."""
    rates: dict[str, list[dict]] = {str(rows): [] for rows in CHUNK_CANDIDATES}
    for round_index in range(rounds):
        for rows in CHUNK_CANDIDATES:
            with chunk_rows(rows):
                rates[str(rows)].append(
                    limit_round(backbone, served, texts, threads, seconds,
                                seed=100 + round_index, sizes=CHUNK_BATCHES)
                )  # fmt: skip
    score = {
        rows: float(
            np.exp(np.mean([np.log(np.median([r[str(b)] for r in runs])) for b in CHUNK_BATCHES]))
        )
        for rows, runs in rates.items()
    }
    return {
        "texts": "training glosses",
        "threads": threads,
        "batches": list(CHUNK_BATCHES),
        "rates": rates,
        "score": score,
        "chosen": int(max(score, key=score.get)),
        "shipped": inference_model.CHUNK_ROWS,
    }


# -- servers ----------------------------------------------------------------------------------------
@dataclass
class Server:
    """A server under test: its name in the results, gRPC address, process and how it runs."""

    name: str
    kind: str  # "perennial" | "kserve"
    runtime: str
    threads: int
    address: str
    process: ManagedProcess
    service: object | None = None  # Perennial's launch.Service (metrics)
    settings: dict = field(default_factory=dict)  # PERENNIAL_* beyond runtime and threads
    points: dict = field(default_factory=dict)  # concurrency -> [run_load results per round]

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        self.process.stop(20)


def start_perennial(
    workdir: Path, redis_url: str, runtime: str, threads: int, **settings: object
) -> Server:
    """The inference service with its defaults but `runtime`, `threads` and `settings`."""
    name = f"perennial-{runtime}-t{threads}" + "".join(
        f"-{k.removeprefix('PERENNIAL_').lower()}={v}" for k, v in settings.items()
    )
    service = start_inference(
        workdir,
        redis_url=redis_url,
        log_name=f"{name}.log",
        PERENNIAL_RUNTIME=runtime,
        PERENNIAL_TORCH_THREADS=threads,
        PERENNIAL_RECONCILE_SECONDS=2,
        PERENNIAL_LOG_LEVEL="WARNING",
        **settings,
    )
    server = Server(
        name, "perennial", runtime, threads, service.grpc_address, service.process, service
    )
    server.settings = {k: str(v) for k, v in settings.items()}
    return server


def start_kserve(workdir: Path, redis_url: str, adapter: str, runtime: str, threads: int) -> Server:
    python = ROOT / ".venv-kserve" / "bin" / "python"
    grpc_port, http_port = free_port(), free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("PYTHONPATH", None)  # the KServe venv has the project installed itself
    process = ManagedProcess(
        [str(python), str(ROOT / "bench" / "kserve_server.py"),
         "--redis-url", redis_url, "--model", adapter, "--runtime", runtime,
         "--threads", str(threads), "--grpc_port", str(grpc_port), "--http_port", str(http_port)],
        workdir / f"kserve-{runtime}.log",
        name="kserve",
        env=env,
    )  # fmt: skip
    address = f"127.0.0.1:{grpc_port}"

    def ready() -> bool:
        try:
            return triton.InferenceServerClient(address).is_model_ready(adapter)
        except Exception:
            return False

    process.wait_ready(ready, 300, "KServe model ready")
    return Server(f"kserve-{runtime}-t{threads}", "kserve", runtime, threads, address, process)


def scrape(service) -> dict[str, float]:
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(service.scrape()):
        for sample in family.samples:
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


INSIDE = {  # Perennial's own histograms: where a request's time goes inside the server
    "queue": "perennial_inference_queue_duration_seconds",
    "batch": "perennial_inference_batch_duration_seconds",
    "rows": "perennial_inference_batch_size_rows",
    "drift": "perennial_inference_drift_update_duration_seconds",
}


def inside(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Means over a point (warm-up included) of the server's histograms: queue wait per
    request, model call per batch, rows per batch, drift-monitor update per request (s, rows)."""
    out = {}
    for name, metric in INSIDE.items():
        count = after.get(f"{metric}_count", 0.0) - before.get(f"{metric}_count", 0.0)
        total = after.get(f"{metric}_sum", 0.0) - before.get(f"{metric}_sum", 0.0)
        out[name] = total / count if count else None
    return out


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def machine() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in info.splitlines()
            if line.startswith("model name")
        ),
        platform.machine(),
    )
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{model}, {os.cpu_count()} cores, {memory:.0f} GiB RAM, {platform.system()} {platform.release()}"


# -- the run ----------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.serving", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per point")
    parser.add_argument("--rounds", type=int, default=3, help="repeats of every point")
    parser.add_argument("--limit-seconds", type=float, default=1.5, help="per batch size and round")
    parser.add_argument("--threads", type=int, default=THREADS, choices=THREAD_CHOICES)
    parser.add_argument("--adapters", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--swap-repeats", type=int, default=3)
    parser.add_argument("--skip-kserve", action="store_true")
    parser.add_argument("--skip-perf-analyzer", action="store_true")
    parser.add_argument(
        "--quick", action="store_true", help="a look: 1 round, 3 s points, no perf_analyzer"
    )
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default: bench/)")
    parser.add_argument("--doc", type=Path, default=None, help="write the Serving section here")
    parser.add_argument("--render", type=Path, default=None, help="only render this results JSON")
    parser.add_argument(
        "--before", type=Path, help="an earlier results file, shown beside this run (before/after)"
    )
    parser.add_argument("--before-note", help="what the code of the --before run did differently")
    args = parser.parse_args()
    from bench.serving_report import SECTION, section

    if args.render:
        text = section(json.loads(args.render.read_text()))
    else:
        if args.quick:
            args.rounds, args.duration, args.limit_seconds = 1, 3.0, 1.0
            args.swap_repeats, args.adapters, args.skip_perf_analyzer = 1, [1], True
        out = args.out or ROOT / "bench" / (
            "serving-results.quick.json" if args.quick else "serving-results.json"
        )
        results = run(args)
        if args.before:
            results["before"] = json.loads(args.before.read_text())
            results["before"].pop("before", None)
            results["before"]["note"] = args.before_note or ""
        out.write_text(json.dumps(results, indent=1) + "\n")
        text = section(results)
    print(text)
    if args.doc:
        write_section(args.doc, SECTION, text)


def run(args) -> dict:
    began, cpu_began = time.monotonic(), resource.getrusage(resource.RUSAGE_SELF)
    other = next(t for t in THREAD_CHOICES if t != args.threads)
    results: dict = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "command": "make bench-serving" + (" BENCH_ARGS=--quick" if args.quick else ""),
        "duration_per_point_s": args.duration,
        "warmup_per_point_s": 1.0,
        "rounds": args.rounds,
        "limit_seconds": args.limit_seconds,
        "threads": args.threads,
        "load_average": {"start": load_average()},
        "batches": list(BATCHES),
        "cpu_plan": {str(t): describe(plan_cpus("auto", t)) for t in THREAD_CHOICES},
    }
    data = workload()
    results["workload"] = {
        "stream_examples": len(data.stream),
        "classes": data.classes,
        "queries": len(data.queries),
        "micro_batch": MICRO_BATCH,
    }
    workdir = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    redis_server = start_redis(workdir)
    servers: list[Server] = []
    try:
        store = SnapshotStore(redis.Redis.from_url(redis_server.url))
        print("training the serving snapshots (the default learner, per runtime)", flush=True)
        snapshots, backbones = {}, {}
        for runtime in ("onnx", "torch", "onnx-int8"):
            backbone = serving_backbone(runtime, args.threads)
            started = time.monotonic()
            tensors, metadata = trained_snapshot(backbone, data.stream)
            adapter = ADAPTER if runtime == "onnx" else f"{ADAPTER}-{runtime}"
            manifest = publish(store, adapter, tensors, metadata)
            snapshots[runtime] = (adapter, manifest, tensors, metadata)
            backbones[runtime] = backbone
            results.setdefault("model", {})[runtime] = {
                "adapter": adapter,
                "learner": json.loads(metadata["learner"])["learner"],
                "pet": json.loads(metadata["learner"])["pet"]["method"],
                "adapted": any(k.startswith("pet.") for k in tensors),
                "classes": len(manifest.classes),
                "snapshot_bytes": len(to_safetensors(tensors, metadata)),
                "train_seconds": round(time.monotonic() - started, 1),
            }
        print(json.dumps(results["model"]), flush=True)
        adapter, manifest, tensors, metadata = snapshots["onnx"]
        backbone = backbones["onnx"]
        served = load_version(backbone, manifest, to_safetensors(tensors, metadata))

        print("starting the servers", flush=True)
        servers.append(start_perennial(workdir, redis_server.url, "onnx", args.threads))
        servers.append(start_perennial(workdir, redis_server.url, "onnx", other))
        servers.append(start_perennial(workdir, redis_server.url, "torch", args.threads))
        servers.append(start_perennial(workdir, redis_server.url, "onnx-int8", args.threads))
        if not args.skip_kserve:
            servers.append(start_kserve(workdir, redis_server.url, adapter, "onnx", args.threads))
            servers.append(
                start_kserve(workdir, redis_server.url, f"{ADAPTER}-torch", "torch", args.threads)
            )
        results["servers"] = {
            s.name: {
                "kind": s.kind,
                "runtime": s.runtime,
                "threads": s.threads,
                "settings": s.settings,
            }
            for s in servers
        }

        print("choosing the chunk size on the training glosses", flush=True)
        results["chunk_choice"] = choose_chunk_rows(
            backbone, served, [text for text, _ in data.stream], args.threads,
            args.limit_seconds, args.rounds,
        )  # fmt: skip
        print(json.dumps(results["chunk_choice"]["score"]), flush=True)
        limits: dict[str, list[dict]] = {str(t): [] for t in THREAD_CHOICES}
        unchunked: list[dict] = []  # the ablation of length chunks, at the servers' threads
        for round_index in range(args.rounds):
            print(f"round {round_index + 1}/{args.rounds}: in-process limit", flush=True)
            for threads in THREAD_CHOICES:
                limits[str(threads)].append(
                    limit_round(backbone, served, data.queries, threads, args.limit_seconds,
                                seed=round_index * 10 + threads)
                )  # fmt: skip
            with without_length_chunks():
                unchunked.append(
                    limit_round(backbone, served, data.queries, args.threads, args.limit_seconds,
                                seed=round_index * 10 + args.threads)
                )  # fmt: skip
            print(json.dumps({t: v[-1] for t, v in limits.items()}), flush=True)
            results["load_average"].setdefault("rounds", []).append(load_average())
            for concurrency in CONCURRENCY:
                shift = round_index % len(servers)
                for server in servers[shift:] + servers[:shift]:
                    model = ADAPTER if server.runtime == "onnx" else f"{ADAPTER}-{server.runtime}"
                    before = scrape(server.service) if server.service else None
                    point = run_load(
                        server.address, [model], concurrency, args.duration, data.queries,
                        pid=server.pid, seed=round_index,
                    )  # fmt: skip
                    if before is not None:
                        point["inside"] = inside(before, scrape(server.service))
                    server.points.setdefault(str(concurrency), []).append(point)
                    print(
                        f"  c={concurrency} {server.name}: {point['throughput']:.1f} req/s, "
                        f"p50 {point['p50_ms']:.0f} p99 {point['p99_ms']:.0f} ms, "
                        f"client CPU {point['client_cpu_share']:.0%}",
                        flush=True,
                    )
        torch.set_num_threads(args.threads)
        backbone.use_runtime("onnx", None, args.threads)
        results["limit"] = limits
        results["limit_unchunked"] = {str(args.threads): unchunked}
        results["points"] = {s.name: s.points for s in servers}

        main_server = servers[0]
        if not args.skip_perf_analyzer:
            results["perf_analyzer"] = perf_analyzer_check(
                main_server, data.queries, workdir, args.duration
            )
        for server in servers[1:]:  # alone with the service under test from here on
            server.stop()
        servers = servers[:1]
        print("hot swap", flush=True)
        results["swap"] = swap_test(
            main_server, store, tensors, metadata, args.duration, data.queries, args.swap_repeats
        )
        print(json.dumps(results["swap"]["p99_increase"]), flush=True)
        print("resident adapters", flush=True)
        results["adapters"] = adapters_test(
            main_server, store, tensors, metadata, args.duration, data.queries, args.adapters
        )
    finally:
        for server in servers:
            server.stop()
        redis_server.stop()
    results["load_average"]["end"] = load_average()
    results["wall_seconds"] = round(time.monotonic() - began)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    results["bench_cpu_seconds"] = round(
        usage.ru_utime + usage.ru_stime - cpu_began.ru_utime - cpu_began.ru_stime
    )
    return results


def perf_analyzer_check(server: Server, queries: list[str], workdir: Path, seconds: float) -> dict:
    """perf_analyzer and our load generator on the same point (concurrency 32), back to back."""
    from bench.perf_analyzer import binary, command_prefix, run_point

    concurrency = 32
    data = workdir / "queries.json"
    rows = [{"text": {"content": [q], "shape": [1]}} for q in queries[:512]]
    data.write_text(json.dumps({"data": rows}))
    ours_before = run_load(server.address, [ADAPTER], concurrency, seconds, queries, pid=server.pid)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_cpu, started = cpu_seconds(server.pid), time.monotonic()
    point = run_point(
        command_prefix(binary()),
        "grpc",
        server.address,
        seconds,
        concurrency=concurrency,
        data=data,
    )
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    point["client_cpu_share"] = (
        after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    ) / wall
    point["server_cpu_share"] = (cpu_seconds(server.pid) - server_cpu) / wall
    ours_after = run_load(server.address, [ADAPTER], concurrency, seconds, queries, pid=server.pid)
    return {
        "server": server.name,
        "concurrency": concurrency,
        "perf_analyzer": point,
        "ours": [ours_before, ours_after],
    }


def swap_test(
    server: Server,
    store: SnapshotStore,
    tensors: dict,
    metadata: dict,
    duration: float,
    queries: list[str],
    repeats: int,
) -> dict:
    """p99 and errors at concurrency 8 without swaps, then with a new version every 100 ms;
    `repeats` pairs, alternating. The versions go through the public store API. The p99 increase
    compares the p99 of all baseline latencies pooled with that of all swapping ones: a p99 of
    one 5-second point rests on its ~5 slowest requests, the pooled one on `repeats` times more."""
    adapter = "swap"
    head = publish(store, adapter, tensors, metadata)
    blobs = [to_safetensors(perturbed(tensors, step), metadata) for step in range(1, 11)]
    pairs = []
    pooled: dict[str, list[float]] = {"baseline": [], "swapping": []}
    for repeat in range(repeats):
        baseline = run_load(
            server.address, [adapter], 8, duration, queries, pid=server.pid, seed=repeat,
            pool=pooled["baseline"],
        )  # fmt: skip
        swaps_before = scrape(server.service).get("perennial_inference_swaps_total", 0.0)
        stop, published = threading.Event(), []
        thread = threading.Thread(
            target=publish_every, args=(store, adapter, blobs, head, stop, published)
        )
        thread.start()
        swapping = run_load(
            server.address, [adapter], 8, duration, queries, pid=server.pid, seed=repeat,
            pool=pooled["swapping"],
        )  # fmt: skip
        stop.set()
        thread.join()
        head = published[-1]
        swaps = scrape(server.service).get("perennial_inference_swaps_total", 0.0) - swaps_before
        store.prune(adapter, keep=2)
        pairs.append(
            {
                "baseline": baseline,
                "swapping": swapping,
                "versions_published": len(published),
                "swaps_applied": swaps,
            }
        )
    p99 = {k: float(np.percentile(v, 99) * 1000) for k, v in pooled.items()}
    return {
        "pairs": pairs,
        "pooled_p99_ms": p99,
        "pooled_requests": {k: len(v) for k, v in pooled.items()},
        "p99_increase": p99["swapping"] / p99["baseline"] - 1,
    }


def publish_every(
    store: SnapshotStore, adapter: str, blobs: list[bytes], head, stop, published: list
) -> None:
    """A new version of `adapter` every 100 ms (cycling through `blobs`) until `stop` is set."""
    due = time.monotonic()
    while not stop.is_set():
        head = store.publish(
            adapter, blobs[len(published) % len(blobs)], parent=head, offsets={}, examples=0,
            classes=head.classes,
        )  # fmt: skip
        published.append(head)
        due += 0.1
        stop.wait(max(0.0, due - time.monotonic()))


def adapters_test(
    server: Server,
    store: SnapshotStore,
    tensors: dict,
    metadata: dict,
    duration: float,
    queries: list[str],
    counts: list[int],
) -> list:
    """N resident adapters: memory per adapter; throughput spread over all of them vs one."""
    names = [f"a{i:04d}" for i in range(max(counts))]
    for i, name in enumerate(names):  # distinct weights per adapter
        publish(store, name, perturbed(tensors, i + 1), metadata)
    client = triton.InferenceServerClient(server.address)
    tensor = triton.InferInput("text", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([b"warm-up"], dtype=np.object_))
    rows, loaded = [], 0
    for count in counts:
        rss_before, metrics_before = rss_bytes(server.pid), scrape(server.service)
        for name in names[loaded:count]:
            client.infer(name, [tensor], client_timeout=60)
        metrics = scrape(server.service)
        new, loaded = count - loaded, count
        key = "perennial_inference_resident_adapter_memory_bytes"
        rows.append(
            {
                "adapters": count,
                "resident": metrics["perennial_inference_resident_adapters"],
                "tensor_bytes_per_adapter": (metrics[key] - metrics_before[key]) / new,
                "rss_bytes_per_adapter": (rss_bytes(server.pid) - rss_before) / new,
                "spread": run_load(server.address, names[:count], 32, duration, queries),
                "one": run_load(server.address, [names[0]], 32, duration, queries),
            }
        )
    client.close()
    return rows


if __name__ == "__main__":
    sys.exit(main())

"""`make bench-training`: the trainer's throughput, snapshots and freshness on the real stack.

One run, side by side, the trainer with its defaults (the default learner, guardrail on):
  (a) the learner fed from memory in a tight loop (the compute limit);
  (b) the same learner behind the real path: Kafka (Tansu) → trainer process →
      snapshots in Redis, records/s from the first record consumed to the last one
      snapshotted; (a) and (b) alternate for `--repeats` rounds;
  (c) snapshot size (the serving blob every version has, the checkpoint's state) and
      publish time (the trainer's own histogram);
  (d) end-to-end freshness with the trainer's defaults: an example produced to Kafka until a
      version that learned it is served (the inference service's ModelMetadata, polled by a
      gRPC client every 20 ms: the version a request would be answered by), p50 and p99, for
      every example from the adapter's first one, through its FSA warm-up (on the warm-up's
      thread) until `--fresh-seconds` after a version with the PET is served; and the
      inference service's build-and-swap time.

Writes bench/training-results.json, then the "Training" section of docs/BENCHMARKS.md from
that file alone (`--report-only` re-renders it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import threading
import time
from pathlib import Path

import redis
import torch
import tritonclient.grpc as triton
from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from bench.report import write_section
from perennial import codec, runtime
from perennial.learners import build_learner
from perennial.learners.fsa import FirstSessionLearner
from perennial.store import SnapshotStore
from perennial_dev.datasets.wordnet import class_incremental_split, read_noun_glosses
from perennial_dev.demo import holds_pet
from perennial_dev.launch import Service, start_inference, start_trainer
from perennial_dev.localstack import LocalStack, create_topics
from services.trainer.settings import TrainerSettings

ADAPTER = "bench"
TOPIC = "perennial.examples"
RESULTS = Path(__file__).with_name("training-results.json")
SECTION = ("<!-- training:start -->", "<!-- training:end -->")


def metric(service: Service, name: str) -> float:
    return sum(
        s.value
        for f in text_string_to_metric_families(service.scrape())
        for s in f.samples
        if s.name == name
    )


def in_memory(texts: list[str], labels: list[str], batch: int, settings: TrainerSettings) -> float:
    """Records/s of the learner in a tight loop on one thread, on the trainer's backbone runtime,
    through the call the trainer makes (`learn_and_predict` when the learner has it, else
    `learn`)."""
    torch.set_num_threads(1)
    learner = build_learner(runtime.load_backbone(settings), settings.learner_config())
    if isinstance(learner, FirstSessionLearner):
        settings.schedule_warm_up(learner)  # as the trainer runs it, on a backlog:
        learner.behind = True  # every record waited, so the warm-up yields to learning
    step = getattr(learner, "learn_and_predict", learner.learn)
    started = time.perf_counter()
    for i in range(0, len(texts) - batch + 1, batch):
        step(texts[i : i + batch], labels[i : i + batch])
    if hasattr(learner, "settle"):
        learner.settle()  # until the PET is in: the state a snapshot of (b) must hold
    return (len(texts) // batch * batch) / (time.perf_counter() - started)


def through_kafka(stack: LocalStack, texts, labels, repeat: int, settings: TrainerSettings) -> dict:
    """The trainer with its defaults (guardrail on, the default learner) on a topic of its own:
    records/s from the first record consumed until a snapshot covers the last one (and, for a
    learner with a PET warm-up, holds the PET, as (a) ends once it is in)."""
    adapter, topic = f"{ADAPTER}-{repeat}", f"{TOPIC}.{repeat}"
    create_topics(stack.bootstrap, {topic: 1})
    producer = KafkaProducer(bootstrap_servers=stack.bootstrap, acks="all", linger_ms=5)
    for i, (text, label) in enumerate(zip(texts, labels, strict=True)):
        example = codec.Example(adapter, str(i), text, label, time.time())
        producer.send(topic, key=adapter.encode(), value=codec.encode(example))
    producer.flush()
    producer.close()
    trainer = start_trainer(
        stack.workdir,
        bootstrap=stack.bootstrap,
        redis_url=stack.redis_url,
        log_name=f"bench-trainer-{repeat}.log",
        PERENNIAL_TOPIC=topic,
        PERENNIAL_GROUP_ID=f"bench-{repeat}",
        PERENNIAL_TORCH_THREADS=1,
    )
    store = SnapshotStore(redis.Redis.from_url(stack.redis_url))
    deadline = time.monotonic() + 1800
    try:
        while metric(trainer, "perennial_trainer_examples_consumed_total") == 0:
            if time.monotonic() > deadline or not trainer.process.alive:
                raise RuntimeError(f"the trainer consumed nothing; see {stack.workdir}")
            time.sleep(0.01)
        first = time.perf_counter()
        pet = settings.learner in ("fsa",)
        while not (
            (latest := store.latest(adapter))
            and latest.offsets.get(f"{topic}:0", 0) >= len(texts)
            and (not pet or holds_pet(store, adapter, latest.version))
        ):
            if time.monotonic() > deadline or not trainer.process.alive:
                raise RuntimeError(f"the trainer did not snapshot the stream; see {stack.workdir}")
            time.sleep(0.01)
        seconds = time.perf_counter() - first
        key = f"perennial:{{{adapter}}}"
        return {
            "records_per_second": len(texts) / seconds,
            "held_out": len(texts) - latest.examples,
            "snapshot_bytes": store.redis.strlen(f"{key}:blob:{latest.version}"),
            "checkpoint_bytes": store.redis.strlen(f"{key}:state:{latest.resume_version}")
            or store.redis.strlen(f"{key}:blob:{latest.resume_version}"),
            "snapshots": metric(trainer, "perennial_trainer_snapshot_duration_seconds_count"),
            "seconds": seconds,  # where they went, by the trainer's own histograms:
            "learn_seconds": metric(trainer, "perennial_trainer_train_step_duration_seconds_sum"),
            "snapshot_seconds_total": metric(
                trainer, "perennial_trainer_snapshot_duration_seconds_sum"
            ),
            "snapshot_seconds": metric(trainer, "perennial_trainer_snapshot_duration_seconds_sum")
            / max(metric(trainer, "perennial_trainer_snapshot_duration_seconds_count"), 1),
        }
    finally:
        trainer.stop()


def freshness(stack: LocalStack, texts, labels, rate: float, seconds: float, name: str,
              **trainer_settings: object) -> dict:  # fmt: skip
    """Produce at `rate`/s to a new adapter from its first example until `seconds` after a
    version with the PET is served (FSA's warm-up runs meanwhile); a served version containing
    an example ends its freshness."""
    adapter, topic = f"fresh-{name}", f"perennial.fresh.{name}"
    create_topics(stack.bootstrap, {topic: 1})
    trainer = start_trainer(
        stack.workdir,
        bootstrap=stack.bootstrap,
        redis_url=stack.redis_url,
        log_name=f"fresh-trainer-{name}.log",
        PERENNIAL_TOPIC=topic,
        PERENNIAL_GROUP_ID=f"fresh-{name}",
        **trainer_settings,
    )
    inference = start_inference(
        stack.workdir, redis_url=stack.redis_url, log_name=f"fresh-inference-{name}.log"
    )
    store = SnapshotStore(redis.Redis.from_url(stack.redis_url))
    produced: dict[int, float] = {}  # offset -> produce time
    served_at: dict[int, float] = {}  # offset -> first time a served version covered it
    pet_served: list[float] = []  # when a version with the PET was first served
    stop = threading.Event()

    def poll_served() -> None:
        # ModelMetadata names the version an inference request would be answered by, without
        # running the backbone: 50 forwards a second of a probe would take much of a core from
        # the learning it measures.
        client = triton.InferenceServerClient(inference.grpc_address)
        seen = ""
        while not stop.is_set():
            try:
                version = client.get_model_metadata(adapter).versions[0]
            except Exception:  # noqa: BLE001 - before the first snapshot
                time.sleep(0.02)
                continue
            now = time.time()
            if version != seen:
                seen = version
                covered = store.manifest(adapter, version).offsets.get(f"{topic}:0", 0)
                for offset in range(covered):
                    served_at.setdefault(offset, now)
                if not pet_served and holds_pet(store, adapter, version):
                    pet_served.append(now)
            time.sleep(0.02)

    poller = threading.Thread(target=poll_served, daemon=True)
    poller.start()
    producer = KafkaProducer(bootstrap_servers=stack.bootstrap, acks=1, linger_ms=0)

    def send(i: int) -> int:
        example = codec.Example(
            adapter, str(i), texts[i % len(texts)], labels[i % len(labels)], time.time()
        )
        future = producer.send(topic, key=adapter.encode(), value=codec.encode(example))
        return future.get(timeout=10).offset

    try:
        started, start_time, cpu = time.monotonic(), time.time(), _cpu_times()
        deadline, i = started + 900, 0
        while time.monotonic() < deadline and not (
            pet_served and time.time() > pet_served[0] + seconds
        ):
            time.sleep(max(0.0, started + i / rate - time.monotonic()))
            produced[send(i)] = time.time()
            i += 1
        if not pet_served:
            raise RuntimeError(f"no version with the PET within 900 s; see {stack.workdir}")
        deadline = time.monotonic() + 120
        while len(served_at) < len(produced) and time.monotonic() < deadline:
            time.sleep(0.05)
        swaps = metric(inference, "perennial_inference_swap_duration_seconds_count")
        swap_seconds = metric(inference, "perennial_inference_swap_duration_seconds_sum")
        snapshots = metric(trainer, "perennial_trainer_snapshot_duration_seconds_count")
    finally:
        stop.set()
        producer.close()
        trainer.stop()
        inference.stop()
    delays = sorted(served_at[o] - t for o, t in produced.items() if o in served_at)
    before_pet = sorted(served_at[o] - t for o, t in produced.items() if t < pet_served[0])
    after_pet = sorted(served_at[o] - t for o, t in produced.items() if t >= pet_served[0])
    return {
        "count": len(delays),
        "produced": len(produced),
        "p50": statistics.median(delays),
        "p99": _p99(delays),
        "max": delays[-1],
        "pet_served_seconds": pet_served[0] - start_time,
        "before_pet": {"count": len(before_pet), "p99": _p99(before_pet)},
        "after_pet": {"count": len(after_pet), "p99": _p99(after_pet)},
        "max_by_10s": _max_by_10s(produced, served_at, start_time),
        "machine_cpu": _cpu_shares(cpu, _cpu_times()),
        "snapshots": snapshots,
        "swaps": swaps,
        "swap_seconds_mean": swap_seconds / max(swaps, 1),
    }


def _cpu_times() -> list[int]:
    """The machine's CPU time counters (/proc/stat's first line: user, nice, system, idle,
    iowait, irq, softirq, steal, ...); empty where there is no /proc/stat."""
    try:
        return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return []


def _cpu_shares(before: list[int], after: list[int]) -> dict[str, float]:
    """Shares of all cores' time between two `_cpu_times`: busy, idle, and stolen by the
    hypervisor (a VM's cores run other guests meanwhile: that CPU was not ours)."""
    if not before or not after:
        return {}
    spent = [b - a for a, b in zip(before, after, strict=False)]
    total, idle, steal = sum(spent[:8]), spent[3] + spent[4], spent[7]
    return {"busy": (total - idle - steal) / total, "idle": idle / total, "steal": steal / total}


def _max_by_10s(produced: dict[int, float], served_at: dict[int, float], start: float) -> list:
    """The longest freshness of the examples produced in each 10 s of the run: where it went."""
    worst: dict[int, float] = {}
    for offset, t in produced.items():
        if offset in served_at:
            bucket = int((t - start) // 10)
            worst[bucket] = max(worst.get(bucket, 0.0), served_at[offset] - t)
    return [round(worst.get(b, float("nan")), 3) for b in range(max(worst, default=-1) + 1)]


def _p99(delays: list[float]) -> float:
    """The 99th percentile of sorted `delays` (the value below which 99 % of them fall)."""
    return delays[min(len(delays) - 1, int(0.99 * len(delays)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.training", description=__doc__.split("\n\n")[0]
    )
    # twice the default PET warm-up window: both the warm-up and learning after it are measured
    parser.add_argument("--examples", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--fresh-rates",
        default="25,10",
        help="examples/s of the freshness runs, comma-separated (the first is the goal's)",
    )
    parser.add_argument("--fresh-seconds", type=float, default=40.0)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument(
        "--before", type=Path, help="an earlier results file, shown beside this run (before/after)"
    )
    parser.add_argument("--before-note", help="what the code of the --before run did differently")
    parser.add_argument("--out", type=Path, default=Path("docs/BENCHMARKS.md"))
    parser.add_argument(
        "--report-only", action="store_true", help="render the report from --results"
    )
    args = parser.parse_args()
    if not args.report_only:
        results = run(args)
        if args.before:
            results["before"] = json.loads(args.before.read_text())
            results["before"].pop("before", None)
            if args.before_note:
                results["before"]["note"] = args.before_note
        args.results.write_text(json.dumps(results, indent=2) + "\n")
    text = report(json.loads(args.results.read_text()))
    write_section(args.out, SECTION, text)
    print(text)


def run(args: argparse.Namespace) -> dict:
    glosses = class_incremental_split(
        read_noun_glosses(), train_per_class=-(-args.examples // 24), test_per_class=1
    ).train
    texts = [g.text for g in glosses][: args.examples]
    labels = [g.label for g in glosses][: args.examples]
    # the defaults the trainer will run with (the addresses are only needed to validate)
    settings = TrainerSettings(
        kafka_bootstrap="unused:9092", redis_url="redis://unused", torch_threads=1
    )
    config = settings.learner_config()
    batch = settings.batch_size
    results: dict = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "runtime": settings.runtime,
        "learner": config.learner,
        "pet": config.pet.method,
        "batch_size": batch,
        "holdout_every": settings.holdout_every,
        "examples": len(texts),
        "load_before": os.getloadavg(),
        "fresh_seconds": args.fresh_seconds,
        "repeats": [],
    }
    cpu = time.process_time()
    with LocalStack(topics={}) as stack:
        for repeat in range(args.repeats):  # the two sides alternate, so load hits both alike
            print(f"repeat {repeat + 1}/{args.repeats}: (a) tight loop", flush=True)
            memory = in_memory(texts, labels, batch, settings)
            print(f"repeat {repeat + 1}/{args.repeats}: (b) Kafka → trainer → Redis", flush=True)
            kafka = through_kafka(stack, texts, labels, repeat, settings)
            results["repeats"].append({"memory_records_per_second": memory, **kafka})
        results["freshness"] = {}
        for rate in (float(r) for r in args.fresh_rates.split(",")):
            print(f"(d) freshness, trainer defaults, {rate:g}/s", flush=True)
            name = f"defaults-{rate:g}"
            results["freshness"][name] = {
                "settings": {},
                "rate": rate,
                **freshness(stack, texts, labels, rate, args.fresh_seconds, name.replace(".", "-")),
            }
    results["load_after"] = os.getloadavg()
    results["bench_cpu_seconds"] = time.process_time() - cpu
    return results


def _spread(values: list[float], fmt: str = "{:.1f}") -> str:
    """Median [min–max] of the repeats."""
    return (
        f"{fmt.format(statistics.median(values))} "
        f"[{fmt.format(min(values))}–{fmt.format(max(values))}]"
    )


def _ratios(r: dict) -> list[float]:
    return [x["records_per_second"] / x["memory_records_per_second"] for x in r["repeats"]]


def report(r: dict) -> str:
    """The "Training" section of docs/BENCHMARKS.md, every number from the results file."""
    repeats = r["repeats"]
    memory = [x["memory_records_per_second"] for x in repeats]
    kafka = [x["records_per_second"] for x in repeats]
    ratios = _ratios(r)
    runs = list(r["freshness"].values())
    fresh = runs[0]
    verdict = "met" if statistics.median(ratios) >= 0.85 else "missed"
    lines = [
        "## Training",
        "",
        f"`make bench-training` — {r['date']}, {r['machine']}, {r['cores']} CPU cores, torch "
        f"{r['torch']}, backbone runtime `{r['runtime']}`, the default learner `{r['learner']}` "
        f"(PET `{r['pet']}`), the trainer's defaults (micro-batch {r['batch_size']}, guardrail on: "
        f"every {r['holdout_every']}th example per class held out), one torch thread, "
        f"{r['examples']} WordNet glosses in class-incremental order (the FSA warm-up included on "
        f"both sides). {len(repeats)} repeats, the two sides alternating; median [min–max]. Load "
        f"average {r['load_before'][0]:.1f} before, {r['load_after'][0]:.1f} after: the machine "
        "was shared, so absolute rates are indicative; each ratio is measured side by side.",
        "",
        "| measurement | value | goal |",
        "| --- | --- | --- |",
        f"| (a) learner from memory, tight loop | {_spread(memory)} records/s | |",
        f"| (b) Kafka → trainer → snapshot (timer from the first record consumed) | "
        f"{_spread(kafka)} records/s | |",
        f"| (b)/(a) | **{_spread(ratios, '{:.2f}')}** | ≥ 0.85: {verdict} |",
        f"| (c) serving blob per version / checkpoint state | "
        f"{repeats[0]['snapshot_bytes'] / 1e3:.0f} KB / "
        f"{repeats[0]['checkpoint_bytes'] / 1e6:.1f} MB | |",
        f"| (c) publish a version (serving view, guardrail, Redis transaction) | "
        f"{_spread([x['snapshot_seconds'] * 1000 for x in repeats], '{:.0f}')} ms mean | |",
    ]
    for run in runs:
        goal = f"p99 < 1000 ms: {'met' if run['p99'] < 1.0 else 'missed'}" if run is fresh else ""
        lines += [
            f"| (d) freshness at {run['rate']:g} examples/s from the adapter's first example, "
            f"trainer defaults: p50 / p99, produce → served by a version that learned it | "
            f"{run['p50'] * 1000:.0f} / **{run['p99'] * 1000:.0f}** ms (max "
            f"{run['max'] * 1000:.0f} ms, {run['count']} examples, {run['snapshots']:.0f} "
            f"versions) | {goal} |",
            f"| (d) at {run['rate']:g}/s: the PET first served / p99 of the examples produced "
            f"before it / after it | {run['pet_served_seconds']:.0f} s / "
            f"{run['before_pet']['p99'] * 1000:.0f} ms ({run['before_pet']['count']} examples) / "
            f"{run['after_pet']['p99'] * 1000:.0f} ms ({run['after_pet']['count']}) | |",
            f"| (d) at {run['rate']:g}/s, inference: fetch, verify, build and swap a version | "
            f"{run['swap_seconds_mean'] * 1000:.0f} ms mean over {run['swaps']:.0f} swaps | |",
        ]
        if run.get("machine_cpu"):
            cpu = run["machine_cpu"]
            lines.append(
                f"| (d) at {run['rate']:g}/s, the machine's CPU over the run: busy / idle / "
                f"stolen by the hypervisor | {cpu['busy']:.0%} / {cpu['idle']:.0%} / "
                f"{cpu['steal']:.0%} | |"
            )
    lines += [""] + [
        f"(d) at {run['rate']:g}/s, the longest freshness of each 10 s of production (s, the "
        f"PET first served after {run['pet_served_seconds']:.0f} s): "
        + ", ".join(f"{x:.1f}" for x in run["max_by_10s"])
        + "."
        for run in runs
        if "max_by_10s" in run
    ]
    spent = [
        (x["learn_seconds"] / x["seconds"], x["snapshot_seconds_total"] / x["seconds"], x)
        for x in repeats
    ]
    lines += [
        "",
        "Where (b)'s time went, by the trainer's own histograms (median repeat share of the wall "
        f"time): learning {_spread([a for a, _, _ in spent], '{:.0%}')}, publishing "
        f"{_spread([b for _, b, _ in spent], '{:.0%}')} ({_spread([x['snapshots'] for x in repeats], '{:.0f}')} "
        "versions), the rest waiting for records, routing, the poll loop and the holdout. "
        f"(b) holds out {repeats[0]['held_out']} of the {r['examples']} records for the guardrail "
        "(stored, not learned) and judges every candidate on them; (a) learns every record.",
        "",
        "(d) produced to a new adapter (one per rate) at a steady rate from its first "
        "example: through the window of its FSA warm-up, the warm-up itself (the PET trains on "
        "a thread of its own, paced to `PERENNIAL_WARMUP_CPU_SHARE` of a core, while the "
        "adapter goes on learning with frozen features; its catch-up runs the last blocks on "
        "the frozen forwards kept meanwhile) and its swap, until "
        f"{r['fresh_seconds']:g} s after a version with the PET was first served; "
        "a client asked the inference service every 20 ms which version answers (ModelMetadata: "
        "the version an inference request would get, without running the backbone for a probe), "
        "and an example's freshness ends at the first answer naming a version whose manifest "
        "covers it. "
        "A version's serving blob holds the solved "
        "head and the PET; the learner's whole state (the M×M statistics, the warm-up buffer) is "
        "written as a checkpoint every `PERENNIAL_CHECKPOINT_EVERY_SECONDS`, and Kafka commits "
        "follow the checkpoints.",
    ]
    before = r.get("before")
    if before:
        old = next(iter(before["freshness"].values()))
        lines += [
            "",
            f"Before ({before['date']}, load average {before['load_before'][0]:.1f}"
            + (f"; {before['note']}" if before.get("note") else "")
            + "): (b)/(a) "
            f"{_spread(_ratios(before), '{:.2f}')}, a version "
            f"{before['repeats'][0]['snapshot_bytes'] / 1e6:.1f} MB written in "
            f"{_spread([x['snapshot_seconds'] * 1000 for x in before['repeats']], '{:.0f}')} ms, "
            f"freshness p50 / p99 {old['p50'] * 1000:.0f} / {old['p99'] * 1000:.0f} ms at "
            f"{old.get('rate', 5):g} examples/s with its defaults"
            + (
                f", measured only after the adapter's first {old['warmup_examples']} examples, "
                f"produced at once, were served {old['warmup_seconds']:.0f} s later (the warm-up "
                "in line: learning waited for it)."
                if "warmup_seconds" in old
                else "."
            ),
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

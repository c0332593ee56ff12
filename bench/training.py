"""`make bench-training`: the trainer's throughput, snapshots and freshness on the real stack.

One run, side by side, the trainer with its defaults (the default learner, guardrail on):
  (a) the learner fed from memory in a tight loop (the compute limit);
  (b) the same learner behind the real path: Kafka (Tansu) → trainer process →
      snapshots in Redis, records/s from the first record consumed to the last one
      snapshotted; (a) and (b) alternate for `--repeats` rounds;
  (c) snapshot size and write time (the trainer's own histogram);
  (d) end-to-end freshness: an example produced to Kafka until a prediction is
      served by a version that learned it (the inference service, polled by a
      gRPC client every 20 ms), p50 and p99, with the trainer's defaults and tuned.

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

import numpy as np
import redis
import torch
import tritonclient.grpc as triton
from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from bench.report import write_section
from perennial import codec
from perennial.backbone import TextBackbone
from perennial.learners import LearnerConfig, build_learner
from perennial.store import SnapshotStore
from perennial_dev.datasets.wordnet import class_incremental_split, read_noun_glosses
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


def in_memory(texts: list[str], labels: list[str], batch: int, config: LearnerConfig) -> float:
    """Records/s of the learner in a tight loop on one thread, through the call the trainer
    makes (`learn_and_predict` when the learner has it, else `learn`)."""
    torch.set_num_threads(1)
    learner = build_learner(TextBackbone.load(), config)
    step = getattr(learner, "learn_and_predict", learner.learn)
    started = time.perf_counter()
    for i in range(0, len(texts) - batch + 1, batch):
        step(texts[i : i + batch], labels[i : i + batch])
    return (len(texts) // batch * batch) / (time.perf_counter() - started)


def through_kafka(stack: LocalStack, texts, labels, repeat: int) -> dict:
    """The trainer with its defaults (guardrail on, the default learner) on a topic of its own:
    records/s from the first record consumed until a snapshot covers the last one."""
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
        while not (
            (latest := store.latest(adapter)) and latest.offsets.get(f"{topic}:0", 0) >= len(texts)
        ):
            if time.monotonic() > deadline or not trainer.process.alive:
                raise RuntimeError(f"the trainer did not snapshot the stream; see {stack.workdir}")
            time.sleep(0.01)
        seconds = time.perf_counter() - first
        return {
            "records_per_second": len(texts) / seconds,
            "held_out": len(texts) - latest.examples,
            "snapshot_bytes": store.redis.strlen(f"perennial:{{{adapter}}}:blob:{latest.version}"),
            "snapshot_seconds": metric(trainer, "perennial_trainer_snapshot_duration_seconds_sum")
            / max(metric(trainer, "perennial_trainer_snapshot_duration_seconds_count"), 1),
        }
    finally:
        trainer.stop()


TUNED = {  # the trainer tuned for freshness (the guardrail stays on)
    "PERENNIAL_BATCH_SIZE": 4,
    "PERENNIAL_BATCH_WAIT_SECONDS": 0.05,
    "PERENNIAL_SNAPSHOT_EVERY_EXAMPLES": 4,
    "PERENNIAL_SNAPSHOT_EVERY_SECONDS": 0.2,
}


def freshness(stack: LocalStack, texts, labels, rate: float, seconds: float, name: str,
              **trainer_settings: object) -> dict:  # fmt: skip
    """Produce at `rate`/s; a served version containing an example ends its freshness."""
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
    stop = threading.Event()

    def poll_served() -> None:
        client = triton.InferenceServerClient(inference.grpc_address)
        text = triton.InferInput("text", [1], "BYTES")
        text.set_data_from_numpy(np.array([b"a probe"], dtype=np.object_))
        seen = ""
        while not stop.is_set():
            try:
                version = client.infer(adapter, [text]).get_response().model_version
            except Exception:  # noqa: BLE001 - before the first snapshot
                time.sleep(0.02)
                continue
            now = time.time()
            if version != seen:
                seen = version
                covered = store.manifest(adapter, version).offsets.get(f"{topic}:0", 0)
                for offset in range(covered):
                    served_at.setdefault(offset, now)
            time.sleep(0.02)

    poller = threading.Thread(target=poll_served, daemon=True)
    poller.start()
    producer = KafkaProducer(bootstrap_servers=stack.bootstrap, acks=1, linger_ms=0)
    try:
        count = int(rate * seconds)
        started = time.monotonic()
        for i in range(count):
            time.sleep(max(0.0, started + i / rate - time.monotonic()))
            example = codec.Example(
                adapter, str(i), texts[i % len(texts)], labels[i % len(labels)], time.time()
            )
            metadata = producer.send(topic, key=adapter.encode(), value=codec.encode(example)).get(
                timeout=10
            )
            produced[metadata.offset] = time.time()
        deadline = time.monotonic() + 120
        while len(served_at) < count and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        producer.close()
        trainer.stop()
        inference.stop()
    delays = sorted(served_at[o] - t for o, t in produced.items() if o in served_at)
    return {
        "count": len(delays),
        "p50": statistics.median(delays),
        "p99": delays[min(len(delays) - 1, int(0.99 * len(delays)))],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.training", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--examples", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--fresh-rate", type=float, default=5.0, help="examples/s in the freshness runs"
    )
    parser.add_argument("--fresh-seconds", type=float, default=40.0)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--out", type=Path, default=Path("docs/BENCHMARKS.md"))
    parser.add_argument(
        "--report-only", action="store_true", help="render the report from --results"
    )
    args = parser.parse_args()
    if not args.report_only:
        args.results.write_text(json.dumps(run(args), indent=2) + "\n")
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
    settings = TrainerSettings(kafka_bootstrap="unused:9092", redis_url="redis://unused")
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
        "repeats": [],
    }
    cpu = time.process_time()
    with LocalStack(topics={}) as stack:
        for repeat in range(args.repeats):  # the two sides alternate, so load hits both alike
            print(f"repeat {repeat + 1}/{args.repeats}: (a) tight loop", flush=True)
            memory = in_memory(texts, labels, batch, config)
            print(f"repeat {repeat + 1}/{args.repeats}: (b) Kafka → trainer → Redis", flush=True)
            kafka = through_kafka(stack, texts, labels, repeat)
            results["repeats"].append({"memory_records_per_second": memory, **kafka})
        results["freshness"] = {}
        for name, trainer_settings in (("defaults", {}), ("tuned", TUNED)):
            print(f"(d) freshness, trainer {name}, {args.fresh_rate:g}/s", flush=True)
            results["freshness"][name] = {
                "settings": trainer_settings,
                **freshness(
                    stack, texts, labels, args.fresh_rate, args.fresh_seconds, name,
                    **trainer_settings,
                ),
            }  # fmt: skip
    results["load_after"] = os.getloadavg()
    results["bench_cpu_seconds"] = time.process_time() - cpu
    return results


def _spread(values: list[float], fmt: str = "{:.1f}") -> str:
    """Median [min–max] of the repeats."""
    return (
        f"{fmt.format(statistics.median(values))} "
        f"[{fmt.format(min(values))}–{fmt.format(max(values))}]"
    )


def report(r: dict) -> str:
    """The "Training" section of docs/BENCHMARKS.md, every number from the results file."""
    repeats = r["repeats"]
    memory = [x["memory_records_per_second"] for x in repeats]
    kafka = [x["records_per_second"] for x in repeats]
    ratios = [k / m for k, m in zip(kafka, memory, strict=True)]
    ratio = statistics.median(ratios)
    fresh = r["freshness"]
    verdict = "met" if ratio >= 0.85 else "missed"
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
        f"| (c) snapshot size | {repeats[0]['snapshot_bytes'] / 1e6:.1f} MB | |",
        f"| (c) snapshot write (serialise + Redis transaction) | "
        f"{_spread([x['snapshot_seconds'] * 1000 for x in repeats], '{:.0f}')} ms mean | |",
    ]
    for name, f in fresh.items():
        met = "met" if f["p99"] < 1.0 else "missed"
        lines.append(
            f"| (d) freshness, trainer {name}: p50 / p99, produce → served by a version that "
            f"learned it | {f['p50'] * 1000:.0f} / **{f['p99'] * 1000:.0f}** ms | "
            f"p99 < 1000 ms: {met} |"
        )
    tuned = ", ".join(f"`{k}={v}`" for k, v in fresh["tuned"]["settings"].items())
    lines += [
        "",
        f"(b) holds out {repeats[0]['held_out']} of the {r['examples']} records for the guardrail "
        "(stored, not learned) and judges every candidate on them; (a) learns every record. "
        f"(d) produced {fresh['defaults']['count']} / {fresh['tuned']['count']} examples at "
        "a steady rate with the trainer's defaults and with it tuned for freshness "
        f"({tuned}; the guardrail on in both), and a client asked the inference service every "
        "20 ms which version answers. With the defaults a snapshot waits for 64 examples or "
        "5 s, so freshness is the snapshot cadence.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

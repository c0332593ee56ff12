"""`make bench-training`: the trainer's throughput, snapshots and freshness on the real stack.

One run, side by side:
  (a) the learner fed from memory in a tight loop (the compute limit);
  (b) the same learner behind the real path: Kafka (Tansu) → trainer process →
      snapshots in Redis, examples/s from the first example consumed to the last
      one snapshotted;
  (c) snapshot size and write time (the trainer's own histogram);
  (d) end-to-end freshness: an example produced to Kafka until a prediction is
      served by a version that learned it (the inference service, polled by a
      gRPC client every 20 ms), p50 and p99, with the trainer tuned for freshness.

Writes the "Training" section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
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

ADAPTER = "bench"
TOPIC = "perennial.examples"
SECTION = ("<!-- training:start -->", "<!-- training:end -->")


def metric(service: Service, name: str) -> float:
    return sum(
        s.value
        for f in text_string_to_metric_families(service.scrape())
        for s in f.samples
        if s.name == name
    )


def in_memory(texts: list[str], labels: list[str], batch: int, config: LearnerConfig) -> float:
    """Examples/s of `learn` in a tight loop on one thread (as the trainer runs)."""
    torch.set_num_threads(1)
    learner = build_learner(TextBackbone.load(), config)
    started = time.perf_counter()
    for i in range(0, len(texts) - batch + 1, batch):
        learner.learn(texts[i : i + batch], labels[i : i + batch])
    return (len(texts) // batch * batch) / (time.perf_counter() - started)


def through_kafka(stack: LocalStack, texts, labels, batch: int) -> dict:
    producer = KafkaProducer(bootstrap_servers=stack.bootstrap, acks="all", linger_ms=5)
    for i, (text, label) in enumerate(zip(texts, labels, strict=False)):
        example = codec.Example(ADAPTER, str(i), text, label, time.time())
        producer.send(TOPIC, key=ADAPTER.encode(), value=codec.encode(example))
    producer.flush()
    producer.close()
    trainer = start_trainer(
        stack.workdir,
        bootstrap=stack.bootstrap,
        redis_url=stack.redis_url,
        log_name="bench-trainer.log",
        PERENNIAL_BATCH_SIZE=batch,
        PERENNIAL_BATCH_WAIT_SECONDS="inf",
        PERENNIAL_HOLDOUT_EVERY=0,
        PERENNIAL_SNAPSHOT_EVERY_EXAMPLES=256,
        PERENNIAL_SNAPSHOT_EVERY_SECONDS="inf",
    )
    store = SnapshotStore(redis.Redis.from_url(stack.redis_url))
    try:
        while metric(trainer, "perennial_trainer_examples_consumed_total") == 0:
            time.sleep(0.01)
        first = time.perf_counter()
        expected = len(texts) // batch * batch
        while not (
            store.latest(ADAPTER) and store.latest(ADAPTER).examples >= expected // 256 * 256
        ):
            time.sleep(0.01)
        seconds = time.perf_counter() - first
        latest = store.latest(ADAPTER)
        return {
            "examples_per_second": latest.examples / seconds,
            "snapshot_bytes": store.redis.strlen(f"perennial:{{{ADAPTER}}}:blob:{latest.version}"),
            "snapshot_seconds": metric(trainer, "perennial_trainer_snapshot_duration_seconds_sum")
            / max(metric(trainer, "perennial_trainer_snapshot_duration_seconds_count"), 1),
        }
    finally:
        trainer.stop()


def freshness(stack: LocalStack, texts, labels, rate: float, seconds: float) -> dict:
    """Produce at `rate`/s; a served version containing an example ends its freshness."""
    adapter, topic = "fresh", "perennial.fresh"
    create_topics(stack.bootstrap, {topic: 1})
    trainer = start_trainer(
        stack.workdir,
        bootstrap=stack.bootstrap,
        redis_url=stack.redis_url,
        log_name="fresh-trainer.log",
        PERENNIAL_TOPIC=topic,
        PERENNIAL_GROUP_ID="fresh",
        PERENNIAL_BATCH_SIZE=4,
        PERENNIAL_BATCH_WAIT_SECONDS=0.05,
        PERENNIAL_HOLDOUT_EVERY=0,
        PERENNIAL_SNAPSHOT_EVERY_EXAMPLES=4,
        PERENNIAL_SNAPSHOT_EVERY_SECONDS=0.2,
    )
    inference = start_inference(
        stack.workdir,
        redis_url=stack.redis_url,
        log_name="fresh-inference.log",
        PERENNIAL_RECONCILE_SECONDS=1,
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
        deadline = time.monotonic() + 60
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
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--fresh-rate", type=float, default=5.0, help="examples/s in the freshness run"
    )
    parser.add_argument("--fresh-seconds", type=float, default=40.0)
    parser.add_argument("--out", type=Path, default=Path("docs/BENCHMARKS.md"))
    args = parser.parse_args()
    glosses = class_incremental_split(
        read_noun_glosses(), train_per_class=-(-args.examples // 24), test_per_class=1
    ).train
    texts, labels = (
        [g.text for g in glosses][: args.examples],
        [g.label for g in glosses][: args.examples],
    )
    config = LearnerConfig(seed=0)
    print(
        f"(a) in memory: {len(texts)} examples, learner {config.learner}, batch {args.batch_size}",
        flush=True,
    )
    memory = in_memory(texts, labels, args.batch_size, config)
    with LocalStack(topics={TOPIC: 1}) as stack:
        print("(b, c) through Kafka → trainer → Redis", flush=True)
        kafka = through_kafka(stack, texts, labels, args.batch_size)
        print(
            f"(d) freshness at {args.fresh_rate:g} examples/s for {args.fresh_seconds:g} s",
            flush=True,
        )
        fresh = freshness(stack, texts, labels, args.fresh_rate, args.fresh_seconds)
    ratio = kafka["examples_per_second"] / memory
    text = f"""## Training

`make bench-training` — {dt.date.today().isoformat()}, {platform.processor() or platform.machine()},
{os.cpu_count()} CPU cores, torch {torch.__version__}, learner `{config.learner}` (PET `{config.pet.method}`),
micro-batch {args.batch_size}, one torch thread, {len(texts)} WordNet glosses. The machine was shared
with other work during the run, so treat absolute numbers as indicative; the ratio is measured in one run.

| measurement | value | goal |
| --- | --- | --- |
| (a) learner from memory, tight loop | {memory:.1f} examples/s | |
| (b) Kafka → trainer → snapshot | {kafka["examples_per_second"]:.1f} examples/s | |
| (b)/(a) | **{ratio:.2f}** | ≥ 0.85 |
| (c) snapshot size | {kafka["snapshot_bytes"] / 1e6:.1f} MB | |
| (c) snapshot write (serialise + Redis transaction) | {kafka["snapshot_seconds"] * 1000:.0f} ms mean | |
| (d) freshness p50, produce → served by a version that learned it | {fresh["p50"] * 1000:.0f} ms | |
| (d) freshness p99 | **{fresh["p99"] * 1000:.0f} ms** | < 1000 ms |

(d) ran {fresh["count"]} examples at {args.fresh_rate:g}/s with the trainer tuned for freshness
(`PERENNIAL_BATCH_SIZE=4`, `PERENNIAL_BATCH_WAIT_SECONDS=0.05`, `PERENNIAL_SNAPSHOT_EVERY_SECONDS=0.2`,
guardrail off) and a client asking the inference service every 20 ms which version answers.
"""
    write_section(args.out, SECTION, text)
    print(text)


if __name__ == "__main__":
    main()

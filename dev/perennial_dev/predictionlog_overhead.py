"""The prediction log's cost on serving throughput: the same load with the log on and off.

Starts Tansu and Redis, trains one WordNet adapter with the real trainer, then two inference
processes on the same snapshot — one with `PERENNIAL_PREDICTION_LOG` on, one off — and drives
each in turn (interleaved repeats, one process loaded at a time) with closed-loop gRPC clients.
Prints rows/s and latency per repeat and writes them as JSON.

    python -m perennial_dev.predictionlog_overhead --seconds 20 --repeats 3 --out results.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import redis
import tritonclient.grpc as triton
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from perennial import codec
from perennial.store import SnapshotStore
from perennial_dev.datasets.wordnet import class_incremental_split, read_noun_glosses
from perennial_dev.launch import start_inference, start_trainer
from perennial_dev.localstack import LocalStack

ADAPTER = "wordnet"


def drive(address: str, texts: list[str], seconds: float, concurrency: int, rows: int) -> dict:
    """Closed-loop load: `concurrency` clients, each sending `rows` texts per request."""
    latencies: list[float] = []
    lock, stop = threading.Lock(), threading.Event()

    def client(offset: int) -> None:
        grpc = triton.InferenceServerClient(address)
        i = offset
        while not stop.is_set():
            batch = [texts[(i + k) % len(texts)].encode() for k in range(rows)]
            tensor = triton.InferInput("text", [rows], "BYTES")
            tensor.set_data_from_numpy(np.array(batch, dtype=np.object_))
            started = time.perf_counter()
            grpc.infer(ADAPTER, [tensor])
            with lock:
                latencies.append(time.perf_counter() - started)
            i += rows

    threads = [threading.Thread(target=client, args=(n * 97,)) for n in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    return {
        "rows_per_second": len(latencies) * rows / elapsed,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * float(np.percentile(latencies, 99)),
        "requests": len(latencies),
    }


def logged_rows(bootstrap: str, topic: str) -> int:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    count, idle = 0, 0
    while idle < 3:
        batch = consumer.poll(timeout_ms=1000, max_records=10_000)
        got = sum(len(records) for records in batch.values())
        count, idle = count + got, 0 if got else idle + 1
    consumer.close()
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="load per phase")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved off/on pairs")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rows", type=int, default=1, help="texts per request")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)

    split = class_incremental_split(
        read_noun_glosses(), num_classes=8, train_per_class=40, test_per_class=40, seed=0
    )
    texts = [g.text for glosses in split.test.values() for g in glosses]
    workdir = Path(tempfile.mkdtemp(prefix="perennial-log-overhead-"))
    topics = {"perennial.examples": 1, "perennial.examples.dlq": 1, "perennial.predictions": 1}
    with LocalStack(workdir, topics=topics, keep_workdir=True) as stack:
        trainer = start_trainer(workdir, bootstrap=stack.bootstrap, redis_url=stack.redis_url)
        producer = KafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
        for gloss in split.train:
            example = codec.Example(ADAPTER, gloss.synset, gloss.text, gloss.label, time.time())
            producer.send("perennial.examples", key=ADAPTER.encode(), value=codec.encode(example))
        producer.close()
        store = SnapshotStore(redis.Redis.from_url(stack.redis_url))
        deadline = time.monotonic() + 300
        while not (store.head(ADAPTER) and store.head(ADAPTER).examples >= len(split.train) * 0.9):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the trainer did not learn the stream; see {workdir}")
            time.sleep(1)
        trainer.stop()
        services = {
            "off": start_inference(workdir, redis_url=stack.redis_url, log_name="off.log"),
            "on": start_inference(
                workdir,
                redis_url=stack.redis_url,
                log_name="on.log",
                PERENNIAL_PREDICTION_LOG="true",
                PERENNIAL_KAFKA_BOOTSTRAP=stack.bootstrap,
            ),
        }
        try:
            for service in services.values():  # warm-up: load the version, first batches
                drive(service.grpc_address, texts, 3, args.concurrency, args.rows)
            runs = []
            for repeat in range(args.repeats):
                for log in ("off", "on") if repeat % 2 == 0 else ("on", "off"):
                    result = drive(
                        services[log].grpc_address,
                        texts,
                        args.seconds,
                        args.concurrency,
                        args.rows,
                    )
                    runs.append({"repeat": repeat, "prediction_log": log, **result})
                    print(json.dumps(runs[-1]), flush=True)
            dropped = sum(
                sample.value
                for family in text_string_to_metric_families(services["on"].scrape())
                for sample in family.samples
                if sample.name == "perennial_inference_predictions_dropped_total"
            )
            logged = logged_rows(stack.bootstrap, "perennial.predictions")
        finally:
            for service in services.values():
                service.stop()
    summary = {
        log: statistics.mean(r["rows_per_second"] for r in runs if r["prediction_log"] == log)
        for log in ("off", "on")
    }
    result = {
        "settings": vars(args) | {"out": str(args.out) if args.out else None},
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "runs": runs,
        "mean_rows_per_second": summary,
        "overhead": 1 - summary["on"] / summary["off"],
        "rows_on_the_log": logged,
        "rows_dropped": dropped,
        "rows_served_with_the_log_on": sum(
            r["requests"] * args.rows for r in runs if r["prediction_log"] == "on"
        ),
    }
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

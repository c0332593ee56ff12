"""Produce labelled examples as plain JSON with kafka-python (docs/QUICKSTART.md, step 1).

Nothing from Perennial is needed to feed it: a record is a JSON object keyed by the adapter id.
Run: python examples/produce_json.py --bootstrap 127.0.0.1:9092
"""

from __future__ import annotations

import argparse
import json
import time

from kafka import KafkaProducer

# A tiny stream of three classes; a real producer sends whatever its application labels.
EXAMPLES = [
    ("a small domesticated dog that barks at strangers", "animal"),
    ("a striped wild cat hunting in the jungle", "animal"),
    ("a horse galloping across the open field", "animal"),
    ("a bird singing on a branch at dawn", "animal"),
    ("a cow grazing in the green meadow", "animal"),
    ("a tall oak tree with broad green leaves", "plant"),
    ("a fern growing in the shade of the forest", "plant"),
    ("a red rose blooming in the garden", "plant"),
    ("moss covering the old stones by the river", "plant"),
    ("a pine tree with needles and cones", "plant"),
    ("a fast car driving on the motorway", "vehicle"),
    ("a red bus stopping to pick up passengers", "vehicle"),
    ("a bicycle with two wheels and a bell", "vehicle"),
    ("a cargo ship crossing the ocean", "vehicle"),
    ("a train pulling into the station", "vehicle"),
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092", help="Kafka bootstrap servers")
    parser.add_argument("--topic", default="perennial.examples")
    parser.add_argument("--adapter", default="quickstart", help="the model to train")
    args = parser.parse_args(argv)

    producer = KafkaProducer(bootstrap_servers=args.bootstrap, acks="all")
    for number, (text, label) in enumerate(EXAMPLES):
        record = {
            "adapter": args.adapter,
            "example_id": f"json-{number}",
            "text": text,
            "label": label,
            "event_time": time.time(),  # or RFC 3339: "2026-11-30T10:00:00Z"
        }
        producer.send(args.topic, key=args.adapter.encode(), value=json.dumps(record).encode())
    producer.flush()
    producer.close()
    print(f"sent {len(EXAMPLES)} JSON examples for adapter {args.adapter!r} to {args.topic}")


if __name__ == "__main__":
    main()

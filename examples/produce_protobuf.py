"""Produce labelled examples as protobuf `perennial.v1.Example` (docs/QUICKSTART.md, step 1).

The compact wire form, built with the `perennial` package's codec (`pip install` the project,
or generate your own code from protos/perennial/v1/example.proto).
Run: python examples/produce_protobuf.py --bootstrap 127.0.0.1:9092
"""

from __future__ import annotations

import argparse
import time

from kafka import KafkaProducer

from perennial import codec

EXAMPLES = [
    ("a fox running through the snow", "animal"),
    ("a whale breathing at the surface of the sea", "animal"),
    ("a sunflower turning towards the sun", "plant"),
    ("grass growing between the paving stones", "plant"),
    ("a motorbike parked by the road", "vehicle"),
    ("an aeroplane taking off from the runway", "vehicle"),
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092", help="Kafka bootstrap servers")
    parser.add_argument("--topic", default="perennial.examples")
    parser.add_argument("--adapter", default="quickstart", help="the model to train")
    args = parser.parse_args(argv)

    producer = KafkaProducer(bootstrap_servers=args.bootstrap, acks="all")
    for number, (text, label) in enumerate(EXAMPLES):
        example = codec.Example(args.adapter, f"proto-{number}", text, label, time.time())
        producer.send(args.topic, key=args.adapter.encode(), value=codec.encode(example))
    producer.flush()
    producer.close()
    print(f"sent {len(EXAMPLES)} protobuf examples for adapter {args.adapter!r} to {args.topic}")


if __name__ == "__main__":
    main()

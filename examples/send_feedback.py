"""Send feedback: the true label of a served prediction, learned later (docs/QUICKSTART.md, step 3).

A JSON object `{"prediction_id": ..., "label": ...}` on `perennial.feedback`; the trainer joins
it with the logged prediction and learns it like any example, once.
Run: python examples/send_feedback.py --bootstrap 127.0.0.1:9092 PREDICTION_ID=animal ...
"""

from __future__ import annotations

import argparse
import json
import time

from kafka import KafkaProducer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("answers", nargs="+", metavar="PREDICTION_ID=LABEL")
    parser.add_argument("--bootstrap", default="127.0.0.1:9092", help="Kafka bootstrap servers")
    parser.add_argument("--topic", default="perennial.feedback")
    args = parser.parse_args(argv)

    producer = KafkaProducer(bootstrap_servers=args.bootstrap, acks="all")
    for answer in args.answers:
        prediction_id, _, label = answer.partition("=")
        record = {"prediction_id": prediction_id, "label": label, "event_time": time.time()}
        producer.send(args.topic, value=json.dumps(record).encode())
    producer.flush()
    producer.close()
    print(f"sent {len(args.answers)} answers to {args.topic}")


if __name__ == "__main__":
    main()

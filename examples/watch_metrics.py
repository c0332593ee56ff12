"""Watch the loop close: served accuracy from feedback and what both services did (docs/QUICKSTART.md, step 4).

Reads the two /metrics endpoints Prometheus scrapes and prints, per adapter, the examples
learned, the feedback joined and how often the served prediction was right.
Run: python examples/watch_metrics.py --trainer http://127.0.0.1:9100 --inference http://127.0.0.1:9101
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.request
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families


def samples(url: str) -> list:
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        text = response.read().decode()
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def report(trainer: str, inference: str) -> tuple[str, float]:
    """The report's text and the number of feedback answers joined so far."""
    learned, right, judged = defaultdict(float), defaultdict(float), defaultdict(float)
    for sample in samples(trainer):
        adapter = sample.labels.get("adapter", "")
        if sample.name == "perennial_trainer_examples_consumed_total":
            learned[adapter] += sample.value
        elif sample.name == "perennial_trainer_feedback_joined_total":
            judged[adapter] += sample.value
            if sample.labels["served"] == "correct":
                right[adapter] += sample.value
    logged = dropped = 0.0
    for sample in samples(inference):
        if sample.name == "perennial_inference_predictions_logged_total":
            logged += sample.value
        elif sample.name == "perennial_inference_predictions_dropped_total":
            dropped += sample.value
    lines = [f"predictions logged {logged:.0f}, dropped {dropped:.0f}"]
    for adapter in sorted(set(learned) | set(judged)):
        accuracy = f"{right[adapter] / judged[adapter]:.0%}" if judged[adapter] else "-"
        lines.append(
            f"{adapter}: learned {learned[adapter]:.0f} examples, feedback {judged[adapter]:.0f}, "
            f"served accuracy from feedback {accuracy}"
        )
    return "\n".join(lines), sum(judged.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trainer", default="http://127.0.0.1:9100", help="trainer metrics URL")
    parser.add_argument("--inference", default="http://127.0.0.1:9101", help="inference metrics")
    parser.add_argument(
        "--until-feedback", type=int, default=0, help="wait until this many answers are joined"
    )
    parser.add_argument("--timeout", type=float, default=60, help="give up waiting after this")
    args = parser.parse_args(argv)

    deadline = time.monotonic() + args.timeout
    while True:
        text, joined = report(args.trainer, args.inference)
        if joined >= args.until_feedback:
            print(text)
            return 0
        if time.monotonic() > deadline:
            print(text)
            print(f"only {joined:.0f} of {args.until_feedback} answers joined", file=sys.stderr)
            return 1
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())

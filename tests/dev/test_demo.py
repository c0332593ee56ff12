"""The demo: its reading of Prometheus histograms, and a small run with --keep."""

import json
import math
import os
import queue
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from perennial_dev.demo import histogram_quantile

ROOT = Path(__file__).resolve().parents[2]


def _samples(values):
    registry = CollectorRegistry()
    histogram = Histogram("fresh_seconds", "x", buckets=(1, 2, 4, 8), registry=registry)
    for value in values:
        histogram.observe(value)
    samples = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def test_quantile_interpolates_inside_the_bucket_like_prometheus():
    samples = _samples([0.5] * 50 + [3.0] * 50)
    assert histogram_quantile(samples, "fresh_seconds", 0.5) == 1.0  # rank 50 closes bucket le=1
    assert histogram_quantile(samples, "fresh_seconds", 0.75) == 3.0  # halfway through (2, 4]


def test_quantile_of_an_empty_histogram_is_nan():
    assert math.isnan(histogram_quantile(_samples([]), "fresh_seconds", 0.5))
    assert math.isnan(histogram_quantile({}, "fresh_seconds", 0.5))


@pytest.mark.e2e
def test_demo_keeps_the_stack_running_and_its_printed_commands_work(tmp_path, tiny_backbone_dir):
    """A small demo with --keep (tiny backbone): the summary shows served accuracy from
    feedback; the printed `perennial` and tritonclient commands work against the kept stack;
    Ctrl-C then stops everything."""
    environment = {
        **os.environ,
        "PERENNIAL_BACKBONE_PATH": str(tiny_backbone_dir),
        "COLUMNS": "240",
        "PYTHONUNBUFFERED": "1",
    }
    argv = [sys.executable, "-m", "perennial_dev.demo", "--keep", "--workdir", str(tmp_path)]
    argv += ["--classes", "4", "--classes-per-stage", "2", "--train-per-class", "12"]
    argv += ["--test-per-class", "4", "--feedback-per-class", "3", "--eval-per-class", "2"]
    argv += ["--rate", "40", "--batch-size", "8", "--snapshot-every", "16"]
    demo = subprocess.Popen(
        argv, cwd=ROOT, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in demo.stdout], daemon=True).start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 600
        while not any(line.startswith("Stop everything") for line in seen):
            assert demo.poll() is None, "".join(seen)
            assert time.monotonic() < deadline, "".join(seen)
            try:
                seen.append(lines.get(timeout=1))
            except queue.Empty:
                pass
        output = " ".join("".join(seen).split())  # tables wrap their titles
        assert "never streamed as examples nor answered with feedback" in output
        assert "guardrail's holdout is a different set" in output
        assert re.search(r"served accuracy from feedback │ served accuracy [\d.]+% on \d+", output)
        assert re.search(r"prediction log │ [1-9]\d* predictions logged, 0 dropped", output)
        commands = [line.strip() for line in seen]
        status = next(c for c in commands if c.startswith("perennial --target") and "status" in c)
        result = subprocess.run(
            [str(Path(sys.executable).with_name("perennial")), *shlex.split(status)[1:]],
            capture_output=True, text=True, timeout=60, env=environment,
        )  # fmt: skip
        assert result.returncode == 0 and "wordnet" in result.stdout, result.stdout + result.stderr
        query = next(c for c in commands if c.startswith("python examples/query_grpc.py"))
        result = subprocess.run(
            [sys.executable, *shlex.split(query)[1:]],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        assert json.loads(result.stdout)["prediction_id"]
        grpc_address = shlex.split(query)[shlex.split(query).index("--url") + 1]
    finally:
        demo.send_signal(signal.SIGINT)
        code = demo.wait(timeout=120)
    assert code == 0, "".join(seen)
    with socket.socket() as probe:
        host, port = grpc_address.rsplit(":", 1)
        assert probe.connect_ex((host, int(port))) != 0, "the inference service outlived the demo"

"""docs/QUICKSTART.md, executed: every script it shows runs against the real stack (Tansu, Redis,
the trainer and the inference service as processes) and does what the page says."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from perennial.store import SnapshotStore
from perennial_dev.launch import start_inference, start_trainer
from perennial_dev.localstack import create_topics
from tests.helpers import wait_for

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "docs" / "QUICKSTART.md"
SCRIPTS = {
    "produce_json.py",
    "produce_protobuf.py",
    "query_grpc.py",
    "query_rest.py",
    "send_feedback.py",
    "watch_metrics.py",
}


def run(script: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, f"{script}: {result.stdout}{result.stderr}"
    return result.stdout


def test_the_page_shows_exactly_the_scripts_this_test_runs() -> None:
    shown = set(re.findall(r"examples/(\w+\.py)", QUICKSTART.read_text()))
    assert shown == SCRIPTS
    assert {p.name for p in (ROOT / "examples").glob("*.py")} == SCRIPTS


def test_quickstart_scripts_on_the_real_stack(
    kafka_broker, redis_server, redis_client, tmp_path, tiny_backbone_dir
) -> None:
    suffix = uuid.uuid4().hex[:8]
    adapter = f"quickstart-{suffix}"
    topics = {
        "PERENNIAL_TOPIC": f"examples.{suffix}",
        "PERENNIAL_DEAD_LETTER_TOPIC": f"examples.{suffix}.dlq",
        "PERENNIAL_PREDICTIONS_TOPIC": f"predictions.{suffix}",
        "PERENNIAL_FEEDBACK_TOPIC": f"feedback.{suffix}",
    }
    create_topics(kafka_broker.bootstrap, {name: 1 for name in topics.values()})
    common = {"PERENNIAL_BACKBONE_PATH": tiny_backbone_dir}
    trainer = start_trainer(
        tmp_path,
        bootstrap=kafka_broker.bootstrap,
        redis_url=redis_server.url,
        **common,
        **topics,
        PERENNIAL_GROUP_ID=f"group-{suffix}",
        PERENNIAL_FEEDBACK="true",
        PERENNIAL_BATCH_WAIT_SECONDS=0.5,
        PERENNIAL_SNAPSHOT_EVERY_SECONDS=1,
    )
    inference = start_inference(
        tmp_path,
        redis_url=redis_server.url,
        **common,
        PERENNIAL_PREDICTION_LOG="true",
        PERENNIAL_PREDICTION_LOG_TOPIC=topics["PERENNIAL_PREDICTIONS_TOPIC"],
        PERENNIAL_KAFKA_BOOTSTRAP=kafka_broker.bootstrap,
    )
    try:
        kafka = ["--bootstrap", kafka_broker.bootstrap]
        examples = ["--topic", topics["PERENNIAL_TOPIC"], "--adapter", adapter]
        assert "sent 15 JSON examples" in run("produce_json.py", *kafka, *examples)
        assert "sent 6 protobuf examples" in run("produce_protobuf.py", *kafka, *examples)
        store = SnapshotStore(redis_client)
        wait_for(
            lambda: (store.head(adapter) or None) and store.head(adapter).examples == 21,
            120,
            "a served version with all 21 examples",
            seen=lambda: store.head(adapter),
        )

        texts = ["a puppy chewing a bone", "a lorry on the road"]
        grpc = [json.loads(line) for line in run(
            "query_grpc.py", "--url", inference.grpc_address, "--adapter", adapter, *texts
        ).splitlines()]  # fmt: skip
        rest = [json.loads(line) for line in run(
            "query_rest.py", "--url", f"http://{inference.rest_address}", "--adapter", adapter,
            *texts,
        ).splitlines()]  # fmt: skip
        assert [r["text"] for r in grpc + rest] == texts * 2
        assert {r["version"] for r in grpc + rest} == {store.head(adapter).version}
        assert [r["label"] for r in grpc] == [r["label"] for r in rest]  # the same model
        assert set(grpc[0]["classes"]) == {"animal", "plant", "vehicle"}
        ids = [r["prediction_id"] for r in grpc + rest]
        assert len(set(ids)) == 4 and None not in ids

        truth = ["animal", "vehicle", "animal", "vehicle"]
        answers = [f"{i}={label}" for i, label in zip(ids, truth, strict=True)]
        feedback = ["--topic", topics["PERENNIAL_FEEDBACK_TOPIC"]]
        assert "sent 4 answers" in run("send_feedback.py", *kafka, *feedback, *answers)
        report = run(
            "watch_metrics.py",
            "--trainer", f"http://127.0.0.1:{trainer.metrics_port}",
            "--inference", f"http://127.0.0.1:{inference.metrics_port}",
            "--until-feedback", "4",
        )  # fmt: skip
        right = sum(r["label"] == t for r, t in zip(grpc + rest, truth, strict=True))
        assert f"{adapter}: learned" in report and "feedback 4," in report
        assert f"served accuracy from feedback {right / 4:.0%}" in report
        assert "predictions logged 4, dropped 0" in report
        wait_for(lambda: store.head(adapter).examples == 25, 60, "the 4 answers learned and served")
    finally:
        trainer.stop()
        inference.stop()

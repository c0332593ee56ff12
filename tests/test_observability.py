"""Observability end to end: a real Prometheus scrapes the running services during a stream
with an injected drift, evaluates deploy/prometheus/rules.yml, and answers every dashboard query.

The stream: WordNet noun glosses of four classes (learned, then queried: the reference),
then a block from another source (WordNet *verb* glosses, labelled with the same classes,
sent to the trainer and queried), then four new classes. DriftDetected must become active after the
block and not before it.
"""

from __future__ import annotations

import json
import random
import re
import time
import uuid
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import redis
import tritonclient.grpc as triton
from kafka import KafkaProducer

from perennial import codec
from perennial.store import SnapshotStore
from perennial_dev.datasets.wordnet import WORDNET_DIR, class_incremental_split, read_noun_glosses
from perennial_dev.launch import start_inference, start_trainer
from perennial_dev.localstack import create_topics
from perennial_dev.promserver import PrometheusServer, start_prometheus
from tests.helpers import wait_for

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "perennial.json"
ADAPTER = "wordnet"
# Small detector windows: a few hundred queries make a reference and a test window.
MONITOR = {
    "PERENNIAL_DRIFT_INPUT_REFERENCE": 64,
    "PERENNIAL_DRIFT_INPUT_WINDOW": 32,
    "PERENNIAL_DRIFT_PREDICTION_REFERENCE": 64,
    "PERENNIAL_DRIFT_PREDICTION_WINDOW": 32,
}


def verb_glosses(limit: int, seed: int = 3) -> list[str]:
    """Definitions of WordNet verbs: the "different source" block."""
    texts = []
    for line in (WORDNET_DIR / "data.verb").read_text(encoding="utf-8").splitlines():
        if line.startswith("  ") or " | " not in line:
            continue
        text = line.partition(" | ")[2].split('; "')[0].strip().strip('";').strip()
        if len(text) > 10:
            texts.append(text)
    return random.Random(seed).sample(texts, limit)


def value(prometheus: PrometheusServer, expr: str) -> float:
    result = prometheus.query(expr)
    return sum(float(r["value"][1]) for r in result)


def drift_alerts(prometheus: PrometheusServer) -> list[dict]:
    return [a for a in prometheus.alerts() if a["labels"]["alertname"] == "DriftDetected"]


def all_values(expr: str) -> str:
    """A dashboard query as Grafana sends it with every variable on "All"."""
    for name in ("namespace", "job", "instance", "adapter"):
        expr = expr.replace(f"${name}", ".*")
    return expr


def dashboard_queries() -> tuple[dict[str, str], list[str]]:
    """Each panel's queries (by "panel title / refId") and the annotation queries."""
    board = json.loads(DASHBOARD.read_text())
    panels = {
        f"{p['title']} / {t['refId']}": all_values(t["expr"])
        for p in board["panels"]
        for t in p.get("targets", [])
    }
    annotations = [all_values(a["expr"]) for a in board["annotations"]["list"]]
    return panels, annotations


def rule_signals() -> list[str]:
    """Every rule expression, alert thresholds removed: what must return data on a live system."""
    import yaml

    groups = yaml.safe_load(RULES.read_text())["groups"]
    signals = []
    for rule in (r for g in groups for r in g["rules"]):
        expr = " ".join(rule["expr"].split())
        if "absent(" in expr:
            continue  # has data only when a service's metrics are missing
        if "alert" in rule:
            expr = re.sub(r"\s*(>|<|>=|<=|==|!=)\s*[0-9.e+-]+(?=\s|\)|$)", "", expr)
        signals.append(expr)
    return signals


@pytest.fixture
def stack(kafka_broker, redis_server, redis_client, tmp_path):
    suffix = uuid.uuid4().hex[:8]
    topic = f"perennial.examples.{suffix}"
    feedback = {
        "PERENNIAL_PREDICTIONS_TOPIC": f"perennial.predictions.{suffix}",
        "PERENNIAL_FEEDBACK_TOPIC": f"perennial.feedback.{suffix}",
    }
    create_topics(
        kafka_broker.bootstrap, {topic: 1, f"{topic}.dlq": 1, **dict.fromkeys(feedback.values(), 1)}
    )
    started = []
    try:
        inference = start_inference(
            tmp_path,
            redis_url=redis_server.url,
            PERENNIAL_RECONCILE_SECONDS=2,
            PERENNIAL_PREDICTION_LOG="true",  # the feedback panels need the loop closed
            PERENNIAL_PREDICTION_LOG_TOPIC=feedback["PERENNIAL_PREDICTIONS_TOPIC"],
            PERENNIAL_KAFKA_BOOTSTRAP=kafka_broker.bootstrap,
            **MONITOR,
        )
        started.append(inference)
        trainer = start_trainer(
            tmp_path,
            bootstrap=kafka_broker.bootstrap,
            redis_url=redis_server.url,
            PERENNIAL_TOPIC=topic,
            PERENNIAL_DEAD_LETTER_TOPIC=f"{topic}.dlq",
            PERENNIAL_GROUP_ID=f"trainer-{suffix}",
            PERENNIAL_BATCH_SIZE=16,
            PERENNIAL_BATCH_WAIT_SECONDS=1,
            PERENNIAL_SNAPSHOT_EVERY_EXAMPLES=32,
            PERENNIAL_SNAPSHOT_EVERY_SECONDS=2,
            PERENNIAL_HOLDOUT_EVERY=4,
            PERENNIAL_FORGETTING_EVERY_SECONDS=0,
            PERENNIAL_PREQUENTIAL_BUDGET=1,
            PERENNIAL_FEEDBACK="true",
            **feedback,
        )
        started.append(trainer)
        prometheus = start_prometheus(
            tmp_path / "prometheus",
            {
                "trainer": [f"127.0.0.1:{trainer.metrics_port}"],
                "inference": [f"127.0.0.1:{inference.metrics_port}"],
            },
            [RULES],
        )
        started.append(prometheus)
        producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
        yield {
            "topic": topic,
            "feedback_topic": feedback["PERENNIAL_FEEDBACK_TOPIC"],
            "trainer": trainer,
            "inference": inference,
            "prometheus": prometheus,
            "producer": producer,
            "store": SnapshotStore(redis.Redis.from_url(redis_server.url)),
        }
        producer.close()
    finally:
        for service in reversed(started):
            service.stop()


def produce(stack, examples: list[tuple[str, str]]) -> None:
    for index, (text, label) in enumerate(examples):
        example = codec.Example(
            ADAPTER, f"x{uuid.uuid4().hex[:12]}-{index}", text, label, time.time()
        )
        stack["producer"].send(stack["topic"], key=ADAPTER.encode(), value=codec.encode(example))
    stack["producer"].flush()


def query(client: triton.InferenceServerClient, texts: list[str]) -> list[str]:
    """Ask about `texts`; return their prediction ids (the prediction log is on)."""
    ids = []
    for start in range(0, len(texts), 8):
        batch = texts[start : start + 8]
        tensor = triton.InferInput("text", [len(batch)], "BYTES")
        tensor.set_data_from_numpy(np.array([t.encode() for t in batch], dtype=np.object_))
        reply = client.infer(ADAPTER, [tensor])
        ids += reply.get_response().parameters["prediction_id"].string_param.split(",")
    return ids


def test_drift_detected_after_the_injected_drift_and_every_panel_has_data(stack, tmp_path) -> None:
    prometheus: PrometheusServer = stack["prometheus"]
    started = time.time()
    wait_for(prometheus.targets_up, 60, "both services scraped")
    split = class_incremental_split(
        read_noun_glosses(),
        num_classes=8,
        classes_per_stage=4,
        train_per_class=48,
        test_per_class=40,
        seed=2,
    )
    first = split.stages[0]
    stage_a = [(g.text, g.label) for g in split.train if g.label in first]
    stage_b = [(g.text, g.label) for g in split.train if g.label not in first]
    reference_queries = [g.text for label in first for g in split.test[label]]
    random.Random(0).shuffle(reference_queries)

    # 1. Stage A: learn four classes, then query them (the detectors' reference).
    produce(stack, stage_a)
    stack["producer"].send(
        stack["topic"], key=ADAPTER.encode(), value=b"\x08\x96\x01garbage"
    )  # a dead letter
    consumed = f'perennial_trainer_examples_consumed_total{{adapter="{ADAPTER}"}}'
    offset = f"{stack['topic']}:0"
    wait_for(
        lambda: (
            stack["store"].head(ADAPTER)
            and stack["store"].head(ADAPTER).offsets.get(offset, 0) >= len(stage_a)
        ),
        240,
        "a snapshot of all of stage A",
    )
    client = triton.InferenceServerClient(stack["inference"].grpc_address)
    query(client, reference_queries)
    observed = f'perennial_inference_drift_observations_total{{adapter="{ADAPTER}"}}'
    wait_for(
        lambda: value(prometheus, observed) >= len(reference_queries),
        60,
        "the reference queries scraped",
    )
    settled = time.time()
    wait_for(
        lambda: all(
            _epoch(r["lastEvaluation"]) > settled + 2
            for g in prometheus.rules()
            for r in g["rules"]
        ),
        30,
        "rules evaluated on the reference",
    )
    assert drift_alerts(prometheus) == [], "DriftDetected before the drift"
    assert (
        value(prometheus, "namespace_job_adapter_signal:perennial_drift_detections:increase15m")
        == 0
    )
    assert value(prometheus, consumed) > 0

    # 2. The drift: a block from another source, to the trainer and to the inference service.
    drift_at = time.time()
    verbs = verb_glosses(160)
    produce(stack, [(text, first[i % len(first)]) for i, text in enumerate(verbs)])
    query(client, verbs)
    wait_for(  # pending: its `for` (5 min) then turns it into firing
        lambda: drift_alerts(prometheus), 120, "DriftDetected pending"
    )
    concept = f'perennial_trainer_drift_detections_total{{adapter="{ADAPTER}",signal="concept"}}'
    wait_for(
        lambda: value(prometheus, concept) >= 1,
        120,
        "the trainer's concept drift (prequential error)",
    )
    alerts = wait_for(
        lambda: (
            {"input", "concept"} <= {a["labels"]["signal"] for a in drift_alerts(prometheus)}
            and drift_alerts(prometheus)
        ),
        60,
        "DriftDetected for the input and concept signals",
    )
    assert all(_epoch(a["activeAt"]) >= drift_at - 1 for a in alerts), (alerts, drift_at)

    # 3. New classes arrive; the trainer evaluates forgetting on its holdout after snapshots.
    produce(stack, stage_b)
    new_classes = f'perennial_trainer_new_classes_total{{adapter="{ADAPTER}"}}'
    wait_for(lambda: value(prometheus, new_classes) >= 8, 240, "the new classes counted")
    wait_for(
        lambda: value(prometheus, f'perennial_trainer_stages{{adapter="{ADAPTER}"}}') >= 2,
        240,
        "a second class-arrival stage in the accuracy matrix",
    )
    ids = query(client, reference_queries[:40])
    label_of = {g.text: g.label for glosses in split.test.values() for g in glosses}
    for prediction_id, text in zip(ids, reference_queries[:40], strict=True):
        answer = {"prediction_id": prediction_id, "label": label_of[text]}
        stack["producer"].send(stack["feedback_topic"], value=json.dumps(answer).encode())
    stack["producer"].flush()
    joined = f'perennial_trainer_feedback_joined_total{{adapter="{ADAPTER}"}}'
    wait_for(lambda: value(prometheus, joined) >= 40, 120, "the feedback joined and scraped")

    # 4. Every panel's every query has data; so has every rule.
    panels, annotations = dashboard_queries()
    queries = {**panels, **{f"rule: {expr}": expr for expr in rule_signals()}}
    deadline, missing = time.monotonic() + 90, list(queries)
    while missing and time.monotonic() < deadline:  # slow series (rates over windows) fill in
        missing = [name for name in missing if not prometheus.query(queries[name])]
        time.sleep(1.0 if missing else 0)
    assert missing == [], f"{len(missing)} of {len(queries)} queries return no data: {missing}"
    # Annotations mark events: over the run, each must have marked at least one.
    unmarked = annotations
    deadline = time.monotonic() + 60
    while unmarked and time.monotonic() < deadline:
        unmarked = [
            expr for expr in unmarked if not prometheus.query_range(expr, started, time.time(), 1)
        ]
        time.sleep(1.0 if unmarked else 0)
    assert unmarked == []
    unhealthy = [
        (r["name"], r.get("lastError"))
        for g in prometheus.rules()
        for r in g["rules"]
        if r["health"] != "ok"
    ]
    assert unhealthy == []

    # 5. Everything both services wrote (stdout and stderr share one file each) is JSON lines,
    # shutdown included: no progress bar, no plain-text warning, no repr.
    for service, name in ((stack["trainer"], "trainer.log"), (stack["inference"], "inference.log")):
        service.stop()
        lines = (tmp_path / name).read_text().splitlines()
        assert len(lines) > 5, name
        not_json = [line for line in lines if not _is_json_object(line)]
        assert not_json == [], f"{name}: {len(not_json)} lines are not JSON: {not_json[:5]}"
        assert not [e for e in map(json.loads, lines) if "log_error" in e], name


def _is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def _epoch(rfc3339: str) -> float:
    return datetime.fromisoformat(
        re.sub(r"(\.\d{6})\d*", r"\1", rfc3339).replace("Z", "+00:00")
    ).timestamp()

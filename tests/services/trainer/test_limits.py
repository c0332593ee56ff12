"""The trainer core in-process (tiny backbone, real Redis and broker): fall-back from corrupted
snapshots, adapter eviction, the class limit and the watchdog (issue 12)."""

from __future__ import annotations

import threading
import time

import pytest
from grpc_health.v1 import health, health_pb2
from kafka import KafkaConsumer, KafkaProducer
from prometheus_client import CollectorRegistry

from perennial.codec import Example
from perennial.learners import LearnerConfig
from perennial_dev.localstack import create_topics
from services.trainer.control import set_health
from services.trainer.deadletter import DeadLetters
from services.trainer.liveness import Watchdog
from services.trainer.worker import Incoming, Trainer
from tests.services.inference.test_corruption import CASES, _corrupt
from tests.services.trainer.conftest import in_process_trainer
from tests.services.trainer.test_worker import TEXTS, Sent


@pytest.fixture
def make_trainer(redis_client, tiny_backbone):
    def make(learner: str = "simplecil", **overrides) -> tuple[Trainer, CollectorRegistry]:
        registry = CollectorRegistry()
        config = LearnerConfig(learner=learner, seed=0)
        trainer = in_process_trainer(
            redis_client, tiny_backbone, config, Sent(), registry, **overrides
        )
        return trainer, registry

    return make


def feed(trainer: Trainer, labels: list[str], start: int = 0, adapter: str = "ad") -> int:
    """Hand records over as the poll loop would: after any seek it was asked for, new epoch."""
    epoch = trainer.take_rewinds().get("t:0", (trainer._epochs.get("t:0", 0), None))[0]
    records = [
        Incoming(
            "t:0",
            start + i,
            Example(adapter, str(start + i), TEXTS[label][i % 4], label, 1.0),
            epoch=epoch,
        )
        for i, label in enumerate(labels)
    ]
    trainer.deliver(records)
    trainer.work_once(timeout=0)
    return start + len(records)


STREAM = ["animal", "plant", "artifact", "animal"] * 6  # 24 records


@pytest.mark.parametrize("case", CASES)
def test_a_corrupted_latest_falls_back_and_re_reads_exactly_once(case, make_trainer, redis_client):
    first, _ = make_trainer()
    feed(first, STREAM)  # snapshots at 8, 16, 24
    store = first.store
    v8, v16, v24 = store.versions("ad")
    reason = _corrupt(redis_client, "ad", v24, case)

    second, registry = make_trainer()  # a restart: the records since the commit come again
    feed(second, STREAM[16:], start=16)
    assert second.take_rewinds() == {"t:0": (1, 16)}  # back to v16's offsets
    assert (
        registry.get_sample_value("perennial_trainer_snapshot_fallbacks_total", {"adapter": "ad"})
        == 1
    )
    assert (
        registry.get_sample_value("perennial_trainer_corrupt_snapshots_total", {"reason": reason})
        == 1
    )
    assert store.pointer("ad", "latest") == v24  # not superseded until the re-read is done
    assert second.safe_offsets()["t:0"] <= 16  # nothing past the fall-back is committed

    second._epochs["t:0"] = 1  # the poll loop seeked: records come again from 16
    feed(second, STREAM[16:], start=16)
    second.snapshot_all()
    latest = store.latest("ad")
    assert latest.parent == v16 and latest.examples == 24 and latest.sequence > 3
    assert latest.offsets == {"t:0": 24}
    assert second.safe_offsets()["t:0"] == 24
    fell_back = [e for _, _, e in second.events._send if e.WhichOneof("kind") == "fell_back"]
    assert fell_back[0].fell_back.corrupted == v24 and fell_back[0].fell_back.version == v16


def test_every_version_corrupted_starts_over_from_the_stream(make_trainer, redis_client):
    first, _ = make_trainer()
    feed(first, STREAM[:8])
    [v8] = first.store.versions("ad")
    _corrupt(redis_client, "ad", v8, "manifest not JSON")
    second, _ = make_trainer()
    feed(second, STREAM[8:16], start=8)
    assert second.take_rewinds() == {"t:0": (1, 0)}
    second._epochs["t:0"] = 1
    feed(second, STREAM[:16])
    second.snapshot_all()
    latest = second.store.latest("ad")
    assert latest.examples == 16 and latest.parent is None and latest.sequence == 2


def test_idle_adapters_are_evicted_to_their_snapshot_and_reloaded(make_trainer):
    trainer, registry = make_trainer(max_adapters=2)
    offset = 0
    for _ in range(2):
        for adapter in ("a1", "a2", "a3", "a4", "a5"):
            offset = feed(trainer, ["animal", "plant", "animal", "plant"], offset, adapter)
            assert len(trainer.adapters) <= 2
    trainer.snapshot_all()
    for adapter in ("a1", "a2", "a3", "a4", "a5"):
        latest = trainer.store.latest(adapter)
        assert latest.examples == 8, adapter  # 4 per round, each applied once
    assert registry.get_sample_value("perennial_trainer_adapter_evictions_total") >= 8
    assert registry.get_sample_value("perennial_trainer_resident_adapters") <= 2


def read_records(bootstrap: str, topic: str, count: int) -> list:
    """The first `count` records of `topic` (fewer if they do not come within 10 s)."""
    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=10_000
    )
    records = [record for record, _ in zip(consumer, range(count), strict=False)]
    consumer.close()
    return records


def test_labels_beyond_the_class_limit_are_dead_letters(make_trainer, kafka_broker):
    topic = f"dlq-{time.monotonic_ns()}"
    create_topics(kafka_broker.bootstrap, {topic: 1})
    trainer, registry = make_trainer(max_classes=2)
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
    trainer.dead_letters = DeadLetters(producer, topic, 512 * 1024, trainer.metrics, trainer.events)
    feed(trainer, ["animal", "plant", "artifact", "animal"] * 2)
    trainer.snapshot_all()
    latest = trainer.store.latest("ad")
    assert set(latest.class_counts) == {"animal", "plant"} and latest.offsets == {"t:0": 8}
    dead = read_records(kafka_broker.bootstrap, topic, 2)
    producer.close()
    assert [dict(r.headers)["perennial.error.class"] for r in dead] == [b"TooManyClasses"] * 2
    assert [int(dict(r.headers)["perennial.source.offset"]) for r in dead] == [2, 6]
    assert (
        registry.get_sample_value(
            "perennial_trainer_records_dead_lettered_total", {"reason": "TooManyClasses"}
        )
        == 2
    )


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_watchdog_reports_a_dead_or_stalled_training_thread(make_trainer, monkeypatch):
    trainer, registry = make_trainer()
    servicer = health.HealthServicer()
    set_health(servicer, True)

    def status():
        request = health_pb2.HealthCheckRequest()
        return servicer.Check(request, None).status

    stop = threading.Event()
    thread = threading.Thread(target=trainer.run, args=(stop,), daemon=True)
    watchdog = Watchdog(
        {"training": (thread.is_alive, lambda: trainer.heartbeat)},
        stall_seconds=1.0,
        metrics=trainer.metrics,
        set_serving=lambda serving: set_health(servicer, serving),
    )
    thread.start()
    assert watchdog.check() and status() == health_pb2.HealthCheckResponse.SERVING

    # stalled: the thread is alive but its loop stops coming round
    release = threading.Event()
    monkeypatch.setattr(trainer, "_train_ready", lambda: release.wait(30))
    time.sleep(1.5)
    assert not watchdog.check() and status() == health_pb2.HealthCheckResponse.NOT_SERVING
    assert registry.get_sample_value("perennial_trainer_stalled", {"thread": "training"}) == 1
    release.set()
    monkeypatch.undo()
    time.sleep(0.5)
    assert watchdog.check() and status() == health_pb2.HealthCheckResponse.SERVING

    # dead: an exception ends the thread
    def boom():
        raise RuntimeError("a bug in the training loop")

    monkeypatch.setattr(trainer, "_train_ready", boom)
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert not watchdog.check() and status() == health_pb2.HealthCheckResponse.NOT_SERVING
    assert registry.get_sample_value("perennial_trainer_stalled", {"thread": "training"}) == 1
    stop.set()


def test_lag_counts_records_held_in_memory(make_trainer):
    trainer, _ = make_trainer()
    feed(trainer, ["animal", "plant"])  # 2 < batch size: held in memory, not learned
    assert trainer.held("t:0") == 2
    feed(trainer, ["animal", "plant"], start=2)  # a batch of 4: learned
    assert trainer.held("t:0") == 0


def test_a_corrupted_head_does_not_stop_the_guardrail(make_trainer, redis_client):
    trainer, registry = make_trainer(holdout_every=2, holdout_per_class=4, guardrail_min_holdout=1)
    offset = feed(trainer, ["animal", "plant"] * 4)
    head = trainer.store.head("ad")
    _corrupt(redis_client, "ad", head.version, "garbage blob, real sha256")
    feed(trainer, ["animal", "plant"] * 8, start=offset)  # snapshots judge against the head
    assert trainer.store.head("ad").version != head.version  # promoted, the thread lives on
    assert registry.get_sample_value(
        "perennial_trainer_corrupt_snapshots_total", {"reason": "checksum"}
    )

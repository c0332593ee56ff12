"""Scale-out on the real local stack (issue 12): trainers in one consumer group over six
partitions with one killed and one added mid-stream, fencing of a trainer paused across a
rebalance, two inference replicas converging, and a Redis Sentinel failover.

The point is plumbing, so the services run the tiny backbone with the SimpleCIL learner
(small snapshots); every example is still checked to be applied exactly once.
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import numpy as np
import pytest
import redis
import tritonclient.grpc as triton
from kafka import KafkaProducer

from perennial import codec
from perennial.store import SnapshotStore
from perennial_dev.launch import Service, start_inference, start_trainer
from perennial_dev.localstack import create_topics, start_redis, start_sentinel
from tests.helpers import metric, wait_for

pytestmark = pytest.mark.e2e
LABELS = ("animal", "plant", "artifact")
FAST = {
    "PERENNIAL_LEARNER": "simplecil",
    "PERENNIAL_BATCH_SIZE": 4,
    "PERENNIAL_BATCH_WAIT_SECONDS": 0.5,
    "PERENNIAL_SNAPSHOT_EVERY_EXAMPLES": 16,
    "PERENNIAL_SNAPSHOT_EVERY_SECONDS": 1,
    "PERENNIAL_HOLDOUT_EVERY": 0,
    "PERENNIAL_RETAIN_VERSIONS": 10_000,  # keep every version: the whole lineage is checked
}


class Cluster:
    """A test's topics, its producer and the services it started."""

    def __init__(self, bootstrap: str, redis_url: str, workdir, partitions: int, backbone) -> None:
        suffix = uuid.uuid4().hex[:8]
        self.bootstrap, self.redis_url, self.workdir = bootstrap, redis_url, workdir
        self.topic = f"examples.{suffix}"
        self.settings = {
            "PERENNIAL_TOPIC": self.topic,
            "PERENNIAL_DEAD_LETTER_TOPIC": f"{self.topic}.dlq",
            "PERENNIAL_EVENTS_TOPIC": f"{self.topic}.events",
            "PERENNIAL_GROUP_ID": f"group-{suffix}",
            "PERENNIAL_BACKBONE_PATH": backbone,
            **FAST,
        }
        create_topics(
            bootstrap, {self.topic: partitions, f"{self.topic}.dlq": 1, f"{self.topic}.events": 1}
        )
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
        self.sent: dict[str, int] = {}
        self.services: list[Service] = []

    def trainer(self, name: str, **settings) -> Service:
        service = start_trainer(
            self.workdir,
            bootstrap=self.bootstrap,
            redis_url=self.redis_url,
            log_name=f"{name}.log",
            **{**self.settings, **settings},
        )
        self.services.append(service)
        return service

    def inference(self, name: str, **settings) -> Service:
        service = start_inference(
            self.workdir,
            redis_url=self.redis_url,
            log_name=f"{name}.log",
            PERENNIAL_BACKBONE_PATH=self.settings["PERENNIAL_BACKBONE_PATH"],
            PERENNIAL_RECONCILE_SECONDS=2,
            **settings,
        )
        self.services.append(service)
        return service

    def send(self, adapters: list[str], per_adapter: int) -> None:
        for adapter in adapters:
            start = self.sent.get(adapter, 0)
            for i in range(start, start + per_adapter):
                example = codec.Example(
                    adapter, str(i), f"text {i} about {LABELS[i % 3]}", LABELS[i % 3], 1.7e9 + i
                )
                self.producer.send(self.topic, key=adapter.encode(), value=codec.encode(example))
            self.sent[adapter] = start + per_adapter
        self.producer.flush()

    def progress(self, store: SnapshotStore, trainers: list[Service]) -> dict:
        """What a failed wait saw: adapters behind, and each live trainer's lag and back-pressure."""
        behind = {}
        for adapter, count in self.sent.items():
            latest = store.latest(adapter)
            if latest is None or latest.examples != count:
                behind[adapter] = (
                    latest.examples if latest else None,
                    count,
                    latest and latest.offsets,
                )
        lag = {
            t.process.name + str(i): (
                metric(t, "perennial_trainer_consumer_lag_records"),
                metric(t, "perennial_trainer_backpressure"),
                metric(t, "perennial_trainer_stalled"),
            )
            for i, t in enumerate(trainers)
            if t.process.alive
        }
        return {"behind": behind, "lag, backpressure, stalled": lag}

    def close(self) -> None:
        self.producer.close()
        for service in self.services:
            if service.process.alive:
                service.stop()


def applied_exactly_once(store: SnapshotStore, sent: dict[str, int]) -> dict[str, int]:
    """Every adapter's newest snapshot holds each example once; its lineage never forked."""
    versions = {}
    for adapter, count in sent.items():
        latest = store.latest(adapter)
        assert latest is not None and latest.examples == count, (adapter, latest, count)
        expected = {
            label: sum(1 for i in range(count) if LABELS[i % 3] == label) for label in LABELS
        }
        assert latest.class_counts == expected, adapter
        chain = [store.manifest(adapter, v) for v in store.versions(adapter)]
        for parent, child in zip(chain, chain[1:], strict=False):
            assert child.parent == parent.version, (
                f"{adapter}: the lineage forked at {child.version}"
            )
            assert child.examples >= parent.examples
        versions[adapter] = len(chain)
    return versions


def served_version(service: Service, adapter: str) -> str:
    text = triton.InferInput("text", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"text about a plant"], dtype=np.object_))
    try:
        reply = triton.InferenceServerClient(service.grpc_address).infer(adapter, [text])
    except Exception:  # noqa: BLE001 - not served yet, or Redis failing over
        return ""
    return reply.get_response().model_version


@pytest.fixture
def cluster(kafka_broker, redis_server, tmp_path, tiny_backbone_dir):
    made = []

    def make(partitions: int = 6, redis_url: str | None = None) -> Cluster:
        made.append(
            Cluster(
                kafka_broker.bootstrap,
                redis_url or redis_server.url,
                tmp_path,
                partitions,
                tiny_backbone_dir,
            )
        )
        return made[-1]

    yield make
    for cluster in made:
        cluster.close()


def test_three_trainers_one_killed_one_added_apply_every_example_once(cluster, redis_client):
    """6 partitions, 24 adapters, 3 trainers; kill -9 one mid-stream and add a fourth;
    two inference replicas converge on every adapter's head."""
    stack = cluster(partitions=6)
    adapters = [f"tenant-{i:02d}" for i in range(24)]
    trainers = [stack.trainer(f"trainer-{i}") for i in range(3)]
    replicas = [stack.inference(f"inference-{i}") for i in range(2)]
    store = SnapshotStore(redis_client)

    started = time.monotonic()
    stack.send(adapters, 20)
    wait_for(
        lambda: (
            sum(metric(t, "perennial_trainer_examples_consumed_total") for t in trainers) >= 160
        ),
        180,
        "the three trainers to learn a third of the first wave",
    )
    working = [t for t in trainers if metric(t, "perennial_trainer_examples_consumed_total") > 0]
    assert len(working) >= 2, "the partitions were not spread over the trainers"
    working[0].process.kill()  # kill -9 mid-stream: its partitions move to the others
    stack.send(adapters, 20)
    added = stack.trainer("trainer-3")  # added mid-stream: the group rebalances again
    trainers.append(added)
    wait_for(
        lambda: "perennial_trainer_consumer_lag_records{" in added.scrape(),
        120,
        "the added trainer to be assigned partitions",
    )
    stack.send(adapters, 20)
    wait_for(
        lambda: all(
            (m := store.latest(a)) is not None and m.examples == stack.sent[a] for a in adapters
        ),
        300,
        "every adapter's snapshot to hold its 60 examples",
        seen=lambda: stack.progress(store, trainers),
    )
    elapsed = time.monotonic() - started
    lineages = applied_exactly_once(store, stack.sent)
    print(
        f"scale-out: {sum(stack.sent.values())} examples of {len(adapters)} adapters over 6 "
        f"partitions in {elapsed:.0f} s with a kill and an added trainer; "
        f"{sum(lineages.values())} versions, consumed per trainer "
        f"{[metric(t, 'perennial_trainer_examples_consumed_total') for t in trainers]}"
    )
    assert sum(lineages.values()) >= len(adapters) * 2
    assert metric(added, "perennial_trainer_examples_consumed_total") > 0
    for adapter in adapters[:6]:
        head = store.head(adapter).version
        wait_for(
            lambda adapter=adapter, head=head: all(
                served_version(r, adapter) == head for r in replicas
            ),
            60,
            f"both inference replicas to serve {adapter} {head}",
        )


def test_a_trainer_paused_across_a_rebalance_has_its_writes_rejected(cluster, redis_client):
    """SIGSTOP a trainer holding learned-but-unsnapshotted examples until the group gives its
    partition to another; once resumed, its snapshot is fenced out and nothing is lost."""
    stack = cluster(partitions=1)
    slow = {"PERENNIAL_SNAPSHOT_EVERY_EXAMPLES": 32, "PERENNIAL_SNAPSHOT_EVERY_SECONDS": "inf"}
    store = SnapshotStore(redis_client)
    first = stack.trainer("paused", **slow)
    stack.send(["fenced"], 40)  # snapshot at 32, then 8 learned and not yet snapshotted
    wait_for(
        lambda: metric(first, "perennial_trainer_examples_consumed_total") == 40,
        120,
        "the first trainer to learn 40 examples",
    )
    assert store.latest("fenced").examples == 32
    os.kill(first.process.pid, signal.SIGSTOP)
    try:
        second = stack.trainer("taker", **slow)  # joins; the stopped one's session expires
        stack.send(["fenced"], 24)
        wait_for(
            lambda: store.latest("fenced").examples == 64,
            120,
            "the second trainer to take the partition and snapshot 64 examples",
        )
    finally:
        os.kill(first.process.pid, signal.SIGCONT)
    wait_for(
        lambda: metric(first, "perennial_trainer_snapshots_fenced_total", adapter="fenced") >= 1,
        60,
        "the resumed trainer's stale write to be rejected",
    )
    assert store.latest("fenced").examples == 64  # its 40 did not overwrite the 64
    stack.send(["fenced"], 32)
    wait_for(
        lambda: store.latest("fenced").examples == 96, 120, "the stream to go on after the fence"
    )
    applied_exactly_once(store, stack.sent)
    assert metric(second, "perennial_trainer_snapshots_fenced_total") == 0


def test_redis_sentinel_failover_mid_stream_loses_nothing(cluster, tmp_path):
    """Master + replica + Sentinel; the master is killed mid-stream; the trainer and the
    inference service follow the promoted replica and every example is in a snapshot."""
    master = start_redis(tmp_path / "master")
    replica = start_redis(tmp_path / "replica", replica_of=master.port)
    sentinel = start_sentinel(tmp_path / "sentinel", master.port)
    try:
        via_sentinel = {"PERENNIAL_REDIS_SENTINELS": sentinel.address, "PERENNIAL_REDIS_URL": ""}
        stack = cluster(partitions=2, redis_url=master.url)
        trainer = stack.trainer("trainer", **via_sentinel, PERENNIAL_REDIS_WAIT_REPLICAS=1)
        inference = stack.inference("inference", **via_sentinel)
        adapters = ["fail-a", "fail-b", "fail-c", "fail-d"]
        stack.send(adapters, 30)
        store = SnapshotStore(redis.Redis.from_url(master.url))
        wait_for(
            lambda: all(store.latest(a) and store.latest(a).examples >= 16 for a in adapters),
            120,
            "snapshots on the first master",
        )
        stack.send(adapters, 30)  # in flight while the master dies
        master.kill()
        killed = time.monotonic()
        promoted = SnapshotStore(redis.Redis.from_url(replica.url))
        wait_for(lambda: _role(promoted.redis) == "master", 60, "Sentinel to promote the replica")
        promoted_after = time.monotonic() - killed
        stack.send(adapters, 30)
        wait_for(
            lambda: all(
                (m := promoted.latest(a)) is not None and m.examples == stack.sent[a]
                for a in adapters
            ),
            180,
            "every example in a snapshot on the new master",
        )
        caught_up_after = time.monotonic() - killed
        applied_exactly_once(promoted, stack.sent)
        assert trainer.process.alive and inference.process.alive
        print(
            f"failover: replica promoted {promoted_after:.1f} s after the master was killed; "
            f"all {sum(stack.sent.values())} examples in snapshots on it {caught_up_after:.1f} s "
            f"after; {metric(trainer, 'perennial_trainer_dependency_errors_total')} Redis errors "
            "retried"
        )
        for adapter in adapters:
            head = promoted.head(adapter).version
            wait_for(
                lambda adapter=adapter, head=head: served_version(inference, adapter) == head,
                60,
                f"inference to serve {adapter} {head} from the new master",
            )
    finally:
        for server in (sentinel, replica, master):
            if server.alive:
                server.stop()


def _role(client: redis.Redis) -> str | None:
    """The instance's replication role; None while Sentinel's failover closes the connections
    of normal clients (it sends CLIENT KILL TYPE normal with the promotion)."""
    try:
        return client.info("replication")["role"]
    except redis.ConnectionError:
        return None

"""The trainer as a process on the real broker and Redis: dead letters, control API, crash safety."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys

import grpc
import pytest
import redis
from kafka import KafkaConsumer

from perennial import codec
from perennial.store import SnapshotStore, from_safetensors
from perennial.v1 import events_pb2, trainer_pb2, trainer_pb2_grpc
from tests.helpers import metric, stays_alive, wait_for
from tests.services.trainer.conftest import DETERMINISTIC, LABELS, Stream, examples

pytestmark = pytest.mark.e2e


def consume_all(bootstrap: str, topic: str, count: int) -> list:
    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=10_000
    )
    records = [record for record, _ in zip(consumer, range(count), strict=False)]
    consumer.close()
    return records


def test_bad_records_go_to_the_dead_letter_topic_and_valid_ones_around_them_are_learned(stream):
    trainer = stream.trainer(**DETERMINISTIC, PERENNIAL_MAX_RECORD_BYTES=64 * 1024)
    good = iter(codec.encode(e) for e in examples(stream.adapter, 16))
    bad = {
        "MalformedJson": b'{"adapter": ',
        "EmptyRecord": b"",
        "InvalidAdapter": b'{"adapter": "Not Valid!", "text": "t", "label": "l", "event_time": 1}',
        "MissingLabel": b'{"adapter": "%s", "text": "t", "event_time": 1}'
        % stream.adapter.encode(),
        "MissingInput": b'{"adapter": "%s", "label": "l", "event_time": 1}'
        % stream.adapter.encode(),
        "TextTooLong": codec.encode_json(codec.Example(stream.adapter, "x", "y" * 5000, "l", 1.0)),
        "InvalidField": b'{"adapter": "%s", "text": "t", "label": "l", "event_time": "soon"}'
        % stream.adapter.encode(),
        "UnsupportedInput": b'{"adapter": "%s", "tensor": {}, "label": "l", "event_time": 1}'
        % stream.adapter.encode(),
        "RecordTooLarge": b"{" + b" " * (100 * 1024) + b"}",
    }
    random_bytes = random.Random(7).randbytes(64)
    values = []
    for payload in [*bad.values(), random_bytes]:
        values += [next(good), payload]
    values += list(good)  # 16 valid records in all, interleaved with 10 bad ones
    stream.send(values)
    stream.send([codec.encode(examples(stream.adapter, 1)[0])], key=b"someone-else")  # KeyMismatch
    dead = consume_all(stream.bootstrap, f"{stream.topic}.dlq", len(bad) + 2)
    reasons = [dict(r.headers)["perennial.error.class"].decode() for r in dead]
    assert reasons[: len(bad)] == list(bad) and reasons[-1] == "KeyMismatch"
    assert dead[len(bad)].value == random_bytes  # unchanged
    expected_offsets = [values.index(payload) for payload in [*bad.values(), random_bytes]] + [
        len(values)
    ]
    for record, offset in zip(dead, expected_offsets, strict=True):
        headers = dict(record.headers)
        assert headers["perennial.source.topic"].decode() == stream.topic
        assert int(headers["perennial.source.offset"]) == offset
        assert headers["perennial.error.message"]
    wait_for(
        lambda: metric(trainer, "perennial_trainer_examples_consumed_total") == 16,
        60,
        "16 valid examples",
    )
    assert metric(trainer, "perennial_trainer_records_dead_lettered_total") == len(bad) + 2


def test_control_api_needs_the_token_and_the_cli_drives_it(stream):
    trainer = stream.trainer(**DETERMINISTIC, PERENNIAL_AUTH_TOKEN="s3cret")
    stream.send([codec.encode(e) for e in examples(stream.adapter, 40)])
    store = SnapshotStore(redis.Redis.from_url(stream.redis_url))
    wait_for(lambda: store.latest(stream.adapter), 60, "the first snapshot")
    stub = trainer_pb2_grpc.TrainerStub(grpc.insecure_channel(trainer.grpc_address))
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetStatus(trainer_pb2.GetStatusRequest())
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetStatus(trainer_pb2.GetStatusRequest(), metadata=[("authorization", "Bearer wrong")])
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    token = [("authorization", "Bearer s3cret")]
    status = stub.GetStatus(trainer_pb2.GetStatusRequest(adapter=stream.adapter), metadata=token)
    assert status.adapters[0].adapter == stream.adapter and status.partitions == [
        f"{stream.topic}:0"
    ]

    def cli(*args):  # the connection option after the command, as an operator may type it
        env = {**os.environ, "PERENNIAL_AUTH_TOKEN": "s3cret"}
        return subprocess.run(
            [sys.executable, "-m", "perennial.cli", *args, "--target", trainer.grpc_address],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )

    snapshot = cli("snapshot", stream.adapter)
    assert snapshot.returncode == 0, snapshot.stderr
    versions = cli("versions", stream.adapter)
    assert versions.returncode == 0 and store.latest(stream.adapter).version in versions.stdout
    newest = json.loads(cli("versions", stream.adapter, "-o", "json").stdout)["versions"][0]
    assert newest["version"] == store.latest(stream.adapter).version and newest["candidate"]
    first = store.versions(stream.adapter)[0]
    rollback = cli("rollback", stream.adapter, first)
    assert rollback.returncode == 0, rollback.stderr
    assert store.head(stream.adapter).version == first
    paused = cli("pause", stream.adapter)
    assert paused.returncode == 0 and "yes" in paused.stdout
    assert json.loads(cli("resume", stream.adapter, "-o", "json").stdout)["paused"] is False
    missing = cli("rollback", stream.adapter, "v999999-none")
    assert missing.returncode == 1 and missing.stderr.startswith("perennial: NOT_FOUND: ")
    events = consume_all(stream.bootstrap, f"{stream.topic}.events", 3)
    kinds = {events_pb2.Event.FromString(e.value).WhichOneof("kind") for e in events}
    assert "snapshot_published" in kinds


def test_crash_test_ten_kills_give_the_weights_of_an_uninterrupted_run(stream):
    """kill -9 at random moments, ten times, during one stream: same final weights, no offset twice."""
    total = 320  # 40 batches of 8, snapshots every 32 examples
    stream.send([codec.encode(e) for e in examples(stream.adapter, total)])
    store = SnapshotStore(redis.Redis.from_url(stream.redis_url))
    rng = random.Random(1234)
    kills = 0
    while kills < 10:
        trainer = stream.trainer(**DETERMINISTIC)
        done = store.latest(stream.adapter).examples if store.latest(stream.adapter) else 0
        target = min(total, done + rng.randint(1, 40))  # a random moment past the last snapshot
        wait_for(
            lambda trainer=trainer, done=done, target=target: (
                metric(trainer, "perennial_trainer_examples_consumed_total") + done >= target
                or (store.latest(stream.adapter) and store.latest(stream.adapter).examples == total)
            ),
            120,
            f"progress to {target}",
        )
        trainer.process.kill()
        kills += 1
    trainer = stream.trainer(**DETERMINISTIC)
    wait_for(
        lambda: store.latest(stream.adapter) and store.latest(stream.adapter).examples == total,
        180,
        "the stream's end",
    )
    trainer.stop()

    crashed = store.latest(stream.adapter)
    chain = [store.manifest(stream.adapter, v) for v in store.versions(stream.adapter)]
    assert [m.examples for m in chain] == list(
        range(32, total + 1, 32)
    )  # every offset once, in order
    assert all(m.offsets == {f"{stream.topic}:0": m.examples} for m in chain)

    # the same stream, uninterrupted, under another adapter id (same seed, same batches)
    clean = Stream(stream.bootstrap, stream.redis_url, stream.workdir)
    clean.runs = stream.runs
    try:
        clean.send([codec.encode(e) for e in examples(clean.adapter, total)])
        clean.trainer(**DETERMINISTIC)
        wait_for(
            lambda: store.latest(clean.adapter) and store.latest(clean.adapter).examples == total,
            180,
            "the uninterrupted run",
        )
        reference = store.latest(clean.adapter)
    finally:
        clean.close()
    assert crashed.sha256 == reference.sha256  # bit-identical weights, optimizer state and counters
    tensors, _ = from_safetensors(store.fetch(stream.adapter, crashed.version)[1])
    assert tensors  # a real blob, not an empty one


def test_redis_and_broker_away_for_30_seconds_lose_nothing(stream, kafka_broker, redis_server):
    trainer = stream.trainer(**DETERMINISTIC)
    store = SnapshotStore(redis.Redis.from_url(stream.redis_url))
    stream.send([codec.encode(e) for e in examples(stream.adapter, 64)])
    wait_for(
        lambda: store.latest(stream.adapter) and store.latest(stream.adapter).examples == 64,
        120,
        "64",
    )

    os.kill(redis_server.process.pid, signal.SIGSTOP)  # Redis hangs: every call times out
    try:
        stream.send([codec.encode(e) for e in examples(stream.adapter, 64, start=64)])
        wait_for(
            lambda: (
                metric(trainer, "perennial_trainer_dependency_errors_total", dependency="redis") > 0
            ),
            60,
            "the trainer to notice Redis is away",
        )
        stays_alive(trainer, 30)
    finally:
        os.kill(redis_server.process.pid, signal.SIGCONT)
    wait_for(
        lambda: store.latest(stream.adapter).examples == 128, 120, "recovery after Redis returns"
    )

    os.kill(kafka_broker.process.pid, signal.SIGSTOP)  # the broker hangs
    try:
        stays_alive(trainer, 30)
    finally:
        os.kill(kafka_broker.process.pid, signal.SIGCONT)
    stream.send([codec.encode(e) for e in examples(stream.adapter, 64, start=128)])
    wait_for(
        lambda: store.latest(stream.adapter).examples == 192,
        120,
        "recovery after the broker returns",
    )
    chain = [store.manifest(stream.adapter, v) for v in store.versions(stream.adapter)]
    assert all(m.offsets == {f"{stream.topic}:0": m.examples} for m in chain)


def test_poison_pills_are_dead_letters_and_the_stream_goes_on_without_a_restart(stream):
    """Each record that used to kill the trainer (and crash-loop it) is dead-lettered with its
    reason; the valid records around them are learned by the same process (issue 12)."""
    trainer = stream.trainer(
        **{
            **DETERMINISTIC,
            "PERENNIAL_BATCH_WAIT_SECONDS": 0.5,
            "PERENNIAL_SNAPSHOT_EVERY_SECONDS": 1,
        },
        PERENNIAL_MAX_CLASSES=3,
    )
    pid = trainer.process.pid
    adapter = stream.adapter.encode()
    huge = b'{"adapter": "%s", "text": "%s", "label": "l", "event_time": 1}' % (
        adapter,
        b"y" * (1536 * 1024),
    )
    pills = {
        "over 1 MiB (beyond the dead-letter producer's request limit)": (huge, "RecordTooLarge"),
        "400-digit event_time": (
            b'{"adapter": "%s", "text": "t", "label": "l", "event_time": %s}'
            % (adapter, b"9" * 400),
            "InvalidTime",
        ),
        "100k-deep JSON array": (b"[" * 100_000 + b"]" * 100_000, "TooDeep"),
        "100k-deep array inside an object": (
            b'{"adapter": "%s", "text": ' % adapter + b"[" * 100_000 + b"]" * 100_000 + b"}",
            "TooDeep",
        ),
        "adapter id with a trailing newline": (
            b'{"adapter": "evil\\n", "text": "t", "label": "l", "event_time": 1}',
            "InvalidAdapter",
        ),
        "event_time 1e999 (infinity)": (
            b'{"adapter": "%s", "text": "t", "label": "l", "event_time": 1e999}' % adapter,
            "InvalidTime",
        ),
        "event_time NaN": (
            b'{"adapter": "%s", "text": "t", "label": "l", "event_time": NaN}' % adapter,
            "InvalidTime",
        ),
        "event_time -1": (
            b'{"adapter": "%s", "text": "t", "label": "l", "event_time": -1}' % adapter,
            "InvalidTime",
        ),
        "label of 129 characters": (
            codec.encode_json(codec.Example(stream.adapter, "x", "t", "l" * 129, 1.0)),
            "LabelTooLong",
        ),
        "a fourth class beyond PERENNIAL_MAX_CLASSES=3": (
            codec.encode(codec.Example(stream.adapter, "x", "a new thing", "noun.person", 1.0)),
            "TooManyClasses",
        ),
    }
    good = iter(codec.encode(e) for e in examples(stream.adapter, 32))
    values = []
    for pill, _ in pills.values():
        values += [next(good), pill]
    values += list(good)  # 32 valid records in all, around 10 poison pills
    keys = [b"evil\n" if b'"evil\\n"' in v else adapter for v in values]
    for value, key in zip(values, keys, strict=True):
        stream.producer.send(stream.topic, key=key, value=value)
    stream.producer.flush()
    dead = consume_all(stream.bootstrap, f"{stream.topic}.dlq", len(pills))
    reasons = sorted(dict(r.headers)["perennial.error.class"].decode() for r in dead)
    assert reasons == sorted(reason for _, reason in pills.values())
    [truncated] = [r for r in dead if dict(r.headers).get("perennial.truncated") == b"true"]
    assert int(dict(truncated.headers)["perennial.original.bytes"]) == len(huge)
    assert truncated.value == huge[: len(truncated.value)] and len(truncated.value) < 1 << 20
    store = SnapshotStore(redis.Redis.from_url(stream.redis_url))
    wait_for(
        lambda: store.latest(stream.adapter) and store.latest(stream.adapter).examples == 32,
        120,
        "the 32 valid records in a snapshot",
    )
    assert trainer.process.alive and trainer.process.pid == pid  # no restart
    assert set(store.latest(stream.adapter).classes) == set(LABELS)
    assert not [a for a in store.adapters() if a.startswith("evil")]  # "evil\n" created nothing
    assert metric(trainer, "perennial_trainer_records_dead_lettered_total") == len(pills)


def test_a_trainer_restarted_on_a_corrupted_latest_falls_back_and_loses_nothing(stream):
    """Before issue 12 the trainer stayed SERVING, consumed nothing and showed no error."""
    store = SnapshotStore(redis.Redis.from_url(stream.redis_url))
    trainer = stream.trainer(**DETERMINISTIC)
    stream.send([codec.encode(e) for e in examples(stream.adapter, 64)])
    wait_for(
        lambda: store.latest(stream.adapter) and store.latest(stream.adapter).examples == 64,
        120,
        "64 examples in a snapshot",
    )
    trainer.stop()
    v32, v64 = store.versions(stream.adapter)
    store.redis.set(f"perennial:{{{stream.adapter}}}:blob:{v64}", b"garbage")  # sha256 now fails
    stream.send([codec.encode(e) for e in examples(stream.adapter, 32, start=64)])
    trainer = stream.trainer(**DETERMINISTIC)
    wait_for(
        lambda: store.latest(stream.adapter).examples == 96,
        120,
        "the re-read from v32 and the 32 new examples in one snapshot",
    )
    latest = store.latest(stream.adapter)
    assert latest.parent == v32 and latest.offsets == {f"{stream.topic}:0": 96}
    assert latest.class_counts == {label: 32 for label in LABELS}  # each example once
    assert metric(trainer, "perennial_trainer_snapshot_fallbacks_total") == 1
    assert metric(trainer, "perennial_trainer_corrupt_snapshots_total", reason="checksum") == 1
    events = consume_all(stream.bootstrap, f"{stream.topic}.events", 100)
    fell_back = [
        event.fell_back
        for event in (events_pb2.Event.FromString(e.value) for e in events)
        if event.WhichOneof("kind") == "fell_back"
    ]
    assert [(f.corrupted, f.version, f.reason) for f in fell_back] == [(v64, v32, "checksum")]

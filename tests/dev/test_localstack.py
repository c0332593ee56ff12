"""The local stack: real Redis and a real Kafka-compatible broker (Tansu) as child processes."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from perennial_dev import localstack
from perennial_dev.localstack import (
    FAST_GROUP_CONSUMER_CONFIG,
    KafkaBroker,
    LocalStack,
    ManagedProcess,
    create_topics,
    start_redis,
)

log = logging.getLogger(__name__)


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _pid_gone(pid: int) -> bool:
    """True if ``pid`` no longer exists, or is only a zombie waiting for a reaper."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _wait_until(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


# -- Redis ---------------------------------------------------------------------------


def test_redis_set_get(redis_client: redis.Redis) -> None:
    assert redis_client.dbsize() == 0
    assert redis_client.set("perennial:greeting", b"hello")
    assert redis_client.get("perennial:greeting") == b"hello"


def test_redis_is_flushed_between_tests(redis_client: redis.Redis) -> None:
    redis_client.set("leftover", b"1")
    redis_client.flushall()
    assert redis_client.dbsize() == 0


def test_start_redis_names_the_debian_package_when_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(localstack.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="Debian package `redis-server`"):
        start_redis(tmp_path)


def test_start_redis_on_a_busy_port_shows_the_log_tail(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match="exited with code 1") as excinfo:
            start_redis(tmp_path, port, timeout=20)
    assert "Address already in use" in str(excinfo.value)


# -- Kafka ---------------------------------------------------------------------------


def _consumer(bootstrap: str, group: str) -> KafkaConsumer:
    return KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **FAST_GROUP_CONSUMER_CONFIG,
    )


def _consume(
    consumer: KafkaConsumer, count: int, timeout: float
) -> tuple[list[ConsumerRecord], float]:
    """Poll until ``count`` records arrived; return them and the seconds until the first batch."""
    start = time.monotonic()
    deadline = start + timeout
    records: list[ConsumerRecord] = []
    first_batch: float | None = None
    while len(records) < count and time.monotonic() < deadline:
        # Long polls: a short poll timeout can make kafka-python redo a group join
        # (see the perennial_dev.localstack docstring); poll returns when records arrive.
        for batch in consumer.poll(timeout_ms=1000).values():
            if batch and first_batch is None:
                first_batch = time.monotonic() - start
            records.extend(batch)
    assert len(records) >= count, f"got {len(records)} of {count} records in {timeout}s"
    assert first_batch is not None
    return records, first_batch


def _assert_no_more(consumer: KafkaConsumer, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        extra = [r for batch in consumer.poll(timeout_ms=100).values() for r in batch]
        assert not extra, f"unexpected extra records: {extra}"


@pytest.mark.timeout(90)
def test_kafka_round_trip_with_group_commit_and_resume(kafka_broker: KafkaBroker) -> None:
    topic, group = _unique("roundtrip"), _unique("group")
    create_topics(kafka_broker.bootstrap, {topic: 2})
    create_topics(kafka_broker.bootstrap, {topic: 2})  # already exists: not an error
    partitions = [TopicPartition(topic, 0), TopicPartition(topic, 1)]

    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
    try:
        for i in range(10):
            producer.send(topic, key=b"k%d" % i, value=b"v%d" % i, partition=i % 2)
        producer.flush(timeout=10)

        consumer = _consumer(kafka_broker.bootstrap, group)
        consumer.subscribe([topic])
        records, join_seconds = _consume(consumer, 10, timeout=30)
        log.info("first group join + fetch took %.2fs", join_seconds)
        assert sorted(r.value for r in records) == sorted(b"v%d" % i for i in range(10))
        assert {r.partition for r in records} == {0, 1}
        assert consumer.assignment() == set(partitions)
        _assert_no_more(consumer, 0.3)
        consumer.commit()
        assert {tp: consumer.committed(tp) for tp in partitions} == {tp: 5 for tp in partitions}
        consumer.close()

        for i in range(10, 13):
            producer.send(topic, key=b"k%d" % i, value=b"v%d" % i, partition=i % 2)
        producer.flush(timeout=10)
    finally:
        producer.close()

    consumer = _consumer(kafka_broker.bootstrap, group)
    try:
        consumer.subscribe([topic])
        records, rejoin_seconds = _consume(consumer, 3, timeout=30)
        log.info("group rejoin + fetch took %.2fs", rejoin_seconds)
        _assert_no_more(consumer, 0.5)
        assert sorted(r.value for r in records) == [b"v10", b"v11", b"v12"]
        assert sorted((r.partition, r.offset) for r in records) == [(0, 5), (0, 6), (1, 5)]
    finally:
        consumer.close()


@pytest.mark.timeout(60)
def test_tansu_auto_creates_unknown_topics_with_default_partitions(
    kafka_broker: KafkaBroker,
) -> None:
    """Documents the finding in the localstack module docstring."""
    topic = _unique("autocreate")
    producer = KafkaProducer(bootstrap_servers=kafka_broker.bootstrap, acks="all")
    try:
        metadata = producer.send(topic, b"x").get(timeout=10)
    finally:
        producer.close()
    assert metadata.topic == topic
    with KafkaAdminClient(bootstrap_servers=kafka_broker.bootstrap) as admin:
        (described,) = admin.describe_topics([topic])
    assert described["error_code"] == 0
    # If this changes, update the module docstring of perennial_dev.localstack.
    assert len(described["partitions"]) == 4


# -- ManagedProcess ------------------------------------------------------------------

_SPAWN_GRANDCHILD = """
import subprocess, sys, time, pathlib
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
pathlib.Path(sys.argv[1]).write_text(str(child.pid))
time.sleep(120)
"""


def test_stop_leaves_no_process_in_the_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    process = ManagedProcess(
        [*_python(_SPAWN_GRANDCHILD), str(pid_file)], tmp_path / "parent.log", name="parent"
    )
    process.wait_ready(pid_file.exists, timeout=20, what="grandchild started")
    grandchild = int(pid_file.read_text())
    assert process.alive

    started = time.monotonic()
    assert process.stop() == -15
    assert time.monotonic() - started < 5
    assert not process.alive
    with pytest.raises(ProcessLookupError):
        os.kill(process.pid, 0)
    assert _wait_until(lambda: _pid_gone(grandchild), timeout=5), "grandchild survived stop()"
    assert process.stop() == -15  # idempotent


def test_stop_escalates_to_sigkill(tmp_path: Path) -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        "print('ignoring SIGTERM', flush=True); time.sleep(120)"
    )
    with ManagedProcess(_python(code), tmp_path / "stubborn.log") as process:
        log_path = process.log_path
        process.wait_ready(
            lambda: "ignoring SIGTERM" in log_path.read_text(), timeout=20, what="handler set"
        )
        started = time.monotonic()
        assert process.stop(timeout=0.5) == -9
        assert time.monotonic() - started < 5
    with pytest.raises(ProcessLookupError):
        os.kill(process.pid, 0)


def test_kill_is_sigkill(tmp_path: Path) -> None:
    with ManagedProcess(_python("import time; time.sleep(120)"), tmp_path / "k.log") as process:
        assert process.kill() == -9
        assert not process.alive


_FORGETFUL_PARENT = """
import sys
from pathlib import Path
from perennial_dev.localstack import ManagedProcess
child = ManagedProcess([sys.executable, "-c", "import time; time.sleep(120)"], Path(sys.argv[1]))
print(child.pid, flush=True)
raise SystemExit("crashed without stopping the child")
"""


def test_children_are_stopped_when_the_interpreter_exits(tmp_path: Path) -> None:
    result = subprocess.run(
        [*_python(_FORGETFUL_PARENT), str(tmp_path / "orphan.log")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    child = int(result.stdout.strip())
    assert _wait_until(lambda: _pid_gone(child), timeout=5), "child outlived its parent"


_TERMINATED_PARENT = """
import sys, time
from pathlib import Path
from perennial_dev.localstack import ManagedProcess
child = ManagedProcess([sys.executable, "-c", "import time; time.sleep(120)"], Path(sys.argv[1]))
print(child.pid, flush=True)
time.sleep(120)
"""


def test_children_are_stopped_when_the_parent_gets_sigterm(tmp_path: Path) -> None:
    """`kill <bench>` stops its servers too: SIGTERM becomes a normal exit."""
    parent = subprocess.Popen(
        [*_python(_TERMINATED_PARENT), str(tmp_path / "orphan.log")],
        stdout=subprocess.PIPE,
        text=True,
    )
    child = int(parent.stdout.readline().strip())
    parent.terminate()
    assert parent.wait(timeout=30) == 128 + 15
    assert _wait_until(lambda: _pid_gone(child), timeout=5), "child outlived its parent"


def test_wait_ready_raises_with_log_tail_when_process_exits(tmp_path: Path) -> None:
    code = "import sys; print('line one'); print('fatal: port is on fire', flush=True); sys.exit(3)"
    with ManagedProcess(_python(code), tmp_path / "doomed.log", name="doomed") as process:
        started = time.monotonic()
        with pytest.raises(RuntimeError) as excinfo:
            process.wait_ready(lambda: False, timeout=30, what="doomed service")
        assert time.monotonic() - started < 10  # noticed the exit, did not wait out the timeout
    message = str(excinfo.value)
    assert "doomed service" in message
    assert "exited with code 3" in message
    assert "fatal: port is on fire" in message
    assert "line one" in message


def test_wait_ready_times_out_with_log_tail(tmp_path: Path) -> None:
    code = "import time; print('still warming up', flush=True); time.sleep(120)"
    with ManagedProcess(_python(code), tmp_path / "slow.log", name="slow") as process:
        with pytest.raises(
            RuntimeError, match=r"still running but not ready after 0\.3s"
        ) as excinfo:
            process.wait_ready(lambda: False, timeout=0.3, what="slow service")
        assert process.alive  # the caller decides whether to stop it
        assert _wait_until(lambda: "still warming up" in process.log_tail(), timeout=10)
    assert "slow service" in str(excinfo.value)
    assert not process.alive


def test_wait_ready_treats_check_errors_as_not_ready(tmp_path: Path) -> None:
    calls = iter([ConnectionError("not yet"), ConnectionError("not yet"), True])

    def check() -> bool:
        result = next(calls)
        if isinstance(result, Exception):
            raise result
        return result

    with ManagedProcess(_python("import time; time.sleep(120)"), tmp_path / "p.log") as process:
        elapsed = process.wait_ready(check, timeout=10, what="flaky check")
    assert 0.09 <= elapsed < 5


# -- LocalStack ----------------------------------------------------------------------


@pytest.fixture
def stack_dirs() -> Iterator[list[Path]]:
    dirs: list[Path] = []
    yield dirs
    for d in dirs:
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.timeout(60)
def test_local_stack_starts_and_stops_both(stack_dirs: list[Path]) -> None:
    topic = "examples"
    with LocalStack(topics={topic: 2}) as stack:
        stack_dirs.append(stack.workdir)
        workdir = stack.workdir
        pids = [stack.redis.process.pid, stack.kafka.process.pid]
        client = redis.Redis.from_url(stack.redis_url)
        assert client.ping()
        client.close()
        with KafkaAdminClient(bootstrap_servers=stack.bootstrap) as admin:
            (described,) = admin.describe_topics([topic])
        assert len(described["partitions"]) == 2
        log.info(
            "stack ready: redis %.3fs, kafka %.3fs",
            stack.redis.ready_seconds,
            stack.kafka.ready_seconds,
        )
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not workdir.exists()


@pytest.mark.timeout(60)
def test_local_stack_stops_on_exception_and_keeps_logs(stack_dirs: list[Path]) -> None:
    with pytest.raises(KeyError):
        with LocalStack() as stack:
            stack_dirs.append(stack.workdir)
            workdir = stack.workdir
            pids = [stack.redis.process.pid, stack.kafka.process.pid]
            raise KeyError("boom")
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert workdir.exists()
    assert list(workdir.rglob("*.log"))

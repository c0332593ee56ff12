"""kill -9 landing inside the trainer's Redis writes (issue 12): inside a snapshot's MULTI/EXEC
and inside a guardrail holdout write, guardrail on, for the default learner (FSA: kills land
before, in and after the snapshot that holds its warm-up; the buffer is in the blob) and for
LAE (Adam state and EMA are in the blob): the final weights and holdout equal an
uninterrupted run's.

Redis's CLIENT PAUSE WRITE holds the trainer's writes one at a time; CLIENT LIST shows which
write is held (a transaction's queued SET of a snapshot, or the holdout's HSET); the kill
lands while the wanted one is held.
"""

from __future__ import annotations

import time

import pytest
import redis

from perennial import codec
from perennial.store import SnapshotStore, from_safetensors
from tests.helpers import wait_for
from tests.services.trainer.conftest import DETERMINISTIC, Stream, examples

pytestmark = pytest.mark.e2e
TOTAL = 192  # 24 batches of 8, a snapshot every 32 records


PAUSE_MS = 10_000  # renewed while the test watches; lapses on its own if the test dies


def blocked_write(admin: redis.Redis) -> str | None:
    """Which write of the trainer the pause holds: 'snapshot' (a SET queued in publish's
    MULTI/EXEC), 'holdout' (the holdout's HSET), another command's name, or None."""
    for client in admin.client_list():
        if "b" not in client["flags"]:
            continue
        if "x" in client["flags"] and client["cmd"] == "set":
            return "snapshot"
        return "holdout" if client["cmd"] == "hset" else client["cmd"]
    return None


def kill_inside(
    admin: redis.Redis, trainer, kind: str, ready=lambda: True, timeout: float = 300
) -> None:
    """Hold the trainer's writes one at a time; kill -9 it while a write of `kind` is held
    once `ready()` (e.g. a snapshot is committed), so kills land at chosen points of a run.

    Writes stay paused the whole time. A held write of another kind is let through by
    unpausing and pausing again at once: Redis runs the released command before it reads
    the next PAUSE, and the trainer's next write is held in turn, so none slips past."""
    started, renewed, seen = time.monotonic(), 0.0, []
    try:
        while time.monotonic() < started + timeout:
            if time.monotonic() - renewed > PAUSE_MS / 2000:
                admin.client_pause(PAUSE_MS, all=False)  # WRITE: reads go on, writes wait
                renewed = time.monotonic()
            held = blocked_write(admin)
            if held is None:
                time.sleep(0.005)
                continue
            seen.append(held)
            if held == kind and ready():
                trainer.process.kill()
                # Redis drops the dead client, and its held write with it, before writes resume
                wait_for(
                    lambda: blocked_write(admin) is None, 10, "Redis to drop the killed client"
                )
                return
            admin.client_unpause()
            admin.client_pause(PAUSE_MS, all=False)
            renewed = time.monotonic()
    finally:
        admin.client_unpause()
    pytest.fail(
        f"no {kind} write within {timeout:.0f}s; {len(seen)} held writes, the last: {seen[-20:]}"
    )


@pytest.mark.parametrize("learner", ["fsa", "lae"])
def test_kills_inside_snapshot_and_holdout_writes_change_nothing(
    stream, tiny_backbone_dir, learner
):
    settings = {
        **DETERMINISTIC,
        "PERENNIAL_BACKBONE_PATH": tiny_backbone_dir,
        "PERENNIAL_LEARNER": learner,
        "PERENNIAL_WARMUP_EXAMPLES": 24,  # fsa: the warm-up runs at 96 examples, mid-stream
        "PERENNIAL_HOLDOUT_EVERY": 4,  # the guardrail is on
        "PERENNIAL_HOLDOUT_PER_CLASS": 8,
        "PERENNIAL_GUARDRAIL_MIN_HOLDOUT": 4,
    }
    admin = redis.Redis.from_url(stream.redis_url)
    store = SnapshotStore(admin)
    stream.send([codec.encode(e) for e in examples(stream.adapter, TOTAL)])
    partition = f"{stream.topic}:0"

    def committed(offset: int):
        def ready() -> bool:
            latest = store.latest(stream.adapter)
            return (latest.offsets[partition] if latest else 0) >= offset

        return ready

    # before any snapshot; after the first; in the one that holds the warm-up; after it
    for kind, offset in (("snapshot", 0), ("holdout", 32), ("snapshot", 96), ("holdout", 128)):
        kill_inside(admin, stream.trainer(**settings), kind, committed(offset))
    trainer = stream.trainer(**settings)
    wait_for(
        lambda: (m := store.latest(stream.adapter)) and m.offsets == {partition: TOTAL},
        180,
        "the end of the stream after four kills",
        seen=lambda: store.latest(stream.adapter),
    )
    trainer.stop()
    crashed = store.latest(stream.adapter)
    chain = [store.manifest(stream.adapter, v) for v in store.versions(stream.adapter)]
    assert [m.offsets[partition] for m in chain] == list(range(32, TOTAL + 1, 32))

    clean = Stream(stream.bootstrap, stream.redis_url, stream.workdir)
    clean.runs = stream.runs
    try:
        clean.send([codec.encode(e) for e in examples(clean.adapter, TOTAL)])
        clean.trainer(**{**settings, **clean.settings})
        wait_for(
            lambda: (m := store.latest(clean.adapter)) and m.offsets == {f"{clean.topic}:0": TOTAL},
            180,
            "the uninterrupted run",
            seen=lambda: store.latest(clean.adapter),
        )
        reference = store.latest(clean.adapter)
    finally:
        clean.close()
    assert crashed.sha256 == reference.sha256  # learner state (LAE: + Adam and EMA) identical
    if learner == "fsa":  # the warm-up ran mid-stream: the PET is in the final state
        tensors, _ = from_safetensors(store.fetch(stream.adapter, crashed.version)[1])
        assert any(name.startswith("pet.") for name in tensors)
    assert crashed.class_counts == reference.class_counts
    holdout = admin.hgetall(f"perennial:{{{stream.adapter}}}:holdout")
    assert holdout and holdout == admin.hgetall(f"perennial:{{{clean.adapter}}}:holdout")
    assert crashed.metrics["holdout_examples"] == reference.metrics["holdout_examples"] > 0

"""The Redis snapshot store, against a real redis-server."""

import json
import threading

import pytest
import torch

from perennial.errors import NotFound
from perennial.store import (
    IntegrityError,
    SnapshotStore,
    StaleParent,
    from_safetensors,
    to_safetensors,
)
from tests.helpers import wait_for


@pytest.fixture
def store(redis_client):
    return SnapshotStore(redis_client)


def _blob(value: float) -> bytes:
    return to_safetensors({"w": torch.full((2, 2), value)}, {"classes": json.dumps(["a"])})


def _publish(store, blob, parent=None, **fields):
    args = {"offsets": {"t:0": 5}, "examples": 5, "classes": ["a"], **fields}
    return store.publish("ad", blob, parent=parent, **args)


def test_safetensors_round_trip_keeps_metadata():
    tensors, metadata = from_safetensors(_blob(1.5))
    assert torch.equal(tensors["w"], torch.full((2, 2), 1.5))
    assert metadata == {"classes": '["a"]'}


def test_publish_writes_an_immutable_version_and_moves_the_head(store):
    first = _publish(store, _blob(1.0))
    second = _publish(store, _blob(2.0), parent=first, offsets={"t:0": 9}, examples=9)
    assert (first.sequence, second.sequence) == (1, 2)
    assert second.parent == first.version and second.version != first.version
    assert store.head("ad") == second
    assert store.versions("ad") == [first.version, second.version]
    manifest, blob = store.fetch("ad", first.version)  # the old version is still there, unchanged
    assert manifest == first and blob == _blob(1.0)
    assert store.adapters() == ["ad"]
    assert all("{ad}" in key.decode() for key in store.redis.keys("perennial:{*}:*"))


def test_fencing_rejects_a_writer_whose_parent_is_stale(store):
    first = _publish(store, _blob(1.0))
    _publish(store, _blob(2.0), parent=first)
    with pytest.raises(StaleParent, match="parent"):
        _publish(store, _blob(3.0), parent=first)
    with pytest.raises(StaleParent):
        _publish(store, _blob(3.0), parent=None)
    assert store.head("ad").sequence == 2


def test_fetch_detects_a_corrupted_blob(store):
    manifest = _publish(store, _blob(1.0))
    store.redis.set(f"perennial:{{ad}}:blob:{manifest.version}", _blob(666.0))
    with pytest.raises(IntegrityError, match="sha256"):
        store.fetch("ad", manifest.version)
    with pytest.raises(NotFound, match="no version"):
        store.fetch("ad", "v999999-nothing")


def test_publish_announces_on_the_channel(store):
    announcements = []

    def listen():
        for item in store.announcements():
            if item is not None:
                announcements.append(item)
                return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    # the subscription is live once the channel has a subscriber
    wait_for(
        lambda: store.redis.pubsub_numsub(store.channel)[0][1] > 0,
        10,
        "the listener's subscription",
        interval=0.005,
    )
    manifest = _publish(store, _blob(1.0))
    listener.join(timeout=10)
    assert announcements == [("ad", manifest.version)]


def test_event_times_are_sampled_evenly_when_many(store):
    manifest = _publish(store, _blob(1.0), event_times=[float(i) for i in range(5000)])
    assert len(manifest.event_times) == 1024
    assert manifest.event_times[0] == 0.0 and manifest.event_times[-1] > 4900


def test_a_held_candidate_is_latest_but_not_head(store):
    first = _publish(store, _blob(1.0))
    held = _publish(store, _blob(2.0), parent=first, promote=False)
    assert store.head("ad") == first and store.latest("ad") == held
    third = _publish(
        store, _blob(3.0), parent=held, promote=False
    )  # training continues on the lineage
    assert store.promote("ad", third.version) == third
    assert store.head("ad") == third


def test_rollback_serves_an_old_version_and_fences_the_newer_lineage(store):
    first = _publish(store, _blob(1.0))
    second = _publish(store, _blob(2.0), parent=first)
    store.rollback("ad", first.version)
    assert store.head("ad") == first and store.latest("ad") == first
    with pytest.raises(StaleParent):
        _publish(store, _blob(3.0), parent=second)
    assert _publish(store, _blob(3.0), parent=first).parent == first.version
    with pytest.raises(NotFound, match="no retained version"):
        store.rollback("ad", "v000099-nothing")


def test_prune_keeps_the_newest_and_the_pointers_with_their_parents(store):
    manifests = [_publish(store, _blob(1.0))]
    for value in range(2, 8):
        manifests.append(_publish(store, _blob(float(value)), parent=manifests[-1]))
    store.promote("ad", manifests[2].version)  # an old head (e.g. after holds) must survive
    deleted = store.prune("ad", keep=2)
    kept = store.versions("ad")
    assert kept == [m.version for m in (manifests[1], manifests[2], manifests[5], manifests[6])]
    assert sorted(deleted) == sorted(m.version for m in (manifests[0], manifests[3], manifests[4]))
    assert store.manifest("ad", manifests[0].version) is None
    with pytest.raises(NotFound):
        store.fetch("ad", manifests[3].version)


def test_prune_reads_each_versions_manifest_once_and_keeps_what_a_fresh_store_keeps(store):
    """Versions are immutable, so a store remembers what pruning needs of each (bytes, parent,
    checkpoint): a trainer prunes at every snapshot without reading a hundred manifests."""
    manifests = [_publish(store, _blob(1.0), state=_blob(10.0))]
    for value in range(2, 8):
        manifests.append(_publish(store, _blob(float(value)), manifests[-1], checkpoint=False))
    assert store.prune("ad", keep=3) == [m.version for m in manifests[1:4]]
    manifests.append(_publish(store, _blob(8.0), manifests[-1], checkpoint=False))

    def manifest_reads() -> int:
        return store.redis.info("commandstats").get("cmdstat_get", {}).get("calls", 0)

    reads = manifest_reads()
    assert store.prune("ad", keep=3, max_bytes=1 << 20) == [manifests[4].version]
    assert manifest_reads() - reads == 3  # head, latest and the new version's manifest
    fresh = SnapshotStore(store.redis)  # remembers nothing: the same versions stay
    assert fresh.prune("ad", keep=3, max_bytes=1 << 20) == []
    assert store.versions("ad") == [m.version for m in (manifests[0], *manifests[5:])]


def test_identical_state_gives_identical_bytes_in_any_process():
    """safetensors orders its metadata map by hash, which differs per process; ours must not."""
    import subprocess
    import sys

    program = (
        "import hashlib, torch; from perennial.store import to_safetensors; "
        "print(hashlib.sha256(to_safetensors({'w': torch.ones(2)}, "
        "{k: k * 2 for k in 'abcdefghij'})).hexdigest())"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", program], capture_output=True, text=True, check=True
        ).stdout
        for _ in range(3)
    }
    assert len(digests) == 1


def test_checkpoints_carry_the_state_and_versions_name_theirs(store):
    legacy = _publish(store, _blob(1.0))  # one blob, the whole state: its own checkpoint
    assert legacy.checkpoint is None and store.fetch_state("ad", legacy) == store.fetch(
        "ad", legacy.version
    )
    checkpoint = _publish(store, _blob(2.0), legacy, state=_blob(20.0))
    serving = _publish(store, _blob(3.0), checkpoint, checkpoint=False)
    assert checkpoint.checkpoint == checkpoint.version and serving.checkpoint == checkpoint.version
    assert serving.state_sha256 is None
    found, state = store.fetch_state("ad", serving)
    assert found == checkpoint and torch.equal(
        from_safetensors(state)[0]["w"], torch.full((2, 2), 20.0)
    )
    with pytest.raises(ValueError):
        _publish(store, _blob(4.0), checkpoint=False)  # a lineage starts with a checkpoint
    store.redis.set(f"perennial:{{ad}}:state:{checkpoint.version}", b"garbage")
    with pytest.raises(IntegrityError):
        store.fetch_state("ad", serving)
    for _ in range(3):
        serving = _publish(store, _blob(serving.sequence + 1.0), serving, checkpoint=False)
    store.prune("ad", keep=1)
    assert store.versions("ad") == sorted([checkpoint.version, serving.parent, serving.version])

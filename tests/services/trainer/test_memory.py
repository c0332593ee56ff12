"""Memory bounded by settings (issue 12): thousands of adapter ids through one trainer process;
its RSS and the Redis bytes per adapter stay under the configured bounds."""

from __future__ import annotations

import pytest
import redis

from perennial import codec
from perennial.store import SnapshotStore
from tests.helpers import wait_for

pytestmark = pytest.mark.e2e
LABELS = ("animal", "plant", "artifact")


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def redis_bytes(client: redis.Redis, adapter: str) -> int:
    """MEMORY USAGE of every key of one adapter (they share its hash tag)."""
    return sum(
        client.memory_usage(key, samples=0) or 0
        for key in client.scan_iter(match=f"perennial:{{{adapter}}}:*", count=1000)
    )


@pytest.mark.parametrize(
    ("learner", "adapters", "per_adapter", "max_adapters", "retain_bytes", "rss_budget"),
    [
        # plumbing at scale: 2,000 adapter ids, small statistics
        ("simplecil", 2000, 4, 32, 64 << 10, 96 << 20),
        # the default learner at its real size (FSA: M=1024 float64 statistics, the buffer)
        ("fsa", 24, 4, 4, 16 << 20, 4 * (48 << 20)),
    ],
    ids=["simplecil-2000-ids", "fsa-default"],
)
def test_many_adapter_ids_stay_within_the_memory_bounds(
    stream,
    tiny_backbone_dir,
    learner,
    adapters,
    per_adapter,
    max_adapters,
    retain_bytes,
    rss_budget,
):
    trainer = stream.trainer(
        PERENNIAL_BACKBONE_PATH=tiny_backbone_dir,
        PERENNIAL_LEARNER=learner,
        PERENNIAL_MAX_ADAPTERS=max_adapters,
        PERENNIAL_RETAIN_BYTES=retain_bytes,
        PERENNIAL_BATCH_SIZE=per_adapter,
        PERENNIAL_BATCH_WAIT_SECONDS=0.5,
        PERENNIAL_SNAPSHOT_EVERY_EXAMPLES=10_000,
        PERENNIAL_SNAPSHOT_EVERY_SECONDS=2,
        PERENNIAL_HOLDOUT_EVERY=0,
    )
    client = redis.Redis.from_url(stream.redis_url)
    store = SnapshotStore(client)
    names = [f"{stream.adapter}-{i:05d}" for i in range(adapters)]

    def send(batch: list[str], rounds: int = 1) -> None:
        for _ in range(rounds):
            values = []
            for name in batch:
                for i in range(per_adapter):
                    example = codec.Example(name, str(i), f"text {i}", LABELS[i % 3], 1.7e9 + i)
                    values.append((name, codec.encode(example)))
            for name, value in values:
                stream.producer.send(stream.topic, key=name.encode(), value=value)
            stream.producer.flush()

    def snapshotted(batch: list[str], examples: int):
        return lambda: all(
            (m := store.latest(a)) is not None and m.examples >= examples for a in batch
        )

    warm = names[: max(max_adapters * 2, adapters // 8)]
    send(warm)
    wait_for(snapshotted(warm, per_adapter), 300, f"{len(warm)} adapters' first snapshots")
    baseline = rss_bytes(trainer.process.pid)
    send(names[len(warm) :])
    send(names[: adapters // 2])  # half come back: evicted state reloads from its snapshot
    wait_for(
        snapshotted(names, per_adapter),
        600,
        f"all {adapters} adapters' snapshots",
        seen=lambda: sum(1 for a in names if store.latest(a) is None),
    )
    wait_for(
        snapshotted(names[: adapters // 2], 2 * per_adapter),
        300,
        "the returning adapters' second snapshots",
    )
    grown = rss_bytes(trainer.process.pid) - baseline
    per_adapter_redis = max(redis_bytes(client, name) for name in names[:: max(1, adapters // 50)])
    blob = client.strlen(f"perennial:{{{names[0]}}}:blob:{store.latest(names[0]).version}")
    print(
        f"{learner}: {adapters} adapters, RSS grew {grown / 2**20:.1f} MiB after warm-up "
        f"(budget {rss_budget >> 20} MiB), Redis per adapter <= {per_adapter_redis / 2**20:.2f} MiB "
        f"(blob {blob / 2**20:.2f} MiB, retention {retain_bytes / 2**20:.2f} MiB), "
        f"used_memory {client.info('memory')['used_memory'] / 2**20:.0f} MiB"
    )
    assert grown < rss_budget, f"trainer RSS grew {grown / 2**20:.0f} MiB"
    # retention keeps blobs within retain_bytes, except head/latest and their parents (2
    # versions); Redis's allocator rounds a multi-MB string up to its size class (<= 25 %)
    assert per_adapter_redis <= 1.25 * max(retain_bytes, 2 * blob) + 64 * 1024
    for name in names[: adapters // 2]:
        latest = store.latest(name)
        assert latest.examples == 2 * per_adapter, name  # evicted, reloaded, each example once

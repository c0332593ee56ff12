"""Immutable adapter snapshots in Redis, announced on a pub/sub channel.

Keys of one adapter share the hash tag `{adapter}`, so on Redis Cluster they sit
in one slot and every transaction below stays atomic:

    perennial:{A}:blob:<version>      safetensors bytes (never pickle)
    perennial:{A}:manifest:<version>  JSON manifest (see `Manifest`)
    perennial:{A}:latest              the candidate: newest version written (the trainer's lineage)
    perennial:{A}:head                the version inference serves
    perennial:{A}:versions            sorted set of retained versions by sequence number
    perennial:adapters                set of adapter ids (outside the transactions)

A version id is `v<sequence>-<sha256 prefix>`, so a name never means two sets of
weights. `publish` writes blob, manifest and the `latest` pointer (and `head`,
when promoted at once) in one MULTI/EXEC guarded by WATCH on `latest`: if
`latest` is no longer the parent the writer started from, the write is rejected
(`StaleParent`), which fences a second writer out. A candidate that the
forgetting guardrail holds back stays `latest` but not `head`; `promote` and
`rollback` move the pointers later. Every move of `head` is announced.
"""

from __future__ import annotations

import hashlib
import json
import struct
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import redis
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from perennial.errors import NotFound

UPDATES_CHANNEL = "perennial:updates"
MAX_EVENT_TIMES = 1024  # event times kept per manifest, for the freshness histogram


class StaleParent(RuntimeError):
    """The head moved since this writer read it: another writer owns the adapter."""


class IntegrityError(RuntimeError):
    """A blob's sha256 differs from its manifest."""


@dataclass(frozen=True)
class Manifest:
    """What a snapshot version holds and where it came from (stored as JSON beside the blob)."""

    adapter: str
    version: str
    sequence: int
    parent: str | None
    sha256: str
    offsets: dict[str, int]  # "topic:partition" -> next offset to apply
    examples: int  # examples applied in total
    created_at: float
    classes: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    event_times: list[float] = field(default_factory=list)  # of examples new in this version
    class_counts: dict[str, int] = field(default_factory=dict)  # examples consumed per class

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        return cls(**json.loads(text))


METADATA_KEY = "perennial"


def to_safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """Safetensors bytes, byte-identical for identical state in any process.

    safetensors writes its metadata map in hash order, which changes from process to
    process, so the metadata travels as one canonical JSON string under one key.
    """
    return save_safetensors(tensors, metadata={METADATA_KEY: json.dumps(metadata, sort_keys=True)})


def from_safetensors(blob: bytes) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and string metadata of a safetensors blob (format: u64 header size, JSON header)."""
    (header_size,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + header_size]).get("__metadata__", {})
    metadata = json.loads(header[METADATA_KEY]) if METADATA_KEY in header else header
    return load_safetensors(blob), metadata


class SnapshotStore:
    """Immutable adapter versions in Redis, the candidate and head pointers, and announcements."""

    def __init__(
        self, client: redis.Redis, prefix: str = "perennial", channel: str = UPDATES_CHANNEL
    ):
        self.redis = client
        self.prefix = prefix
        self.channel = channel

    def _key(self, adapter: str, *parts: str) -> str:
        return ":".join((self.prefix, "{" + adapter + "}", *parts))

    def publish(
        self,
        adapter: str,
        blob: bytes,
        *,
        parent: Manifest | None,
        offsets: dict[str, int],
        examples: int,
        classes: list[str],
        metrics: dict[str, float] | None = None,
        event_times: list[float] = (),
        class_counts: dict[str, int] | None = None,
        promote: bool = True,
    ) -> Manifest:
        """Write a new immutable version as the candidate (and the head if `promote`)."""
        sha256 = hashlib.sha256(blob).hexdigest()
        sequence = parent.sequence + 1 if parent else 1
        if len(event_times) > MAX_EVENT_TIMES:  # keep an even sample
            step = len(event_times) / MAX_EVENT_TIMES
            event_times = [event_times[int(i * step)] for i in range(MAX_EVENT_TIMES)]
        manifest = Manifest(
            adapter=adapter,
            version=f"v{sequence:06d}-{sha256[:12]}",
            sequence=sequence,
            parent=parent.version if parent else None,
            sha256=sha256,
            offsets=dict(offsets),
            examples=examples,
            created_at=time.time(),
            classes=list(classes),
            metrics=dict(metrics or {}),
            event_times=list(event_times),
            class_counts=dict(class_counts or {}),
        )
        latest_key = self._key(adapter, "latest")
        with self.redis.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(latest_key)
                current = pipe.get(latest_key)
                if (current.decode() if current else None) != manifest.parent:
                    raise StaleParent(
                        f"adapter {adapter!r}: latest is {current!r}, this write's parent is {manifest.parent!r}"
                    )
                pipe.multi()
                pipe.set(self._key(adapter, "blob", manifest.version), blob)
                pipe.set(self._key(adapter, "manifest", manifest.version), manifest.to_json())
                pipe.zadd(self._key(adapter, "versions"), {manifest.version: sequence})
                pipe.set(latest_key, manifest.version)
                if promote:
                    pipe.set(self._key(adapter, "head"), manifest.version)
                pipe.execute()
            except redis.WatchError as error:
                raise StaleParent(f"adapter {adapter!r}: latest moved during the write") from error
        self.redis.sadd(f"{self.prefix}:adapters", adapter)
        if promote:
            self._announce(adapter, manifest.version)
        return manifest

    def promote(self, adapter: str, version: str) -> Manifest:
        """Make a retained version the head (what inference serves)."""
        manifest = self._retained(adapter, version)
        self.redis.set(self._key(adapter, "head"), version)
        self._announce(adapter, version)
        return manifest

    def rollback(self, adapter: str, version: str) -> Manifest:
        """Serve a retained version and restart the lineage from it (head = latest = version).

        A trainer holding a newer lineage is fenced out on its next write and reloads.
        """
        manifest = self._retained(adapter, version)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self._key(adapter, "head"), version)
            pipe.set(self._key(adapter, "latest"), version)
            pipe.execute()
        self._announce(adapter, version)
        return manifest

    def prune(self, adapter: str, keep: int) -> list[str]:
        """Delete all but the newest `keep` versions; head, latest and their parents always stay."""
        if keep < 1:
            raise ValueError(f"retention must keep at least 1 version, got {keep}")
        versions = self.versions(adapter)
        protected = set()
        for pointer in (self.head(adapter), self.latest(adapter)):
            if pointer:
                protected.update({pointer.version, pointer.parent})
        doomed = [v for v in versions[: max(0, len(versions) - keep)] if v not in protected]
        if doomed:
            with self.redis.pipeline(transaction=True) as pipe:
                for version in doomed:
                    pipe.delete(
                        self._key(adapter, "blob", version), self._key(adapter, "manifest", version)
                    )
                pipe.zrem(self._key(adapter, "versions"), *doomed)
                pipe.execute()
        return doomed

    def _retained(self, adapter: str, version: str) -> Manifest:
        manifest = self.manifest(adapter, version)
        if manifest is None:
            raise NotFound(f"adapter {adapter!r} has no retained version {version!r}")
        return manifest

    def _announce(self, adapter: str, version: str) -> None:
        self.redis.publish(self.channel, json.dumps({"adapter": adapter, "version": version}))

    def head(self, adapter: str) -> Manifest | None:
        """The version inference serves."""
        return self._pointer(adapter, "head")

    def latest(self, adapter: str) -> Manifest | None:
        """The candidate: the newest version written, where training continues from."""
        return self._pointer(adapter, "latest")

    def _pointer(self, adapter: str, name: str) -> Manifest | None:
        version = self.redis.get(self._key(adapter, name))
        return self.manifest(adapter, version.decode()) if version else None

    def manifest(self, adapter: str, version: str) -> Manifest | None:
        text = self.redis.get(self._key(adapter, "manifest", version))
        return Manifest.from_json(text) if text else None

    def fetch(self, adapter: str, version: str) -> tuple[Manifest, bytes]:
        """The manifest and blob of a version, after checking the blob's sha256."""
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(self._key(adapter, "manifest", version))
            pipe.get(self._key(adapter, "blob", version))
            text, blob = pipe.execute()
        if text is None or blob is None:
            raise NotFound(
                f"adapter {adapter!r} has no version {version!r}; it may never have existed or was deleted"
            )
        manifest = Manifest.from_json(text)
        digest = hashlib.sha256(blob).hexdigest()
        if digest != manifest.sha256:
            raise IntegrityError(
                f"adapter {adapter!r} version {version}: blob sha256 {digest} != manifest {manifest.sha256}"
            )
        return manifest, blob

    def versions(self, adapter: str) -> list[str]:
        return [v.decode() for v in self.redis.zrange(self._key(adapter, "versions"), 0, -1)]

    def adapters(self) -> list[str]:
        return sorted(a.decode() for a in self.redis.smembers(f"{self.prefix}:adapters"))

    def announcements(self) -> Iterator[tuple[str, str] | None]:
        """Yield (adapter, version) per announcement, or None every second of quiet."""
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(self.channel)
        try:
            while True:
                message = pubsub.get_message(timeout=1.0)
                if message is None:
                    yield None
                    continue
                try:
                    body = json.loads(message["data"])
                    yield body["adapter"], body["version"]
                except (ValueError, KeyError, TypeError):
                    continue  # not ours; the periodic head check covers anything missed
        finally:
            pubsub.close()

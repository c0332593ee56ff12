"""Immutable adapter snapshots in Redis, announced on a pub/sub channel.

Keys of one adapter share the hash tag `{adapter}`, so on Redis Cluster they sit
in one slot and every transaction below stays atomic:

    perennial:{A}:blob:<version>      safetensors bytes (never pickle): what inference serves
    perennial:{A}:state:<version>     safetensors: the learner's whole state (a checkpoint; only
                                      the versions the trainer chose to checkpoint have one)
    perennial:{A}:manifest:<version>  JSON manifest (see `Manifest`)
    perennial:{A}:latest              the candidate: newest version written (the trainer's lineage)
    perennial:{A}:head                the version inference serves
    perennial:{A}:versions            sorted set of retained versions by sequence number
    perennial:adapters                set of adapter ids (outside the transactions)

A version id is `v<sequence>-<sha256 prefix>`, so a name never means two sets of
weights. `publish` writes blob, manifest and the `latest` pointer (and `head`,
when promoted at once) in one MULTI/EXEC guarded by WATCH on `latest`: if
`latest` is no longer the parent the writer started from, the write is rejected
(`StaleParent`), which fences a second writer out.

Two blobs, two cadences: every version has a small serving blob (for the default learner the
solved head and the PET, a few hundred KB), written often; a version may also carry the
learner's whole state (the trainer's checkpoint: statistics, warm-up buffer, optimiser),
written less often. Each manifest names the newest checkpoint of its lineage (`checkpoint`:
itself or an ancestor), where a trainer resumes from. Versions written before the split have
neither field: their one blob is the whole state, and they are their own checkpoint. A candidate that the
forgetting guardrail holds back stays `latest` but not `head`; `promote` and
`rollback` move the pointers later. Every move of `head` is announced.
"""

from __future__ import annotations

import dataclasses
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

from perennial.errors import DataLoss, NotFound

UPDATES_CHANNEL = "perennial:updates"
MAX_EVENT_TIMES = 1024  # event times kept per manifest, for the freshness histogram


class StaleParent(RuntimeError):
    """The head moved since this writer read it: another writer owns the adapter."""


class IntegrityError(DataLoss):
    """A stored version fails verification; `reason` says how (bounded: a metric label).

    checksum: the blob's sha256 differs from its manifest's; manifest: the manifest is not
    a valid JSON manifest; decode: the blob verifies but is not a snapshot a learner can load.
    """

    def __init__(self, message: str, reason: str = "checksum") -> None:
        super().__init__(message)
        self.reason = reason


CORRUPTION_REASONS = ("checksum", "manifest", "decode")


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
    state_sha256: str | None = None  # this version carries a checkpoint (the learner's state)
    checkpoint: str | None = None  # the lineage's newest checkpoint: this version or an ancestor

    @property
    def resume_version(self) -> str:
        """The version whose state a trainer resumes this version's lineage from (a version of
        the one-blob format is its own checkpoint)."""
        return self.checkpoint or self.version

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> Manifest:
        """Parse a stored manifest; anything malformed is an `IntegrityError` (reason manifest)."""
        try:
            manifest = cls(**json.loads(text))
            if not (isinstance(manifest.version, str) and isinstance(manifest.sha256, str)):
                raise TypeError("version and sha256 must be strings")
            if not isinstance(manifest.offsets, dict) or not isinstance(manifest.sequence, int):
                raise TypeError("offsets must be an object and sequence an integer")
            return manifest
        except (ValueError, TypeError, RecursionError) as error:
            raise IntegrityError(f"manifest is not valid: {error}"[:300], "manifest") from error


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


@dataclass(frozen=True)
class _Facts:
    """What pruning needs of a version, immutable like it."""

    size: int  # bytes of its blob and state
    parent: str | None
    resume: str | None  # the checkpoint it resumes from


_KNOWN_ADAPTERS = 1024  # adapters whose versions' facts a store keeps (least recent dropped)


class Unreplicated(redis.RedisError):
    """A write reached the master but not `wait_replicas` replicas in time: it may not survive
    a failover, so the writer treats it as failed (and finds out on its retry which it was)."""


class SnapshotStore:
    """Immutable adapter versions in Redis, the candidate and head pointers, and announcements.

    With `wait_replicas` > 0 every publish waits (Redis WAIT) until that many replicas hold
    it, so a snapshot whose Kafka offsets get committed survives a Sentinel failover.
    """

    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "perennial",
        channel: str = UPDATES_CHANNEL,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 5000,
    ):
        self.redis = client
        self.prefix = prefix
        self.channel = channel
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self._known: dict[str, dict[str, _Facts]] = {}  # adapter -> version -> facts (prune)

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
        replaces: str | None = None,
        state: bytes | None = None,
        checkpoint: bool = True,
    ) -> Manifest:
        """Write a new immutable version as the candidate (and the head if `promote`).

        `blob` is what inference serves. With `checkpoint` the version is also a checkpoint:
        `state` holds the learner's whole state (or, without `state`, `blob` is the whole state,
        as before the split); without it the version names its parent's checkpoint.

        The write is fenced on `latest` still naming `parent` — or, after a fall-back from a
        corrupted version, naming `replaces` (that version), which this write supersedes.
        """
        if not checkpoint and parent is None:
            raise ValueError(f"adapter {adapter!r}: the first version of a lineage is a checkpoint")
        if not checkpoint:
            state = None
        sha256 = hashlib.sha256(blob).hexdigest()
        sequence = parent.sequence + 1 if parent else 1
        expected = replaces if replaces is not None else (parent.version if parent else None)
        if replaces is not None:  # never reuse a sequence number of the lineage it replaces
            top = self.redis.zrange(self._key(adapter, "versions"), -1, -1, withscores=True)
            sequence = max(sequence, int(top[0][1]) + 1 if top else 1)
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
        state_sha256 = hashlib.sha256(state).hexdigest() if state is not None else None
        manifest = dataclasses.replace(
            manifest,
            state_sha256=state_sha256,
            checkpoint=(
                manifest.version
                if state is not None
                else None
                if checkpoint
                else parent.resume_version
            ),
        )
        latest_key = self._key(adapter, "latest")
        with self.redis.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(latest_key)
                current = pipe.get(latest_key)
                if (current.decode() if current else None) != expected:
                    raise StaleParent(
                        f"adapter {adapter!r}: latest is {current!r}, this write's parent is {expected!r}"
                    )
                pipe.multi()
                pipe.set(self._key(adapter, "blob", manifest.version), blob)
                if state is not None:
                    pipe.set(self._key(adapter, "state", manifest.version), state)
                pipe.set(self._key(adapter, "manifest", manifest.version), manifest.to_json())
                pipe.zadd(self._key(adapter, "versions"), {manifest.version: sequence})
                pipe.set(latest_key, manifest.version)
                if promote:
                    pipe.set(self._key(adapter, "head"), manifest.version)
                pipe.execute()
            except redis.WatchError as error:
                raise StaleParent(f"adapter {adapter!r}: latest moved during the write") from error
        if self.wait_replicas > 0:
            acked = self.redis.wait(self.wait_replicas, self.wait_timeout_ms)
            if acked < self.wait_replicas:
                raise Unreplicated(
                    f"adapter {adapter!r} {manifest.version}: {acked} of {self.wait_replicas} "
                    f"replicas acknowledged within {self.wait_timeout_ms} ms"
                )
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

    def prune(self, adapter: str, keep: int, max_bytes: int | None = None) -> list[str]:
        """Delete all but the newest `keep` versions, and old versions beyond `max_bytes` of
        blobs; head, latest and their parents always stay (they are what serving and
        training fall back to), and so does the checkpoint each survivor resumes from."""
        if keep < 1:
            raise ValueError(f"retention must keep at least 1 version, got {keep}")
        versions = self.versions(adapter)
        facts = self._facts(adapter, versions)
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(self._key(adapter, "head"))
            pipe.get(self._key(adapter, "latest"))
            pointers = [v.decode() for v in pipe.execute() if v]
        protected: set[str | None] = set(pointers)
        for version in pointers:  # a pointer's parent; a corrupted one protects no parent
            protected.add(facts[version].parent if version in facts else None)
        kept = versions[max(0, len(versions) - keep) :]
        if max_bytes is not None and kept:
            total, newest_first = 0, []
            for version in reversed(kept):
                total += facts[version].size
                if total > max_bytes and newest_first:
                    break
                newest_first.append(version)
            kept = newest_first
        survivors = {*kept, *protected} - {None}
        protected |= {facts[v].resume for v in survivors if v in facts}
        doomed = [v for v in versions if v not in kept and v not in protected]
        if doomed:
            with self.redis.pipeline(transaction=True) as pipe:
                for version in doomed:
                    pipe.delete(
                        self._key(adapter, "blob", version),
                        self._key(adapter, "state", version),
                        self._key(adapter, "manifest", version),
                    )
                pipe.zrem(self._key(adapter, "versions"), *doomed)
                pipe.execute()
        return doomed

    def _facts(self, adapter: str, versions: list[str]) -> dict[str, _Facts]:
        """What pruning needs of each version (bytes, parent, checkpoint). A version never
        changes, so each is read once per process: a trainer prunes at every snapshot, and
        reading and parsing a hundred manifests each time cost its training thread a tenth of
        its time at four snapshots a second. Versions whose manifest is missing or corrupted
        are not remembered."""
        known = self._known.pop(adapter, {})
        self._known[adapter] = facts = {v: known[v] for v in versions if v in known}
        while len(self._known) > _KNOWN_ADAPTERS:
            self._known.pop(next(iter(self._known)))
        missing, found = [v for v in versions if v not in facts], {}
        if missing:
            with self.redis.pipeline(transaction=False) as pipe:
                for version in missing:
                    pipe.strlen(self._key(adapter, "blob", version))
                    pipe.strlen(self._key(adapter, "state", version))
                    pipe.get(self._key(adapter, "manifest", version))
                read = pipe.execute()
            for i, version in enumerate(missing):
                blob, state, text = read[3 * i : 3 * i + 3]
                try:
                    manifest = Manifest.from_json(text) if text else None
                except IntegrityError:
                    manifest = None
                if manifest is None:  # counted, protecting nothing, and read again next time
                    found[version] = _Facts(blob + state, None, None)
                else:
                    resume = manifest.resume_version
                    facts[version] = _Facts(blob + state, manifest.parent, resume)
        return {**facts, **found}

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
        version = self.pointer(adapter, name)
        return self.manifest(adapter, version) if version else None

    def pointer(self, adapter: str, name: str) -> str | None:
        """The version `head` or `latest` names, without reading its manifest."""
        version = self.redis.get(self._key(adapter, name))
        return version.decode() if version else None

    def manifest(self, adapter: str, version: str) -> Manifest | None:
        """A version's manifest (None if absent); `IntegrityError` if it is malformed."""
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
        if manifest.version != version or manifest.adapter != adapter:
            raise IntegrityError(
                f"adapter {adapter!r} version {version}: the manifest names "
                f"{manifest.adapter!r} {manifest.version!r}",
                "manifest",
            )
        digest = hashlib.sha256(blob).hexdigest()
        if digest != manifest.sha256:
            raise IntegrityError(
                f"adapter {adapter!r} version {version}: blob sha256 {digest} != manifest {manifest.sha256}"
            )
        return manifest, blob

    def fetch_state(self, adapter: str, manifest: Manifest) -> tuple[Manifest, bytes]:
        """The checkpoint `manifest`'s lineage resumes from: its manifest and the learner's state,
        after checking the state's sha256 (a version of the one-blob format: its blob)."""
        checkpoint = manifest
        if manifest.resume_version != manifest.version:
            checkpoint = self.manifest(adapter, manifest.resume_version)
            if checkpoint is None:
                raise NotFound(
                    f"adapter {adapter!r} version {manifest.version}: its checkpoint "
                    f"{manifest.resume_version} is gone"
                )
        if checkpoint.state_sha256 is None:
            return self.fetch(adapter, checkpoint.version)
        state = self.redis.get(self._key(adapter, "state", checkpoint.version))
        if state is None:
            raise NotFound(f"adapter {adapter!r} version {checkpoint.version} has no state")
        digest = hashlib.sha256(state).hexdigest()
        if digest != checkpoint.state_sha256:
            raise IntegrityError(
                f"adapter {adapter!r} version {checkpoint.version}: state sha256 {digest} != "
                f"manifest {checkpoint.state_sha256}"
            )
        return checkpoint, state

    def versions(self, adapter: str) -> list[str]:
        """Retained versions, oldest first."""
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

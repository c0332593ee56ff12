"""Per adapter version statistics as the Open Inference Protocol's statistics extension reports
them (Triton's `ModelStatistics`): request counts and cumulative durations of the queue and of
the compute phases, model executions, and a breakdown by batch size.

Phases of one request, in nanoseconds, counted per request as Triton counts them (and all of
one request's at once: perf_analyzer requires the compute counts to be equal):
`compute_input` = decoding and validating the request up to the batch queue; `queue` =
waiting for its batch; `compute_infer` = the model call of that batch (shared by every request
in it); `compute_output` = turning scores into output tensors. `success` / `fail` = the whole
request on the server. Executions are counted per model call: one that runs rows of several
versions counts as one execution of each, with that version's rows as its batch size.

Versions are reported as Triton names them, by an integer: our version ids are
`v<sequence>-<sha256 prefix>`, so a version's statistics carry its sequence number
(`v000012-3f2a...` → "12"); perf_analyzer parses the version with `std::stoll`.

Memory is bounded: the least recently used entries beyond `max_entries` are dropped (the data
plane reports only resident versions, so a dropped entry is one that left memory long ago).
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

VERSION_ID = re.compile(r"^v(\d+)-[0-9a-f]+$")  # perennial.store's version ids
PHASES = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output")
BATCH_PHASES = ("compute_input", "compute_infer", "compute_output")


@dataclass
class _Duration:
    count: int = 0
    ns: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.ns += max(0, int(seconds * 1e9))

    def as_dict(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class _VersionStats:
    last_inference_ms: int = 0
    inference_count: int = 0
    execution_count: int = 0
    phases: dict[str, _Duration] = field(default_factory=lambda: {p: _Duration() for p in PHASES})
    batches: dict[int, dict[str, _Duration]] = field(default_factory=dict)


@dataclass(frozen=True)
class RequestTimes:
    """Durations (seconds) of one request and, if it was answered, of its phases."""

    total: float
    compute_input: float = 0.0
    queue: float = 0.0
    compute_infer: float = 0.0
    compute_output: float = 0.0


class InferenceStatistics:
    """Thread-safe accumulator keyed by (adapter, version); `report` renders the protocol's JSON."""

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str], _VersionStats] = OrderedDict()

    def _entry(self, key: tuple[str, str]) -> _VersionStats:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _VersionStats()
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        self._entries.move_to_end(key)
        return entry

    def record_request(self, adapter: str, version: str, ok: bool, times: RequestTimes) -> None:
        """One request that reached a version (answered, or failed after the version was known)."""
        with self._lock:
            entry = self._entry((adapter, version))
            entry.last_inference_ms = int(time.time() * 1000)
            entry.phases["success" if ok else "fail"].add(times.total)
            if not ok:
                return
            for phase in ("compute_input", "queue", "compute_infer", "compute_output"):
                entry.phases[phase].add(getattr(times, phase))

    def record_execution(self, rows: dict[tuple[str, str], int], seconds: float) -> None:
        """One model call: `rows` per (adapter, version) it ran, `seconds` it took."""
        with self._lock:
            for key, count in rows.items():
                entry = self._entry(key)
                entry.inference_count += count
                entry.execution_count += 1
                batch = entry.batches.setdefault(count, {p: _Duration() for p in BATCH_PHASES})
                batch["compute_infer"].add(seconds)

    def report(self, versions: list[tuple[str, str]]) -> dict:
        """`{"model_stats": [...]}` for `versions`, in Triton's JSON shape (every field present,
        integers as numbers: perf_analyzer reads them with `GetUint64`)."""
        stats = []
        with self._lock:
            for adapter, version in versions:
                entry = self._entries.get((adapter, version)) or _VersionStats()
                inference = {phase: entry.phases[phase].as_dict() for phase in PHASES}
                inference["cache_hit"] = inference["cache_miss"] = {"count": 0, "ns": 0}
                stats.append(
                    {
                        "name": adapter,
                        "version": triton_version(version),
                        "last_inference": entry.last_inference_ms,
                        "inference_count": entry.inference_count,
                        "execution_count": entry.execution_count,
                        "inference_stats": inference,
                        "batch_stats": [
                            {"batch_size": size, **{p: d.as_dict() for p, d in phases.items()}}
                            for size, phases in sorted(entry.batches.items())
                        ],
                        "memory_usage": [],
                    }
                )
        return {"model_stats": stats}


def triton_version(version: str) -> str:
    """The integer Triton would name `version` by: its sequence number (else the id itself)."""
    match = VERSION_ID.match(version)
    return str(int(match[1])) if match else version

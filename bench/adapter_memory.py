"""Memory of one adapter per learner on the real backbone: trainer RSS, snapshot bytes, and the
bytes a served version keeps resident (what the inference LRU counts).

`python -m bench.adapter_memory` (about a minute on 2 cores) writes
bench/adapter-memory-results.json; docs/TRAINER.md and docs/DEPLOY.md quote it. Each learner is
measured in a fresh process, so no learner's RSS hides in memory another one freed.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import platform
from pathlib import Path

import torch

RESULTS = Path(__file__).with_name("adapter-memory-results.json")
LEARNERS = ("fsa", "ranpac", "simplecil", "lae")
ADAPTERS = 8  # learners kept alive at once; RSS per adapter is their mean


def rss() -> int:
    gc.collect()
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def measure(name: str) -> dict[str, int]:
    """One learner's figures, in the calling process (run it in a fresh one)."""
    from perennial.backbone import TextBackbone
    from perennial.learners import LearnerConfig, build_learner, load_predictor
    from perennial.store import to_safetensors
    from services.inference.sizing import resident_bytes

    torch.set_num_threads(1)
    backbone = TextBackbone.load()
    texts = [f"example text number {i} about things" for i in range(16)]
    labels = [f"class-{i % 4}" for i in range(16)]
    # fsa: a window of these 16 examples, so its PET is trained and held, as after its warm-up
    warmup = {"warmup_examples": 16, "warmup_min_count": 4} if name == "fsa" else {}
    warm = build_learner(backbone, LearnerConfig(learner=name, seed=ADAPTERS, **warmup))
    warm.learn(texts, labels)  # one-off costs (first warm-up, first solve) before measuring
    before = rss()
    learners = []
    for seed in range(ADAPTERS):
        learner = build_learner(backbone, LearnerConfig(learner=name, seed=seed, **warmup))
        learner.learn(texts, labels)
        learners.append(learner)
    per_adapter = max(0, rss() - before) / ADAPTERS
    tensors, metadata = learners[0].state()
    blob = to_safetensors(tensors, metadata)
    served = resident_bytes(load_predictor(backbone, tensors, metadata), backbone)
    return {
        "trainer_rss_bytes_per_adapter": int(per_adapter),
        "snapshot_bytes": len(blob),
        "served_version_bytes": served,
    }


def main() -> None:
    results = {"backbone": "all-MiniLM-L6-v2", "machine": platform.machine(), "learners": {}}
    context = multiprocessing.get_context("spawn")
    for name in LEARNERS:
        with context.Pool(1) as pool:
            figures = results["learners"][name] = pool.apply(measure, (name,))
        print(
            f"{name}: trainer RSS {figures['trainer_rss_bytes_per_adapter'] / 2**20:.1f} MiB per "
            f"adapter, snapshot {figures['snapshot_bytes'] / 2**20:.2f} MiB, served version "
            f"{figures['served_version_bytes'] / 2**20:.2f} MiB"
        )
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()

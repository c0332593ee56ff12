"""Memory of one adapter per learner on the real backbone: trainer RSS, snapshot bytes, and the
bytes a served version keeps resident (what the inference LRU counts).

`python -m bench.adapter_memory` (about a minute on 2 cores) writes
bench/adapter-memory-results.json; docs/TRAINER.md and docs/DEPLOY.md quote it.
"""

from __future__ import annotations

import gc
import json
import platform
from pathlib import Path

import torch

from perennial.backbone import TextBackbone
from perennial.learners import LearnerConfig, build_learner, load_predictor
from perennial.store import to_safetensors
from services.inference.sizing import resident_bytes

RESULTS = Path(__file__).with_name("adapter-memory-results.json")
ADAPTERS = 8  # learners kept alive at once; RSS per adapter is their mean


def rss() -> int:
    gc.collect()
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def main() -> None:
    torch.set_num_threads(1)
    backbone = TextBackbone.load()
    texts = [f"example text number {i} about things" for i in range(16)]
    labels = [f"class-{i % 4}" for i in range(16)]
    results = {"backbone": "all-MiniLM-L6-v2", "machine": platform.machine(), "learners": {}}
    for name in ("ranpac", "simplecil", "lae"):
        before = rss()
        learners = []
        for seed in range(ADAPTERS):
            learner = build_learner(backbone, LearnerConfig(learner=name, seed=seed))
            learner.learn(texts, labels)
            learners.append(learner)
        per_adapter = max(0, rss() - before) / ADAPTERS
        tensors, metadata = learners[0].state()
        blob = to_safetensors(tensors, metadata)
        served = resident_bytes(load_predictor(backbone, tensors, metadata), backbone)
        results["learners"][name] = {
            "trainer_rss_bytes_per_adapter": int(per_adapter),
            "snapshot_bytes": len(blob),
            "served_version_bytes": served,
        }
        print(
            f"{name}: trainer RSS {per_adapter / 2**20:.1f} MiB per adapter, snapshot "
            f"{len(blob) / 2**20:.2f} MiB, served version {served / 2**20:.2f} MiB"
        )
        del learners
        gc.collect()
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()

"""One adapter version, ready to run, and the two functions that run models.

`load_version` and `predict` are the one place that knows the learners' types.
`predict` runs a batch that mixes adapters as ONE backbone forward when every
version is an LAE ensemble of LoRA modules: each row carries its own LoRA
weights (`perennial.pet.lora.RowwiseLoRA`), online and offline rows side by side
(measured faster than grouping by adapter: docs/BENCHMARKS.md). Other models
fall back to one `scores` call per version (`predict_grouped`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from perennial.backbone import TextBackbone
from perennial.learners import LearnerConfig, Predictor, load_predictor
from perennial.learners.lae import ensemble_probabilities
from perennial.pet import activate
from perennial.pet.lora import RowwiseLoRA
from perennial.store import Manifest, from_safetensors


@dataclass(frozen=True, eq=False)
class ServedVersion:
    """One immutable adapter version, ready to run."""

    manifest: Manifest
    model: Predictor
    nbytes: int
    learner: str  # the learner that wrote the snapshot (`LearnerConfig.learner`)

    @property
    def adapter(self) -> str:
        return self.manifest.adapter

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def classes(self) -> list[str]:
        return self.model.classes


@dataclass(frozen=True)
class Prediction:
    """A batch's scores and the version that produced them."""

    served: ServedVersion
    scores: torch.Tensor  # [N, C]

    @property
    def labels(self) -> list[str]:
        return [self.served.classes[i] for i in self.scores.argmax(-1).tolist()]


def load_version(backbone, manifest: Manifest, blob: bytes) -> ServedVersion:
    """Build an adapter version from its verified safetensors blob."""
    tensors, metadata = from_safetensors(blob)
    model = load_predictor(backbone, tensors, metadata)
    learner = LearnerConfig.from_dict(json.loads(metadata["learner"])).learner
    return ServedVersion(manifest, model, model_bytes(model), learner)


def predict(backbone, work: Sequence[tuple[ServedVersion, list]]) -> list[torch.Tensor]:
    """Scores [n_i, C_i] for each (version, inputs) item, in one backbone forward when possible."""
    with torch.inference_mode():
        if isinstance(backbone, TextBackbone) and all(_is_lora_ensemble(s.model) for s, _ in work):
            return _predict_rowwise(backbone, work)
        return predict_grouped(backbone, work)


def predict_grouped(backbone, work: Sequence[tuple[ServedVersion, list]]) -> list[torch.Tensor]:
    """One `scores` call per distinct version (the general path; also what `predict` is measured against)."""
    with torch.inference_mode():
        by_version: dict[
            tuple, list[int]
        ] = {}  # same version and same row shape (images) run together
        for index, (served, rows) in enumerate(work):
            shape = tuple(rows[0].shape) if isinstance(rows[0], torch.Tensor) else None
            by_version.setdefault((id(served), shape), []).append(index)
        results: list[torch.Tensor] = [torch.empty(0)] * len(work)
        for indices in by_version.values():
            inputs = [row for i in indices for row in work[i][1]]
            scores = work[indices[0]][0].model.scores(backbone, inputs)
            start = 0
            for i in indices:
                results[i] = scores[start : start + len(work[i][1])]
                start += len(work[i][1])
        return results


def _is_lora_module(module: object) -> bool:
    return getattr(getattr(module, "config", None), "method", None) == "lora" and hasattr(
        module, "lora_a"
    )


def _is_lora_ensemble(model: object) -> bool:
    """An LAE ensemble of two LoRA modules and a linear head (max-of-softmax scores)."""
    return (
        _is_lora_module(getattr(model, "online", None))
        and _is_lora_module(getattr(model, "offline", None))
        and isinstance(getattr(model, "head", None), torch.nn.Linear)
    )


def _predict_rowwise(
    backbone: TextBackbone, work: Sequence[tuple[ServedVersion, list[str]]]
) -> list[torch.Tensor]:
    """Every item's online and offline rows in ONE forward; then each version's head and ensemble."""
    texts = [text for _, item in work for text in item]
    batch = backbone.tokenize(texts)
    doubled = {name: torch.cat([tensor, tensor]) for name, tensor in batch.items()}
    rows = [served for served, item in work for _ in item]
    modules = [served.model.online for served in rows] + [served.model.offline for served in rows]
    with activate(RowwiseLoRA(modules)):  # type: ignore[arg-type]
        pooled = backbone(doubled)
    online, offline = pooled[: len(texts)], pooled[len(texts) :]
    results, start = [], 0
    for served, item in work:
        stop = start + len(item)
        head = served.model.head
        results.append(ensemble_probabilities(head(online[start:stop]), head(offline[start:stop])))
        start = stop
    return results


def model_bytes(model: object) -> int:
    """Bytes of a predictor's tensors (its parameters and buffers if it is a module)."""
    if isinstance(model, torch.nn.Module):
        tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}
    else:
        tensors = {id(t): t for t in vars(model).values() if isinstance(t, torch.Tensor)}
    return sum(t.numel() * t.element_size() for t in tensors.values())

"""One adapter version, ready to run, and the functions that run models.

`load_version` and `predict` are the one place that knows the learners' types. `predict`
runs a batch that mixes adapters with as few backbone forwards as each kind of model allows:

- first-session-adaptation versions (`fsa`, the default learner): ONE frozen forward on the
  backbone's runtime (ONNX Runtime by default) for every row, then ONE torch pass through the
  last blocks for the rows of adapted versions, each row with its own version's LoRA weights
  (`perennial.pet.lora.RowwiseLoRA`); each version's head then scores its rows' features;
- LAE ensembles of LoRA modules (text): ONE forward with online and offline rows side by side;
- anything else: one `scores` call per version (`predict_grouped`).
Grouped was measured slower than the fused forwards (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from perennial.backbone import TextBackbone
from perennial.learners import FirstSessionPredictor, LearnerConfig, Predictor, load_predictor
from perennial.learners.lae import ensemble_probabilities
from perennial.pet import activate
from perennial.pet.lora import RowwiseLoRA
from perennial.store import Manifest, from_safetensors
from services.inference.sizing import resident_bytes


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
    return ServedVersion(manifest, model, resident_bytes(model, backbone), learner)


def predict(backbone, work: Sequence[tuple[ServedVersion, list]]) -> list[torch.Tensor]:
    """Scores [n_i, C_i] for each (version, inputs) item: the items of each kind of model in as
    few backbone forwards as the kind allows (see the module's docstring)."""
    kinds: dict[Callable, list[int]] = {}
    for index, (served, _) in enumerate(work):
        kinds.setdefault(_path(backbone, served.model), []).append(index)
    results: list[torch.Tensor] = [torch.empty(0)] * len(work)
    with torch.inference_mode():
        for path, indices in kinds.items():
            for index, scores in zip(
                indices, path(backbone, [work[i] for i in indices]), strict=True
            ):
                results[index] = scores
    return results


def _path(backbone, model: object) -> Callable:
    if isinstance(model, FirstSessionPredictor) and (
        model.module is None or _is_lora_module(model.module)
    ):
        return _predict_first_session
    if isinstance(backbone, TextBackbone) and _is_lora_ensemble(model):
        return _predict_rowwise
    return predict_grouped


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


def _predict_first_session(
    backbone, work: Sequence[tuple[ServedVersion, list]]
) -> list[torch.Tensor]:
    """FSA versions: ONE frozen forward (the runtime) for every row, then ONE pass through the
    last blocks for the rows of adapted versions, each row with its version's LoRA weights;
    then each version's own head on its [frozen ⊕ adapted] features."""
    models = [served.model for served, _ in work]
    maps = [model.features for model in models]
    inputs = [row for _, item in work for row in item]
    batch = backbone.prepare(inputs)
    wanted = sorted({i for fm in maps for i in (*fm.states, fm.start)})
    hidden = dict(zip(wanted, backbone.hidden(batch, wanted), strict=True))
    pooled = {i: backbone.pool(hidden[i], batch) for i in {i for fm in maps for i in fm.states}}
    spans, start = [], 0
    for _, item in work:
        spans.append((start, start + len(item)))
        start += len(item)
    adapted: dict[int, torch.Tensor] = {}  # item -> its rows' adapted features
    for block in {
        fm.start for fm, model in zip(maps, models, strict=True) if model.module is not None
    }:
        items = [
            i
            for i, (fm, m) in enumerate(zip(maps, models, strict=True))
            if m.module is not None and fm.start == block
        ]
        rows = [r for i in items for r in range(*spans[i])]
        modules = [models[i].module for i in items for _ in range(*spans[i])]
        state, sub_batch = _rows(backbone, hidden[block], batch, rows)
        with activate(RowwiseLoRA(modules)):  # type: ignore[arg-type]
            features = backbone.pool(backbone.tail(state, sub_batch, block), sub_batch)
        offset = 0
        for i in items:
            count = spans[i][1] - spans[i][0]
            adapted[i], offset = features[offset : offset + count], offset + count
    results = []
    for i, (model, fm) in enumerate(zip(models, maps, strict=True)):
        begin, end = spans[i]
        parts = [pooled[s][begin:end] for s in fm.states]
        if i in adapted:
            parts.append(adapted[i])
        results.append(model.scores_features(torch.cat(parts, dim=1).double()).float())
    return results


def _rows(backbone, state: torch.Tensor, batch, rows: list[int]):
    """The rows of a batched state (and of its batch, for text) as a batch of their own."""
    index = torch.tensor(rows)
    if isinstance(batch, dict):
        return state[index], {name: tensor[index] for name, tensor in batch.items()}
    return state[index], batch[index]

"""One adapter version, ready to run, and the functions that run models.

`load_version` and `predict` are the one place that knows the learners' types. `predict`
runs a batch that mixes adapters with as few backbone forwards as each kind of model allows:

- first-session-adaptation versions (`fsa`, the default learner): the rows in length-sorted
  chunks of at most `CHUNK_ROWS` (padding to a whole batch's longest text cost more than the
  batching gained); per chunk ONE frozen forward on the backbone's runtime (ONNX Runtime by
  default) for every row, then ONE torch pass through the last blocks for the rows of adapted
  versions, each row with its own version's LoRA weights (`perennial.pet.lora.RowwiseLoRA`);
  each version's head then scores its rows' features;
- LAE ensembles of LoRA modules (text): ONE forward with online and offline rows side by side;
- anything else: one `scores` call per version (`predict_grouped`).
Grouped was measured slower than the fused forwards (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import functools
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

# Rows per backbone pass of FSA versions: chosen by `make bench-serving` on the training
# glosses, by rows/s at the batch sizes the server forms (docs/BENCHMARKS.md, "Serving").
CHUNK_ROWS = 4


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

    @functools.cached_property
    def labels(self) -> list[str]:
        """The top class of each row (computed once: the answer and the drift monitor read it)."""
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
    """FSA versions: the rows of all items in chunks of at most `CHUNK_ROWS`, similar lengths
    together (`backbone.chunks`), each chunk's features as `_features` computes them; then each
    version's own head on its rows' [frozen ⊕ adapted] features."""
    models = [served.model for served, _ in work]
    owners = [models[i] for i, (_, item) in enumerate(work) for _ in item]
    batch = backbone.prepare([row for _, item in work for row in item])
    features: list[torch.Tensor] = [torch.empty(0)] * len(owners)
    for rows, chunk in backbone.chunks(batch, CHUNK_ROWS):
        for row, feature in zip(
            rows, _features(backbone, [owners[r] for r in rows], chunk), strict=True
        ):
            features[row] = feature
    results, start = [], 0
    for model, (_, item) in zip(models, work, strict=True):
        if not item:
            results.append(torch.zeros(0, len(model.classes)))
            continue
        rows = torch.stack(features[start : start + len(item)]).double()
        results.append(model.scores_features(rows).float())
        start += len(item)
    return results


def _features(backbone, models: list, batch) -> list[torch.Tensor]:
    """Row i's [frozen ⊕ adapted] features under models[i]: ONE frozen forward on the runtime
    for every row, then ONE torch pass through the last blocks per first adapted block for the
    rows of adapted versions, each row with its own version's LoRA weights."""
    maps = [model.features for model in models]
    wanted = sorted({i for fm in maps for i in (*fm.states, fm.start)})
    hidden = dict(zip(wanted, backbone.hidden(batch, wanted), strict=True))
    pooled = {i: backbone.pool(hidden[i], batch) for i in {i for fm in maps for i in fm.states}}
    adapted: dict[int, torch.Tensor] = {}  # row -> its adapted features
    for block in {fm.start for fm, m in zip(maps, models, strict=True) if m.module is not None}:
        rows = [
            r
            for r, (fm, m) in enumerate(zip(maps, models, strict=True))
            if m.module is not None and fm.start == block
        ]
        state, sub_batch = _rows(backbone, hidden[block], batch, rows)
        with activate(RowwiseLoRA([models[r].module for r in rows])):  # type: ignore[arg-type]
            tail = backbone.pool(backbone.tail(state, sub_batch, block), sub_batch)
        adapted.update(zip(rows, tail, strict=True))
    return [
        torch.cat([*(pooled[s][r] for s in fm.states), *([adapted[r]] if r in adapted else [])])
        for r, fm in enumerate(maps)
    ]


def _rows(backbone, state: torch.Tensor, batch, rows: list[int]):
    """The rows of a batched state (and of its batch, for text) as a batch of their own."""
    index = torch.tensor(rows)
    if isinstance(batch, dict):
        return state[index], {name: tensor[index] for name, tensor in batch.items()}
    return state[index], batch[index]

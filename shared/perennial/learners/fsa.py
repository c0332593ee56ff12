"""First-session adaptation (`fsa`): the PET learns on the first window of the stream, then
freezes, and a RanPAC head learns from [frozen multi-layer ⊕ adapted] features for ever after.

RanPAC's full method on a stream with no task boundaries (McDonnell et al. 2023; APER is the
same idea with prototypes):

1. Until the window closes, every micro-batch is buffered (inputs and labels: part of the
   state) and its frozen features train a ridge head, so the adapter serves from the start.
   The window closes at the end of the first micro-batch that brings the buffer to
   `warmup_examples` with at least `warmup_min_classes` classes of `warmup_min_count`
   examples each, or to `warmup_cap` examples — a count, never a task boundary.
2. Warm-up: a new PET module (LoRA by default) in the last `adapt_blocks` blocks and a
   zero-initialised linear head over the buffer's classes train for `warmup_epochs` epochs
   (Adam, `warmup_lr`, batches of 16, a seeded permutation per epoch). The frozen state
   before those blocks is computed once per buffered example, so an epoch runs only the last
   blocks. Then the PET freezes, the temporary head is dropped, and the statistics restart
   with the buffer's [frozen ⊕ adapted] features at their stream positions.
3. After the warm-up each example costs one frozen forward (the backbone's runtime: ONNX
   Runtime by default) plus the last blocks in torch with the PET, and only adds to the
   statistics: the head is order-invariant, so nothing but confusable new classes can cost
   old classes accuracy.

Features: mean-pooled frozen hidden states `feature_states` (default: the backbone's, e.g.
MiniLM's last three layers) concatenated with the adapted last state. Head: `RidgeHead`
(ReLU random features, λ chosen on held-out statistics). Everything is seeded and runs in
float64 where it accumulates; CPU training is deterministic.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from perennial.learners.analytic import select_when_due
from perennial.learners.config import LearnerConfig, check_runtime, snapshot_metadata
from perennial.learners.ridge import RidgeHead, SolvedHead
from perennial.pet import PETModule, activate, create_module, inject

_CHUNK = 64  # rows per frozen forward while preparing the warm-up


class FeatureMap:
    """[frozen multi-layer ⊕ adapted] features of a backbone, with or without the PET yet."""

    def __init__(self, backbone, config: LearnerConfig) -> None:
        self.backbone = backbone
        count = len(backbone.hidden_names())
        chosen = config.feature_states or backbone.feature_states
        self.states = sorted({i % count for i in chosen})
        blocks = config.adapt_blocks or backbone.adapt_blocks
        if not 0 < blocks <= backbone.layers:
            raise ValueError(f"adapt_blocks must be in 1..{backbone.layers}, got {blocks}")
        self.start = backbone.layers - blocks
        targets = backbone.pet_targets.get(config.pet.method)
        if targets is None:
            raise ValueError(
                f"{config.pet.method} does not apply to {type(backbone).__name__}; "
                f"use one of {sorted(backbone.pet_targets)}"
            )
        layers = tuple(range(self.start, backbone.layers))
        self.pet = dataclasses.replace(config.pet, layers=layers, target_modules=targets)
        self.frozen_dim = sum(backbone.state_dim(i) for i in self.states)

    def dim(self, adapted: bool) -> int:
        """Width of the features: frozen, plus the adapted state once there is a PET."""
        return self.frozen_dim + (self.backbone.dim if adapted else 0)

    @torch.no_grad()
    def frozen(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled frozen features [N, frozen_dim], the frozen state where the PET starts)."""
        wanted = sorted(set(self.states) | {self.start})
        hidden = dict(zip(wanted, self.backbone.hidden(batch, wanted), strict=True))
        pooled = torch.cat([self.backbone.pool(hidden[i], batch) for i in self.states], dim=1)
        return pooled, hidden[self.start]

    def adapted(self, state: torch.Tensor, batch, module: PETModule) -> torch.Tensor:
        """Pooled output of the last blocks with `module` active, from the frozen `state`."""
        with activate(module):
            return self.backbone.pool(self.backbone.tail(state, batch, self.start), batch)

    @torch.no_grad()
    def __call__(self, inputs, module: PETModule | None) -> torch.Tensor:
        batch = self.backbone.prepare(inputs)
        frozen, state = self.frozen(batch)
        if module is None:
            return frozen.double()
        return torch.cat([frozen, self.adapted(state, batch, module)], dim=1).double()


class FirstSessionLearner:
    """First-session PET adaptation + RanPAC head on [frozen multi-layer ⊕ adapted] features."""

    name = "fsa"

    def __init__(self, backbone, config: LearnerConfig | None = None) -> None:
        config = config or LearnerConfig(learner=self.name)
        if config.learner != self.name:
            raise ValueError(f"FirstSessionLearner runs learner 'fsa', got {config.learner!r}")
        self.backbone, self.config = backbone, config
        self.features = FeatureMap(backbone, config)
        self.classes: list[str] = []
        self.steps = self.examples = 0
        self.module: PETModule | None = None  # the PET, once the warm-up has run
        self.buffer: list = []  # inputs of the first window (until the warm-up)
        self.buffer_labels: list[str] = []
        self.head = self._new_head()
        self._selected = (0, 0)
        self.warmup_progress: Callable[[int, int], None] | None = None
        """Called after every step of the warm-up with (steps done, steps in all): the trainer
        logs it and stamps its heartbeat (a long warm-up is work, not a stall)."""

    def _new_head(self) -> RidgeHead:
        c = self.config
        head = RidgeHead(self.features.dim(self.adapted), c.projection_dim, c.seed, c.ridge_grid)
        head.grow(len(self.classes))
        return head

    @property
    def adapted(self) -> bool:
        return self.module is not None

    @property
    def trainable_parameters(self) -> int:
        pet = sum(p.numel() for p in self.module.parameters()) if self.module is not None else 0
        return pet + self.config.projection_dim * len(self.classes)

    # -- learning -----------------------------------------------------------------------------
    def learn(self, inputs, labels: list[str]) -> float:
        """Add a micro-batch to the statistics (and to the buffer until the warm-up); returns 0.0."""
        self.learn_and_predict(inputs, labels)
        return 0.0

    def learn_and_predict(self, inputs, labels: list[str]) -> list[str | None]:
        """What the head last solved (e.g. the version being served) predicts for `inputs` before
        learning them (None without one), then learn them: a prequential evaluation for the
        cost of a matrix product."""
        if len(inputs) != len(labels) or not len(inputs):
            raise ValueError(
                f"need equally many inputs and labels, got {len(inputs)} and {len(labels)}"
            )
        features = self.features(inputs, self.module)
        before = self.head.last_scores(features)
        known = (
            [self.classes[i] for i in before.argmax(-1).tolist()] if before is not None else None
        )
        self.learn_features(features, labels)
        if not self.adapted:
            self.buffer.extend(inputs)
            self.buffer_labels.extend(labels)
            if self._window_closed():
                self.warm_up()
        return known or [None] * len(labels)

    def learn_features(self, features: torch.Tensor, labels: list[str]) -> None:
        """Add features computed by `self.features` (a benchmark may cache them) and labels."""
        self._add(features, labels, self.examples)
        self.steps += 1
        self.examples += len(labels)
        self._selected = select_when_due(
            self.head, self._selected, self.examples, len(self.classes), self.config.ridge_every
        )

    def _add(self, features: torch.Tensor, labels: list[str], first_position: int) -> None:
        for label in labels:
            if label not in self.classes:
                self.classes.append(label)
        self.head.grow(len(self.classes))
        targets = torch.tensor([self.classes.index(label) for label in labels])
        self.head.add(features, targets, torch.arange(len(labels)) + first_position)

    def _window_closed(self) -> bool:
        c = self.config
        counts: dict[str, int] = {}
        for label in self.buffer_labels:
            counts[label] = counts.get(label, 0) + 1
        enough = sum(n >= c.warmup_min_count for n in counts.values()) >= c.warmup_min_classes
        size = len(self.buffer_labels)
        return size >= c.warmup_cap or (size >= c.warmup_examples and enough)

    def warm_up(self) -> None:
        """Train the PET on the buffer, freeze it, restart the statistics with adapted features."""
        c, fm, backbone = self.config, self.features, self.backbone
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(c.seed)
        module = create_module(fm.pet, inject(backbone.encoder, fm.pet)).to(backbone.device)
        torch.random.set_rng_state(generator_state)
        states, frozen = [], []
        for i in range(0, len(self.buffer), _CHUNK):
            batch = backbone.prepare(self.buffer[i : i + _CHUNK])
            pooled, state = fm.frozen(batch)
            frozen.append(pooled)
            states.extend(backbone.unbatch(state, batch))
        classes = list(dict.fromkeys(self.buffer_labels))
        targets = torch.tensor([classes.index(label) for label in self.buffer_labels])
        head = nn.Linear(backbone.dim, len(classes))
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        optimizer = torch.optim.Adam([*module.parameters(), *head.parameters()], lr=c.warmup_lr)
        order = list(range(len(states)))
        shuffle = random.Random(c.seed)
        total, done = c.warmup_epochs * -(-len(order) // 16), 0
        for _ in range(c.warmup_epochs):
            shuffle.shuffle(order)
            for first in range(0, len(order), 16):
                rows = order[first : first + 16]
                state, batch = backbone.rebatch([states[i] for i in rows])
                loss = F.cross_entropy(head(fm.adapted(state, batch, module)), targets[rows])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                done += 1
                if self.warmup_progress is not None:
                    self.warmup_progress(done, total)
        self.module = module.requires_grad_(False)
        self.head = self._new_head()
        adapted = []
        with torch.no_grad():
            for first in range(0, len(states), _CHUNK):
                state, batch = backbone.rebatch(states[first : first + _CHUNK])
                adapted.append(fm.adapted(state, batch, module))
        features = torch.cat([torch.cat(frozen), torch.cat(adapted)], dim=1).double()
        self._add(features, self.buffer_labels, 0)  # the window is the stream's first examples
        self.buffer, self.buffer_labels = [], []
        self.head.select_ridge()
        self._selected = (self.examples, len(self.classes))

    # -- prediction ------------------------------------------------------------------------------
    def scores_features(self, features: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.config.temperature * self.head.scores(features), dim=-1)

    @torch.no_grad()
    def scores(self, inputs) -> torch.Tensor:
        return self.scores_features(self.features(inputs, self.module))

    def predict(self, inputs) -> list[str]:
        return [self.classes[i] for i in self.scores(inputs).argmax(-1).tolist()]

    # -- state -----------------------------------------------------------------------------------
    def serving(self, wait: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """What a served version needs, a few hundred KB: the head solved once here (W [M, C]),
        the PET and the metadata; not the M×M statistics nor the warm-up buffer (`state`).
        `wait=False`: solved with the λ of before if a choice of λ is under way."""
        ridge, weights = self.head.solution(wait)
        tensors = {"head.weights": weights.contiguous().clone(), **self._pet_tensors()}
        return tensors, {**snapshot_metadata(self), "ridge": json.dumps(ridge)}

    def _pet_tensors(self) -> dict[str, torch.Tensor]:
        if self.module is None:
            return {}
        return {f"pet.{k}": v.detach().clone() for k, v in self.module.state_dict().items()}

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        """Everything needed to resume exactly (the buffer included) and to serve."""
        tensors = {**self.head.state("head."), **self._pet_tensors()}
        buffer: object = self.buffer
        if self.buffer and isinstance(self.buffer[0], torch.Tensor):
            tensors["buffer"] = torch.stack([torch.as_tensor(x) for x in self.buffer])
            buffer = None
        metadata = {
            **snapshot_metadata(self),
            "buffer": json.dumps({"inputs": buffer, "labels": self.buffer_labels}),
            "ridge": json.dumps([self.head.ridge, *self._selected]),
        }
        return tensors, metadata

    @classmethod
    def from_state(cls, backbone, tensors: dict[str, torch.Tensor], metadata: dict[str, str]):
        check_runtime(backbone, metadata)
        learner = cls(backbone, LearnerConfig.from_dict(json.loads(metadata["learner"])))
        learner.classes = json.loads(metadata["classes"])
        learner.steps, learner.examples = int(metadata["steps"]), int(metadata["examples"])
        learner.module = _load_pet(backbone, learner.features, tensors)
        buffer = json.loads(metadata["buffer"])
        learner.buffer = list(tensors["buffer"]) if "buffer" in tensors else buffer["inputs"]
        learner.buffer_labels = buffer["labels"]
        ridge, *selected = json.loads(metadata["ridge"])
        learner.head = learner._new_head()
        learner.head.load(tensors, "head.", ridge)
        learner._selected = tuple(selected)
        return learner

    @classmethod
    def predictor_from_state(
        cls, backbone, tensors: dict[str, torch.Tensor], metadata: dict[str, str]
    ) -> FirstSessionPredictor:
        """The predictor of a `serving()` blob, or of a full `state()` (solved here, at load)."""
        if "head.weights" not in tensors:
            learner = cls.from_state(backbone, tensors, metadata)
            head = learner.head.solved() if learner.classes else learner.head
            return FirstSessionPredictor(
                learner.features, learner.classes, learner.module, head, learner.config.temperature
            )
        check_runtime(backbone, metadata)
        config = LearnerConfig.from_dict(json.loads(metadata["learner"]))
        features = FeatureMap(backbone, config)
        module = _load_pet(backbone, features, tensors)
        dim = features.dim(module is not None)
        head = SolvedHead(dim, config.projection_dim, config.seed, tensors["head.weights"])
        classes = json.loads(metadata["classes"])
        return FirstSessionPredictor(features, classes, module, head, config.temperature)


def _load_pet(backbone, features: FeatureMap, tensors: dict[str, torch.Tensor]) -> PETModule | None:
    pet = {k.removeprefix("pet."): v for k, v in tensors.items() if k.startswith("pet.")}
    if not pet:
        return None
    module = create_module(features.pet, inject(backbone.encoder, features.pet))
    module.load_state_dict(pet)
    return module.to(backbone.device).requires_grad_(False)


class FirstSessionPredictor:
    """Serving view of an FSA version: `scores(backbone, inputs)` and `classes` like every
    predictor, plus the feature map, the PET and `scores_features` so the inference service
    can batch the frozen forward of many versions' rows together. Immutable: it holds a solved
    head, never the learner's statistics."""

    def __init__(
        self,
        features: FeatureMap,
        classes: list[str],
        module: PETModule | None,
        head: SolvedHead | RidgeHead,
        temperature: float,
    ) -> None:
        self.features, self.classes, self.module, self.head = features, list(classes), module, head
        self.temperature = temperature

    def scores_features(self, features: torch.Tensor) -> torch.Tensor:
        return self.scores_expanded(self.head.expand(features))

    def scores_expanded(self, h: torch.Tensor) -> torch.Tensor:
        """Class probabilities of rows already expanded by the head (`head.expand`)."""
        return F.softmax(self.temperature * self.head.scores_expanded(h), dim=-1)

    @torch.no_grad()
    def scores(self, backbone, inputs) -> torch.Tensor:
        if backbone is not self.features.backbone:
            raise ValueError("an FSA predictor scores with the backbone it was loaded on")
        return self.scores_features(self.features(inputs, self.module)).float()

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
   With `background` (the trainer's default) the warm-up runs on its own thread: the learner
   goes on learning with frozen features (so its versions stay fresh) and keeps the
   micro-batches learned meanwhile (their inputs: at most 4 × `warmup_cap` examples; beyond,
   learning waits; and their frozen forwards, up to `cache_bytes`). The warm-up thread then
   learns them again, in their own grouping and at their stream positions, on [frozen ⊕
   adapted] features (only the last blocks run again for a micro-batch whose frozen forward
   was kept), and the next `learn` or `poll` swaps the new head and the PET in: the state
   equals the in-line warm-up's bit for bit. The warm-up thread uses at most `cpu_share` of a
   core (it sleeps in proportion to its CPU time), and a tenth of that while `behind` says
   learning runs behind the stream, so learning keeps the CPU it needs.
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
import functools
import json
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch import nn

from perennial.learners.analytic import select_when_due
from perennial.learners.config import LearnerConfig, check_runtime, snapshot_metadata
from perennial.learners.ridge import RidgeHead, SolvedHead
from perennial.pet import PETModule, activate, create_module, inject

_CHUNK = 64  # rows per frozen forward while preparing the warm-up
_BEHIND = 0.1  # the share of its `cpu_share` a warm-up takes while learning is behind the stream
_IDLE_SLICE = 1.0  # s: a paced warm-up whose learning made no progress for this long goes on
_WAITING = 4  # during a background warm-up, at most this many × `warmup_cap` examples are kept


@dataclasses.dataclass
class FrozenForward:
    """A micro-batch's frozen forward: enough for its features under any PET (`FeatureMap.finish`)."""

    batch: object
    pooled: torch.Tensor  # frozen multi-layer features [N, frozen_dim]
    state: torch.Tensor  # the frozen state where the PET starts

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.pooled, self.state))


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
    def forward_frozen(self, inputs) -> FrozenForward:
        batch = self.backbone.prepare(inputs)
        return FrozenForward(batch, *self.frozen(batch))

    @torch.no_grad()
    def finish(self, frozen: FrozenForward, module: PETModule | None) -> torch.Tensor:
        """The features of a frozen forward's inputs: the pooled frozen states ⊕ the last blocks
        run again with `module` (if any)."""
        if module is None:
            return frozen.pooled.double()
        adapted = self.adapted(frozen.state, frozen.batch, module)
        return torch.cat([frozen.pooled, adapted], dim=1).double()

    def __call__(self, inputs, module: PETModule | None) -> torch.Tensor:
        return self.finish(self.forward_frozen(inputs), module)


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
        self.background = False
        """Run the warm-up on its own thread while learning goes on (see the module's doc)."""
        self.cpu_share = 1.0
        """With `background`: the share of a core the warm-up's thread may use (it sleeps in
        proportion to its CPU time between steps)."""
        self.behind = False
        """With `background`: whether learning runs behind the stream (the trainer sets it
        when a micro-batch's records waited too long); meanwhile the warm-up uses a tenth of
        `cpu_share`, so learning catches up before it goes on."""
        self.cache_bytes = 0
        """With `background`: bytes of frozen forwards kept for the micro-batches learned during
        the warm-up, so its catch-up runs only the last blocks for them."""
        self.warmed_up: Callable[[FirstSessionPredictor, Callable[[], None]], None] | None = None
        """Called on the warm-up's thread with the new PET and head before they are swapped in,
        and the warm-up's pacer (to call between steps): the trainer computes its holdout
        features there, off the learning path, within the warm-up's `cpu_share`."""
        self.window = 0  # examples of the closed window while its warm-up runs (0: none)
        self.waiting: list[int] = []  # sizes of the micro-batches learned meanwhile
        self._kept: dict[int, FrozenForward] = {}  # index in `waiting` -> its frozen forward
        self._kept_bytes = 0
        self._warm_up: Future[_WarmedUp] | None = None
        self._lock = threading.Lock()  # `waiting`, between learning and the warm-up thread
        self._cancelled = threading.Event()

    def _new_head(self, adapted: bool = False, classes: int | None = None) -> RidgeHead:
        c = self.config
        head = RidgeHead(self.features.dim(adapted), c.projection_dim, c.seed, c.ridge_grid)
        head.grow(len(self.classes) if classes is None else classes)
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
        self.poll()
        if self.window and len(self.buffer) - self.window >= _WAITING * self.config.warmup_cap:
            self.settle()  # the micro-batches kept for the warm-up are bounded: wait for it
        frozen = self.features.forward_frozen(inputs)
        features = self.features.finish(frozen, self.module)
        before = self.head.last_scores(features)
        known = (
            [self.classes[i] for i in before.argmax(-1).tolist()] if before is not None else None
        )
        self.learn_features(features, labels)
        if not self.adapted:
            with self._lock:
                self.buffer.extend(inputs)
                self.buffer_labels.extend(labels)
                if self.window:
                    self.waiting.append(len(labels))
                    if self._kept_bytes + frozen.nbytes <= self.cache_bytes:
                        self._kept[len(self.waiting) - 1] = frozen
                        self._kept_bytes += frozen.nbytes
            if not self.window and self._window_closed():
                self.window = len(self.buffer)
                self.poll()
        return known or [None] * len(labels)

    def learn_features(self, features: torch.Tensor, labels: list[str]) -> None:
        """Add features computed by `self.features` (a benchmark may cache them) and labels."""
        self._add(self.head, features, labels, self.examples)
        self.steps += 1
        self.examples += len(labels)
        self._selected = select_when_due(
            self.head, self._selected, self.examples, len(self.classes), self.config.ridge_every
        )

    def _add(
        self,
        head: RidgeHead,
        features: torch.Tensor,
        labels: list[str],
        first_position: int,
        classes: int | None = None,
    ) -> None:
        """Add rows to `head`, grown to `classes` (default: all classes, new labels included)."""
        if classes is None:
            for label in labels:
                if label not in self.classes:
                    self.classes.append(label)
        head.grow(len(self.classes) if classes is None else classes)
        targets = torch.tensor([self.classes.index(label) for label in labels])
        head.add(features, targets, torch.arange(len(labels)) + first_position)

    def _window_closed(self) -> bool:
        c = self.config
        counts: dict[str, int] = {}
        for label in self.buffer_labels:
            counts[label] = counts.get(label, 0) + 1
        enough = sum(n >= c.warmup_min_count for n in counts.values()) >= c.warmup_min_classes
        size = len(self.buffer_labels)
        return size >= c.warmup_cap or (size >= c.warmup_examples and enough)

    # -- the warm-up -----------------------------------------------------------------------------
    def poll(self) -> bool:
        """Start the warm-up of a closed window (in line without `background`), and swap its
        PET and head in once it is done; True when they were swapped in."""
        if not self.window:
            return False
        if self._warm_up is None:
            self._warm_up = self._start_warm_up()
        if not self._warm_up.done():
            return False
        self._swap_in(self._warm_up.result())
        return True

    def settle(self) -> None:
        """Wait for a warm-up under way (if any) and swap its PET and head in."""
        if self.window:
            self.poll()
            if self._warm_up is not None:
                self._swap_in(self._warm_up.result())

    def warm_up(self) -> None:
        """Close the window now and run its warm-up in line (whatever `background` says)."""
        if not self.adapted:
            self.window = self.window or len(self.buffer)
            background, self.background = self.background, False
            try:
                self.settle()
            finally:
                self.background = background

    def cancel(self) -> None:
        """Stop a warm-up under way at its next step, for a learner that is being dropped (its
        state, the buffer included, is wherever it was checkpointed)."""
        self._cancelled.set()

    def _start_warm_up(self) -> Future[_WarmedUp]:
        """The PET is created here, on the learning thread: its seeded initialisation must not
        race other uses of torch's generator, nor its injection a forward of the backbone."""
        c, fm, backbone = self.config, self.features, self.backbone
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(c.seed)
        module = create_module(fm.pet, inject(backbone.encoder, fm.pet)).to(backbone.device)
        torch.random.set_rng_state(generator_state)
        if not self.background:
            future: Future[_WarmedUp] = Future()
            future.set_result(self._run_warm_up(module))
            return future
        threads = torch.get_num_threads()
        return _warm_ups().submit(self._run_warm_up, module, threads, self.cpu_share)

    def _run_warm_up(self, module: PETModule, threads: int = 0, share: float = 1.0) -> _WarmedUp:
        """Train `module` on the window, then learn the window and the micro-batches learned
        meanwhile on [frozen ⊕ adapted] features into a new head (on the warm-up thread with
        `background`: it reads the buffer, which only grows, and `waiting` under the lock;
        using at most `share` of a core)."""
        if threads:
            torch.set_num_threads(threads)  # OpenMP's count is per thread: the same here
        pace = _Pacer(share, self._cancelled, lambda: self.steps, lambda: self.behind)
        c, fm, backbone = self.config, self.features, self.backbone
        window, labels = self.buffer[: self.window], self.buffer_labels[: self.window]
        states, frozen = [], []
        for i in range(0, len(window), _CHUNK):
            pace()
            chunk = fm.forward_frozen(window[i : i + _CHUNK])
            frozen.append(chunk.pooled)
            states.extend(backbone.unbatch(chunk.state, chunk.batch))
        classes = list(dict.fromkeys(labels))
        targets = torch.tensor([classes.index(label) for label in labels])
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
                pace()
                rows = order[first : first + 16]
                state, batch = backbone.rebatch([states[i] for i in rows])
                loss = F.cross_entropy(head(fm.adapted(state, batch, module)), targets[rows])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                done += 1
                if self.warmup_progress is not None:
                    self.warmup_progress(done, total)
        module.requires_grad_(False)
        adapted = []
        with torch.no_grad():
            for first in range(0, len(states), _CHUNK):
                pace()
                state, batch = backbone.rebatch(states[first : first + _CHUNK])
                adapted.append(fm.adapted(state, batch, module))
        features = torch.cat([torch.cat(frozen), torch.cat(adapted)], dim=1).double()
        warmed = _WarmedUp(module, *self.window_head(features, labels), self.window)
        while self._learn_waiting(warmed, pace):
            pass
        if self.warmed_up is not None:
            for _ in range(2):  # again for what came during the first pass: the swap finds little
                self.warmed_up(
                    FirstSessionPredictor(fm, self.classes, module, warmed.head, c.temperature),
                    pace,
                )
                while self._learn_waiting(warmed, pace):
                    pass
        return warmed

    def window_head(
        self, features: torch.Tensor, labels: list[str]
    ) -> tuple[RidgeHead, tuple[int, int]]:
        """A new head that learned the window's [frozen ⊕ adapted] `features` (the stream's first
        examples, so its classes come first and in order), and the λ choice's (examples,
        classes). Benchmarks call it to share one warm-up between heads of several widths."""
        classes = len(dict.fromkeys(labels))
        head = self._new_head(True, classes)
        self._add(head, features, labels, 0, classes)
        head.select_ridge()
        return head, (len(labels), classes)

    def _learn_waiting(self, warmed: _WarmedUp, pace: _Pacer) -> bool:
        """Learn the next micro-batch kept for the warm-up into its head, exactly as it would
        have been learned after an in-line warm-up; False when none is left."""
        pace()
        with self._lock:
            if warmed.learned == len(self.waiting):
                return False
            size = self.waiting[warmed.learned]
            queued = len(self.buffer) - warmed.examples - size  # kept after this micro-batch
            frozen = self._kept.pop(warmed.learned, None)
            self._kept_bytes -= frozen.nbytes if frozen is not None else 0
        first = warmed.examples
        inputs, labels = self.buffer[first : first + size], self.buffer_labels[first : first + size]
        if frozen is None:  # not kept (over `cache_bytes`, or learned before a restart)
            frozen = self.features.forward_frozen(inputs)
        features = self.features.finish(frozen, warmed.module)
        classes = len(dict.fromkeys(self.buffer_labels[: first + size]))
        self._add(warmed.head, features, labels, first, classes)
        warmed.examples += size
        warmed.learned += 1
        warmed.selected = select_when_due(  # nothing reads its λ before the backlog is learned
            warmed.head, warmed.selected, warmed.examples, classes, self.config.ridge_every,
            queued=queued,
        )  # fmt: skip
        return True

    def _swap_in(self, warmed: _WarmedUp) -> None:
        """Micro-batches kept after the warm-up thread finished are learned here, then the PET
        and the new head replace the frozen-feature head and the buffer."""
        pace = _Pacer(1.0, self._cancelled)
        while self._learn_waiting(warmed, pace):
            pass
        self.module, self.head, self._selected = warmed.module, warmed.head, warmed.selected
        self.buffer, self.buffer_labels, self.waiting = [], [], []
        self._kept, self._kept_bytes = {}, 0
        self.window, self._warm_up = 0, None

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
            "buffer": json.dumps(
                {
                    "inputs": buffer,
                    "labels": self.buffer_labels,
                    "window": self.window,
                    "waiting": self.waiting,
                }
            ),
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
        learner.window, learner.waiting = buffer.get("window", 0), buffer.get("waiting", [])
        ridge, *selected = json.loads(metadata["ridge"])
        learner.head = learner._new_head(learner.adapted)
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


class WarmUpCancelled(Exception):
    """A warm-up stopped by `FirstSessionLearner.cancel`."""


class _Pacer:
    """Called between a warm-up's steps: raises once it is cancelled and, while learning goes
    on (`learned`, a count of micro-batches, moved since the last call), sleeps so that the
    calling thread uses at most `share` of a core (in proportion to its CPU time since then),
    or a tenth of it while learning is `behind` the stream. When the stream is idle, or
    learning waits for the warm-up, it runs at full speed: a pause also ends once learning
    made no progress for `_IDLE_SLICE`. Sleeping releases the interpreter lock, unlike a lower
    OS priority: learning, on another thread of the same interpreter, never waits for a
    descheduled warm-up."""

    def __init__(
        self,
        share: float,
        cancelled: threading.Event,
        learned: Callable[[], int] = lambda: 0,
        behind: Callable[[], bool] = lambda: False,
    ) -> None:
        self.share, self.cancelled, self.learned, self.behind = share, cancelled, learned, behind
        self.mark, self.seen = time.thread_time(), learned()

    def __call__(self) -> None:
        share = self.share * _BEHIND if self.behind() else self.share
        if share < 1 and self.learned() != self.seen:
            self._sleep((time.thread_time() - self.mark) * (1 / share - 1))
        if self.cancelled.is_set():
            raise WarmUpCancelled("the learner was dropped during its PET warm-up")
        self.mark, self.seen = time.thread_time(), self.learned()

    def _sleep(self, pause: float) -> None:
        """Sleep `pause` seconds in slices, and stop once learning made no progress for a
        whole slice: the stream went idle, or learning waits for the warm-up."""
        end, seen = time.monotonic() + pause, self.learned()
        while (left := end - time.monotonic()) > 0:
            if self.cancelled.wait(min(left, _IDLE_SLICE)):
                return
            if (now := self.learned()) == seen:
                return
            seen = now


@dataclasses.dataclass
class _WarmedUp:
    """A warm-up's result: the PET and the head that learned the window and `learned` of the
    micro-batches kept meanwhile (`examples`: the stream position after them)."""

    module: PETModule
    head: RidgeHead
    selected: tuple[int, int]
    examples: int
    learned: int = 0


@functools.cache
def _warm_ups() -> ThreadPoolExecutor:
    """The thread that runs background warm-ups, one at a time (started on first use)."""
    return ThreadPoolExecutor(1, thread_name_prefix="pet-warm-up")


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

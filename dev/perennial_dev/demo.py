"""`make demo`: the whole system on the real local stack, on a real data stream.

Starts Tansu (Kafka) and Redis on free ports, the trainer and the inference
service as separate processes, then streams WordNet noun glosses labelled with
their supersense (noun.animal, noun.artifact, ...) through Kafka in
class-incremental order. A client queries the inference service over gRPC with
held-out examples while the stream runs, and answers some of its predictions with
feedback (the prediction log and the trainer's feedback join are on); the
terminal shows live progress and ends with a summary. Ctrl-C or the end of the
stream stops every process; with --keep the stack stays up, and the demo prints
how to use it and how to stop it.

With `--dataset fashion-mnist` both services run the image backbone
(`PERENNIAL_BACKBONE=image`, 1×28×28 grey images) and the stream is a subset of
Fashion-MNIST (Debian `dataset-fashion-mnist`) sent as FP32 tensor examples; the
client sends FP32 tensors. No feedback then: the prediction log keeps only an
image's hash, so there is no input to join an answer with.

    python -m perennial_dev.demo --help
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import redis
import tritonclient.grpc as triton
from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from tritonclient.utils import InferenceServerException

from perennial import codec
from perennial.config import ProcessSettings
from perennial.feedback import Feedback, encode_feedback, encode_feedback_json
from perennial.learners import FirstSessionLearner, LearnerConfig
from perennial.logs import silence_progress_bars
from perennial.runtime import load_backbone
from perennial.store import SnapshotStore, from_safetensors
from perennial_dev.datasets.wordnet import class_incremental_split, read_noun_glosses
from perennial_dev.launch import Service, start_inference, start_trainer, wait_consuming
from perennial_dev.localstack import LocalStack
from services.trainer.guardrail import GuardrailConfig

ADAPTER = "wordnet"  # the Fashion-MNIST stream's adapter is "fashion"
TOPIC = "perennial.examples"
DEAD_LETTER_TOPIC = "perennial.examples.dlq"
PREDICTIONS_TOPIC = "perennial.predictions"
FEEDBACK_TOPIC = "perennial.feedback"
REQUEST_TIMEOUT_SECONDS = 60.0
PET_WAIT_SECONDS = 600.0  # after the stream, for a PET warm-up under way (minutes on one core)
MALFORMED = (
    b"\x08\x96\x01not a protobuf",
    b'{"adapter": "wordnet", "text": "an example without a label"}',
)
IMAGE_SETTINGS = {  # both services, --dataset fashion-mnist
    "PERENNIAL_BACKBONE": "image",
    "PERENNIAL_IMAGE_SHAPE": "1,28,28",
    "PERENNIAL_IMAGE_SIZE": 32,  # 28-pixel images need no more; 4 times cheaper than 64
}
DATASETS = {  # per data set: its adapter and the defaults of the size options
    # enough examples per class for the default PET warm-up window (1024 trained examples, the
    # guardrail holding out every 10th) to close during the stream: about a minute at --rate 25
    "wordnet": {"adapter": "wordnet", "classes": 24, "train_per_class": 60, "test_per_class": 20},
    # a subset (70,000 images in the full set)
    "fashion-mnist": {
        "adapter": "fashion", "classes": 10, "train_per_class": 150, "test_per_class": 20,
        "feedback_per_class": 0, "classes_per_stage": 2,
    },
}  # fmt: skip


@dataclass(frozen=True)
class Sample:
    """One labelled input of the demo's stream or held-out sets: a text or a [28, 28] image."""

    input: object
    label: str
    id: str

    def example(self, adapter: str) -> codec.Example:
        if isinstance(self.input, str):
            return codec.Example(adapter, self.id, self.input, self.label, time.time())
        tensor = codec.Tensor.from_array(np.asarray(self.input)[None])  # [1, 28, 28]
        return codec.Example(adapter, self.id, "", self.label, time.time(), tensor)


@dataclass(frozen=True)
class Split:
    """A class-incremental stream for one adapter: classes in arrival order, their stages, the
    stream, and held-out samples per class (never streamed)."""

    adapter: str
    classes: tuple[str, ...]
    stages: tuple[tuple[str, ...], ...]
    train: tuple[Sample, ...]
    test: dict[str, tuple[Sample, ...]]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m perennial_dev.demo", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--dataset",
        choices=sorted(DATASETS),
        default="wordnet",
        help="the stream: WordNet glosses (text backbone) or Fashion-MNIST (image backbone)",
    )
    parser.add_argument(
        "--classes", type=int, default=None, help="classes to stream (max 24 WordNet, 10 images)"
    )
    parser.add_argument(
        "--classes-per-stage",
        type=int,
        default=None,
        help="new classes per arrival stage (default 4, images 2)",
    )
    parser.add_argument(
        "--train-per-class",
        type=int,
        default=None,
        help="streamed examples per class (default 60, images 150)",
    )
    parser.add_argument(
        "--test-per-class", type=int, default=None, help="held-out examples per class (20)"
    )
    parser.add_argument("--rate", type=float, default=25.0, help="examples produced per second")
    parser.add_argument("--batch-size", type=int, default=16, help="trainer micro-batch size")
    parser.add_argument("--snapshot-every", type=int, default=64, help="snapshot every N examples")
    parser.add_argument(
        "--eval-per-class", type=int, default=4, help="held-out examples per class in live checks"
    )
    parser.add_argument(
        "--eval-every",
        type=float,
        default=5.0,
        help="seconds between live checks (each asks about up to eval-per-class × classes "
        "held-out examples: a serving load on the cores the trainer learns on)",
    )
    parser.add_argument(
        "--feedback-per-class",
        type=int,
        default=None,
        help="further held-out examples per class the client asks about once and answers with "
        "feedback (learned by the trainer; never in the accuracy table; default 4, images 0)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="leave the stack running at the end and print how to use it (Ctrl-C stops it)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep logs here (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    defaults = {"classes_per_stage": 4, "feedback_per_class": 4, **DATASETS[args.dataset]}
    for name, value in defaults.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    if args.rate <= 0:
        parser.error(f"--rate must be positive, got {args.rate}")
    if args.eval_every < 0:
        parser.error(f"--eval-every must be >= 0, got {args.eval_every}")
    return args


# -- reading the services ------------------------------------------------------------------
def scrape(service: Service) -> dict[str, list]:
    """Metric samples by name (empty if the service does not answer)."""
    try:
        families = text_string_to_metric_families(service.scrape())
    except OSError:
        return {}
    samples: dict[str, list] = {}
    for family in families:
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def total(samples: dict[str, list], name: str) -> float:
    return sum(s.value for s in samples.get(name, []))


def histogram_quantile(samples: dict[str, list], name: str, q: float) -> float:
    """Prometheus-style quantile from cumulative buckets (linear inside a bucket)."""
    buckets = sorted((float(s.labels["le"]), s.value) for s in samples.get(f"{name}_bucket", []))
    if not buckets or buckets[-1][1] == 0:
        return math.nan
    rank, lower_bound, lower_count = q * buckets[-1][1], 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / max(
                count - lower_count, 1e-9
            )
        lower_bound, lower_count = bound, count
    return lower_bound


@dataclass
class Evaluation:
    """One live check of the served model on held-out examples."""

    version: str
    seen: float
    first: float
    per_stage: list[float]


@dataclass
class DemoState:
    """What the demo's live view shows, updated by its threads."""

    produced: int = 0
    stage: int = 0
    seen_classes: list[str] = field(default_factory=list)
    evaluation: Evaluation | None = None
    by_stage: dict[int, Evaluation] = field(default_factory=dict)  # last check within each stage
    versions: list[str] = field(default_factory=list)
    requests_ok: int = 0
    requests_failed: int = 0
    errors: list[str] = field(default_factory=list)
    answered: int = 0  # predictions the client answered with feedback
    answered_right: int = 0  # of those, how many the served label got right (client's count)
    feedback: bool = True  # off for images: the prediction log keeps only their hash


class Client:
    """Queries the inference service over gRPC with held-out examples, as a production client would."""

    def __init__(
        self,
        address: str,
        split: Split,
        traffic: dict[str, tuple[Sample, ...]] | None = None,
        bootstrap: str = "",
    ) -> None:
        self.adapter = split.adapter
        self.client = triton.InferenceServerClient(address)
        self.split = split
        self.traffic = traffic or {}  # asked once each, then answered with feedback
        self._asked = dict.fromkeys(self.traffic, 0)
        self.producer = (
            KafkaProducer(bootstrap_servers=bootstrap, acks="all") if bootstrap else None
        )
        self.last_ids: list[str] = []

    def predict(self, samples: list[Sample]) -> tuple[str, list[str]]:
        predictions, version, self.last_ids = [], "", []
        for start in range(0, len(samples), 64):
            tensor = _input([s.input for s in samples[start : start + 64]])
            result = self.client.infer(
                self.adapter,
                [tensor],
                outputs=[triton.InferRequestedOutput("label")],
                client_timeout=REQUEST_TIMEOUT_SECONDS,
            )
            parameters = result.get_response().parameters
            version = parameters["adapter_version"].string_param
            if "prediction_id" in parameters:  # the prediction log is on
                self.last_ids += parameters["prediction_id"].string_param.split(",")
            predictions += [label.decode() for label in result.as_numpy("label")]
        return version, predictions

    def answer(self, classes: list[str], state: DemoState) -> None:
        """Ask about the next unasked traffic gloss of each seen class, then tell the service
        the truth: one feedback record per prediction, as a client learns it later."""
        samples = []
        for label in classes:
            pool = self.traffic.get(label, ())
            if self._asked.get(label, 0) < len(pool):
                samples.append(pool[self._asked[label]])
                self._asked[label] += 1
        if not samples or self.producer is None:
            return
        _, served = self.predict(samples)
        for number, (sample, label, prediction_id) in enumerate(
            zip(samples, served, self.last_ids, strict=True)
        ):
            answer = Feedback(prediction_id, sample.label, time.time())
            # mostly protobuf; every third answer in the JSON form a person would send
            value = encode_feedback_json(answer) if number % 3 == 2 else encode_feedback(answer)
            self.producer.send(FEEDBACK_TOPIC, value=value)
            state.answered += 1
            state.answered_right += label == sample.label
        self.producer.flush()

    def evaluate(self, stages: int, per_class: int | None) -> Evaluation:
        """Accuracy on the held-out examples of the first `stages` stages (all, or `per_class` each)."""
        groups = [
            [g for c in stage for g in self.split.test[c][:per_class]]
            for stage in self.split.stages[:stages]
        ]
        version, predicted = self.predict([g for group in groups for g in group])
        correct, per_stage, position = 0, [], 0
        for group in groups:
            hits = sum(
                p == g.label
                for p, g in zip(predicted[position : position + len(group)], group, strict=False)
            )
            per_stage.append(hits / len(group))
            correct, position = correct + hits, position + len(group)
        return Evaluation(version, correct / position, per_stage[0], per_stage)


def _input(inputs: list) -> triton.InferInput:
    """Texts as BYTES [N], or images as FP32 [N, 28, 28]."""
    if isinstance(inputs[0], str):
        tensor = triton.InferInput("text", [len(inputs)], "BYTES")
        tensor.set_data_from_numpy(np.array([t.encode() for t in inputs], dtype=np.object_))
        return tensor
    batch = np.stack([np.asarray(image, dtype=np.float32) for image in inputs])
    tensor = triton.InferInput("image", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    return tensor


# -- the run -------------------------------------------------------------------------------
def produce(
    stack: LocalStack,
    split: Split,
    rate: float,
    state: DemoState,
    stop: threading.Event,
) -> None:
    adapter = split.adapter
    producer = KafkaProducer(bootstrap_servers=stack.bootstrap, acks="all", linger_ms=5)
    stage_of = {label: i for i, stage in enumerate(split.stages) for label in stage}
    started = time.monotonic()
    malformed_at = {len(split.train) // 3: MALFORMED[0], 2 * len(split.train) // 3: MALFORMED[1]}
    try:
        for index, sample in enumerate(split.train):
            if stop.is_set():
                return
            delay = started + index / rate - time.monotonic()
            if delay > 0 and stop.wait(delay):
                return
            example = sample.example(adapter)
            # mostly protobuf; every 10th record in the JSON form a person would type into kcat
            value = codec.encode_json(example) if index % 10 == 9 else codec.encode(example)
            producer.send(TOPIC, key=adapter.encode(), value=value)
            if index in malformed_at:  # bad input goes to the dead-letter topic, the stream goes on
                producer.send(TOPIC, key=adapter.encode(), value=malformed_at[index])
            if sample.label not in state.seen_classes:
                state.seen_classes.append(sample.label)
            state.stage = stage_of[sample.label]
            state.produced = index + 1
        producer.flush()
    finally:
        producer.close()


def render(
    state: DemoState,
    split: Split,
    trainer: dict,
    inference: dict,
    progress: Progress,
) -> Group:
    table = Table(show_header=False, box=None, padding=(0, 2))
    consumed = int(total(trainer, "perennial_trainer_examples_consumed_total"))
    evaluation = state.evaluation
    table.add_row(
        "stage",
        f"{state.stage + 1}/{len(split.stages)}  "
        f"({len(state.seen_classes)} of {len(split.classes)} classes seen)",
    )
    table.add_row(
        "examples",
        f"produced {state.produced}, consumed {consumed}, "
        f"dead-lettered {int(total(trainer, 'perennial_trainer_records_dead_lettered_total'))}",
    )
    table.add_row(
        "serving",
        (evaluation.version if evaluation else "waiting for the first snapshot")
        + f"  ({int(total(inference, 'perennial_inference_swaps_total'))} swaps)",
    )
    if evaluation:
        table.add_row(
            "accuracy",
            f"seen classes {evaluation.seen:.1%}, first-stage classes {evaluation.first:.1%}"
            f"  (chance {1 / max(len(state.seen_classes), 1):.1%})",
        )
    p50 = histogram_quantile(inference, "perennial_inference_freshness_seconds", 0.5)
    p99 = histogram_quantile(inference, "perennial_inference_freshness_seconds", 0.99)
    table.add_row("freshness", f"p50 {p50:.1f} s, p99 {p99:.1f} s" if not math.isnan(p50) else "-")
    warmup = trainer.get("perennial_trainer_warmup_progress_ratio")
    if warmup:
        table.add_row(
            "PET warm-up",
            "window filling or warm-up starting"
            if not warmup[0].value
            else f"{warmup[0].value:.0%} of its steps"
            + (" (on a thread of its own: learning goes on)" if warmup[0].value < 1 else ""),
        )
    table.add_row("requests", f"{state.requests_ok} ok, {state.requests_failed} failed")
    table.add_row("feedback", _feedback_note(trainer, state))
    return Group(progress, table)


def _feedback_note(trainer: dict, state: DemoState) -> str:
    """Served accuracy from feedback, as the trainer counts it (prequential)."""
    if not state.feedback:
        return "off (the prediction log keeps only an image's hash: nothing to join an answer to)"
    joined = total(trainer, "perennial_trainer_feedback_joined_total")
    right = sum(
        s.value
        for s in trainer.get("perennial_trainer_feedback_joined_total", [])
        if s.labels.get("served") == "correct"
    )
    if not joined:
        return f"{state.answered} predictions answered, none joined yet"
    return (
        f"served accuracy {right / joined:.1%} on {int(joined)} answered predictions "
        f"(prequential: judged as served, then learned; {state.answered} sent)"
    )


def summary(
    console: Console,
    state: DemoState,
    final: Evaluation,
    split: Split,
    inference: dict,
    elapsed: float,
    store: SnapshotStore,
    pet: str,
    trainer: dict,
    eval_per_class: int,
) -> None:
    per_class = len(next(iter(split.test.values())))
    table = Table(
        title="Per stage: accuracy on held-out examples, never streamed as examples nor answered "
        "with feedback (columns: the classes of stage i)",
        caption=f"Rows 1..T-1: the last live check during stage t ({eval_per_class} examples per "
        f"class); row T: all {per_class} per class after the stream. The guardrail's holdout is a "
        f"different set: every {GuardrailConfig.every}th streamed example of a class, which the "
        "trainer keeps out of learning to compare candidate and head before promoting.",
    )
    table.add_column("after stage")
    table.add_column("version")
    for i in range(len(split.stages)):
        table.add_column(f"S{i + 1}", justify="right")
    table.add_column("seen", justify="right")
    for stage, evaluation in sorted(state.by_stage.items()):
        cells = [f"{a:.0%}" for a in evaluation.per_stage] + [""] * (
            len(split.stages) - len(evaluation.per_stage)
        )
        name = (
            f"{stage + 1} (live check)" if stage < len(split.stages) - 1 else f"{stage + 1} (final)"
        )
        table.add_row(name, evaluation.version, *cells, f"{evaluation.seen:.1%}")
    console.print(table)
    head = store.head(split.adapter)
    forgetting = [
        max(e.per_stage[i] for s, e in state.by_stage.items() if len(e.per_stage) > i)
        - final.per_stage[i]
        for i in range(len(final.per_stage) - 1)
    ]
    results = Table(title="Summary", show_header=False)
    rows = [
        ("classes / stages", f"{len(split.classes)} / {len(split.stages)}"),
        (
            "examples streamed",
            f"{len(split.train)} (+{len(MALFORMED)} malformed, dead-lettered; "
            f"+{state.answered} answers sent as feedback)",
        ),
        (
            "final version served",
            f"{final.version} ({head.examples if head else 0} examples trained)",
        ),
        ("guardrail", _guardrail_note(store, split.adapter)),
        ("accuracy, all seen classes", f"{final.seen:.1%} (chance {1 / len(split.classes):.1%})"),
        ("accuracy, first-stage classes", f"{final.first:.1%}"),
        ("PET contribution", pet),
        ("served accuracy from feedback", _feedback_note(trainer, state)),
        (
            "prediction log",
            f"{int(total(inference, 'perennial_inference_predictions_logged_total'))} predictions "
            f"logged, {int(total(inference, 'perennial_inference_predictions_dropped_total'))} dropped",
        ),
        ("average forgetting (stages 1..T-1)", f"{np.mean(forgetting):.1%}" if forgetting else "-"),
        (
            "freshness p50 / p99",
            f"{histogram_quantile(inference, 'perennial_inference_freshness_seconds', 0.5):.1f} s"
            f" / {histogram_quantile(inference, 'perennial_inference_freshness_seconds', 0.99):.1f} s",
        ),
        ("versions swapped in", str(int(total(inference, "perennial_inference_swaps_total")))),
        ("client requests", f"{state.requests_ok} ok, {state.requests_failed} failed"),
        ("wall time", f"{elapsed:.0f} s"),
    ]
    for row in rows:
        results.add_row(*row)
    console.print(results)


def pet_contribution(store: SnapshotStore, split: Split, final: Evaluation) -> str:
    """The served accuracy beside that of the same learner without its adapted features: the
    head of the served version's configuration fitted here on the frozen features of the same
    stream (the guardrail's holdout included), scored on the same held-out examples."""
    head = store.head(split.adapter)
    if head is None:
        return "-"
    _, blob = store.fetch(split.adapter, head.version)
    tensors, metadata = from_safetensors(blob)
    config = LearnerConfig.from_dict(json.loads(metadata["learner"]))
    if config.learner != FirstSessionLearner.name:
        return f"- (the {config.learner} learner adapts no PET module)"
    if not any(name.startswith("pet.") for name in tensors):
        return "- (no PET in the served version: the stream ended before its warm-up)"
    silence_progress_bars()  # the summary, not a loading bar
    backbone = load_backbone(ProcessSettings(**_backbone_settings(split)))
    frozen_only = FirstSessionLearner(backbone, config)
    inputs, labels = [s.input for s in split.train], [s.label for s in split.train]
    for start in range(0, len(inputs), 64):
        features = frozen_only.features(inputs[start : start + 64], None)
        frozen_only.learn_features(features, labels[start : start + 64])
    test = [s for stage in split.stages for c in stage for s in split.test[c]]
    predicted = []
    for start in range(0, len(test), 64):
        features = frozen_only.features([s.input for s in test[start : start + 64]], None)
        scores = frozen_only.scores_features(features)
        predicted += [frozen_only.classes[i] for i in scores.argmax(-1).tolist()]
    frozen = sum(p == g.label for p, g in zip(predicted, test, strict=True)) / len(test)
    return (
        f"{final.seen - frozen:+.1%}: served {final.seen:.1%} with the adapted features, "
        f"{frozen:.1%} for the same head on frozen features only"
    )


def holds_pet(store: SnapshotStore, adapter: str, version: str) -> bool:
    """Whether a version serves through a PET (FSA: once its warm-up is swapped in)."""
    tensors, _ = from_safetensors(store.fetch(adapter, version)[1])
    return any(name.startswith("pet.") for name in tensors)


def _guardrail_note(store: SnapshotStore, adapter: str) -> str:
    head, latest = store.head(adapter), store.latest(adapter)
    if head is None or latest is None or head.version == latest.version:
        return "every candidate promoted" if head else "-"
    return (
        f"candidate {latest.version} held: accuracy on known classes "
        f"{latest.metrics.get('candidate_accuracy', float('nan')):.0%} vs head "
        f"{latest.metrics.get('head_accuracy', float('nan')):.0%}"
    )


def _backbone_settings(split: Split) -> dict[str, object]:
    """The backbone settings both services (and the PET-contribution check) run with."""
    if isinstance(split.train[0].input, str):
        return {}
    return {name.removeprefix("PERENNIAL_").lower(): v for name, v in IMAGE_SETTINGS.items()}


def load_split(args: argparse.Namespace) -> Split:
    """The data set's class-incremental split, with `test_per_class + feedback_per_class`
    held-out samples per class."""
    held_out = args.test_per_class + args.feedback_per_class
    if args.dataset == "fashion-mnist":
        from perennial_dev.datasets.fashion_mnist import CLASSES, class_incremental_images

        if not 1 <= args.classes <= len(CLASSES):
            raise SystemExit(f"--classes must be 1..{len(CLASSES)} for fashion-mnist")
        images = class_incremental_images(
            classes_per_stage=args.classes_per_stage,
            train_per_class=args.train_per_class,
            test_per_class=held_out,
            seed=args.seed,
        )
        classes = images.classes[: args.classes]
        train = tuple(
            Sample(image.numpy(), label, f"train-{i}")
            for i, (image, label) in enumerate(images.train)
            if label in classes
        )
        test = {
            c: tuple(Sample(x.numpy(), c, f"test-{c}-{i}") for i, x in enumerate(images.test[c]))
            for c in classes
        }
        stages = tuple(
            s for s in (tuple(c for c in st if c in classes) for st in images.stages) if s
        )
        return Split(DATASETS[args.dataset]["adapter"], classes, stages, train, test)
    glosses = class_incremental_split(
        read_noun_glosses(),
        num_classes=args.classes,
        classes_per_stage=args.classes_per_stage,
        train_per_class=args.train_per_class,
        test_per_class=held_out,
        seed=args.seed,
    )
    return Split(
        ADAPTER,
        tuple(glosses.classes),
        tuple(tuple(stage) for stage in glosses.stages),
        tuple(Sample(g.text, g.label, g.synset) for g in glosses.train),
        {c: tuple(Sample(g.text, g.label, g.synset) for g in gs) for c, gs in glosses.test.items()},
    )


def run(args: argparse.Namespace, console: Console) -> int:
    split = load_split(args)
    # The held-out samples of each class: the first ones only ever measure (never streamed,
    # never answered); the rest are the client's traffic, asked once and answered with feedback.
    traffic = {c: samples[args.test_per_class :] for c, samples in split.test.items()}
    split = dataclasses.replace(
        split, test={c: samples[: args.test_per_class] for c, samples in split.test.items()}
    )
    images = args.dataset == "fashion-mnist"
    backbone = IMAGE_SETTINGS if images else {}
    what = "Fashion-MNIST images" if images else "WordNet glosses"
    console.print(
        f"[bold]Perennial demo[/]: {len(split.train)} {what}, {len(split.classes)} classes "
        f"in {len(split.stages)} stages, {args.rate:g} examples/s"
    )
    started = time.monotonic()
    state, stop = DemoState(feedback=args.feedback_per_class > 0), threading.Event()
    services: list[Service] = []
    topics = {TOPIC: 1, DEAD_LETTER_TOPIC: 1, PREDICTIONS_TOPIC: 1, FEEDBACK_TOPIC: 1}
    with LocalStack(args.workdir, topics=topics, keep_workdir=args.workdir is not None) as stack:
        console.print(f"broker {stack.bootstrap}, redis {stack.redis_url}; logs in {stack.workdir}")
        try:
            with console.status(
                "starting the inference service and the trainer (loading the backbone)"
            ):
                services.append(
                    start_inference(
                        stack.workdir,
                        redis_url=stack.redis_url,
                        PERENNIAL_PREDICTION_LOG="true",  # off by default in the service
                        PERENNIAL_KAFKA_BOOTSTRAP=stack.bootstrap,
                        **backbone,
                    )
                )
                services.append(
                    start_trainer(
                        stack.workdir,
                        bootstrap=stack.bootstrap,
                        redis_url=stack.redis_url,
                        PERENNIAL_BATCH_SIZE=args.batch_size,
                        PERENNIAL_SNAPSHOT_EVERY_EXAMPLES=args.snapshot_every,
                        PERENNIAL_SEED=args.seed,
                        PERENNIAL_FEEDBACK=str(args.feedback_per_class > 0).lower(),
                        **backbone,
                    )
                )
            inference, trainer = services
            # the stream starts once the trainer consumes: a new consumer group takes seconds to
            # join, and examples produced meanwhile would wait for it (the freshness of a start)
            with console.status("waiting for the trainer to join its consumer group"):
                wait_consuming(trainer, TOPIC)
            store = SnapshotStore(redis.Redis.from_url(stack.redis_url))
            client = Client(inference.grpc_address, split, traffic, stack.bootstrap)
            producer = threading.Thread(
                target=produce, args=(stack, split, args.rate, state, stop), daemon=True
            )
            producer.start()
            progress = Progress(
                TextColumn("streaming"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total}"),
                TimeElapsedColumn(),
            )
            task = progress.add_task("stream", total=len(split.train))
            ended = 0.0  # when the stream was learned and served, if the PET was still warming up
            checked = -math.inf  # when the last live check ran
            with Live(console=console, refresh_per_second=4) as live:
                while True:
                    trainer_metrics, inference_metrics = scrape(trainer), scrape(inference)
                    progress.update(task, completed=state.produced)
                    stages_seen = state.stage + 1 if state.produced else 0
                    head = store.head(split.adapter)
                    if (
                        head is not None
                        and stages_seen
                        and time.monotonic() - checked >= args.eval_every
                    ):
                        checked = time.monotonic()
                        try:
                            evaluation = client.evaluate(stages_seen, args.eval_per_class)
                            state.evaluation = evaluation
                            state.by_stage[len(evaluation.per_stage) - 1] = evaluation
                            client.answer(state.seen_classes, state)
                            state.requests_ok += 1
                        except InferenceServerException as error:
                            state.requests_failed += 1
                            state.errors.append(str(error))
                    live.update(render(state, split, trainer_metrics, inference_metrics, progress))
                    latest = store.latest(split.adapter)
                    records = len(split.train) + len(MALFORMED)
                    done = (
                        not producer.is_alive()
                        and latest is not None
                        and latest.offsets.get(f"{TOPIC}:0", 0) >= records
                    )
                    served = state.evaluation and state.evaluation.version == (
                        head.version if head else None
                    )
                    if done and served:
                        # a PET warm-up under way when the stream ended: wait for its version
                        # (its window closes at the default size with this stream's classes)
                        warm_up = trainer_metrics.get("perennial_trainer_warmup_progress_ratio")
                        warming = warm_up and (
                            warm_up[0].value > 0 or latest.examples >= LearnerConfig.warmup_examples
                        )
                        if not warming or holds_pet(store, split.adapter, head.version):
                            break
                        ended = ended or time.monotonic()
                        if time.monotonic() - ended > PET_WAIT_SECONDS:
                            console.print(
                                "the PET's warm-up did not end in time; summary without it"
                            )
                            break
                    if not trainer.process.alive or not inference.process.alive:
                        raise RuntimeError(f"a service died; see the logs in {stack.workdir}")
                    stop.wait(1.0)
            with console.status("final evaluation on every held-out example"):
                final = client.evaluate(len(split.stages), None)
                state.by_stage[len(split.stages) - 1] = final
            with console.status("the PET's contribution: the same head on frozen features only"):
                pet = pet_contribution(store, split, final)
            with console.status("waiting for the trainer to join the last feedback"):
                deadline = time.monotonic() + 60
                while (
                    total(scrape(trainer), "perennial_trainer_feedback_joined_total")
                    < state.answered
                    and time.monotonic() < deadline
                ):
                    stop.wait(0.5)
            summary(
                console,
                state,
                final,
                split,
                scrape(inference),
                time.monotonic() - started,
                store,
                pet,
                scrape(trainer),
                args.eval_per_class,
            )
            if args.keep:
                explain_kept(console, stack, inference, trainer, split.adapter)
                try:
                    threading.Event().wait()
                except KeyboardInterrupt:
                    console.print("stopping the stack")
            return 0 if state.requests_failed == 0 else 1
        finally:
            stop.set()
            for service in reversed(services):
                service.stop()


def explain_kept(
    console: Console,
    stack: LocalStack,
    inference: Service,
    trainer: Service,
    adapter: str = ADAPTER,
) -> None:
    """--keep: where everything is and the exact commands to try."""
    grpc, rest, control = (
        inference.grpc_address,
        f"http://{inference.rest_address}",
        trainer.grpc_address,
    )
    lines = [
        "The stack is still running (--keep).",
        f"  Kafka      {stack.bootstrap}  (topics {TOPIC}, {FEEDBACK_TOPIC}, {PREDICTIONS_TOPIC}, "
        f"{DEAD_LETTER_TOPIC})",
        f"  Redis      {stack.redis_url}",
        f"  inference  gRPC {grpc}, REST {rest}, metrics {inference.metrics_url}",
        f"  trainer    control API {control}, metrics {trainer.metrics_url}",
        f"  logs       {stack.workdir}",
        "",
        "The trainer's control API, with the `perennial` CLI:",
        f"  perennial --target {control} status {adapter}",
        f"  perennial --target {control} versions {adapter}",
        "Ask the model with tritonclient (gRPC) and over REST:",
        *(_ask_text(grpc, rest, stack) if adapter == ADAPTER else _ask_image(grpc, rest, adapter)),
        "Watch the metrics:",
        f"  python examples/watch_metrics.py --trainer http://127.0.0.1:{trainer.metrics_port} "
        f"--inference http://127.0.0.1:{inference.metrics_port}",
        "",
        "Stop everything: press Ctrl-C here (or kill -INT "
        f"{os.getpid()}): the trainer, inference, Kafka and Redis stop with the demo.",
    ]
    for line in lines:  # commands are printed verbatim: no markup, no wrapping
        bold = line.startswith(("The stack", "Stop everything"))
        console.print(
            line, markup=False, highlight=False, soft_wrap=True, style="bold" if bold else None
        )


def _ask_image(grpc: str, rest: str, adapter: str) -> list[str]:
    """Commands that send one all-grey 28×28 image (FP32) over gRPC and REST."""
    body = (
        "import json; print(json.dumps({'inputs': [{'name': 'image', 'datatype': 'FP32', "
        "'shape': [1, 28, 28], 'data': [0.5] * 784}]}))"
    )
    return [
        f"  python -c \"import numpy as np, tritonclient.grpc as t; i = t.InferInput('image', "
        f"[1, 28, 28], 'FP32'); i.set_data_from_numpy(np.full((1, 28, 28), 0.5, np.float32)); "
        f"r = t.InferenceServerClient('{grpc}').infer('{adapter}', [i]); "
        f"print(r.as_numpy('label'), r.get_response().parameters)\"",
        f'  python -c "{body}" | curl -s {rest}/v2/models/{adapter}/infer -d @-',
    ]


def _ask_text(grpc: str, rest: str, stack: LocalStack) -> list[str]:
    """Commands that ask about a gloss over gRPC and REST and answer it with feedback."""
    text = "a domesticated carnivorous mammal that barks"
    body = json.dumps(
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]}
    )
    return [
        f'  python examples/query_grpc.py --url {grpc} --adapter {ADAPTER} "{text}"',
        f"  python -c \"import numpy as np, tritonclient.grpc as t; i = t.InferInput('text', [1], "
        f"'BYTES'); i.set_data_from_numpy(np.array([b'{text}'], dtype=object)); "
        f"r = t.InferenceServerClient('{grpc}').infer('{ADAPTER}', [i]); "
        f"print(r.as_numpy('label'), r.get_response().parameters)\"",
        f"  curl -s {rest}/v2/models/{ADAPTER}/infer -d '{body}'",
        "Answer a prediction (its prediction_id is in the answer's parameters):",
        f"  python examples/send_feedback.py --bootstrap {stack.bootstrap} PREDICTION_ID=noun.animal",
        "Produce more examples: python examples/produce_json.py --bootstrap "
        f"{stack.bootstrap} (docs/QUICKSTART.md)",
    ]


def _interrupt(signum: int, _frame) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console()
    for signum in (signal.SIGINT, signal.SIGTERM):  # also when started with SIGINT ignored
        signal.signal(signum, _interrupt)
    try:
        return run(args, console)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: every process the demo started has been stopped[/]")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

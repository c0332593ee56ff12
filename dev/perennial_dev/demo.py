"""`make demo`: the whole system on the real local stack, on a real data stream.

Starts Tansu (Kafka) and Redis on free ports, the trainer and the inference
service as separate processes, then streams WordNet noun glosses labelled with
their supersense (noun.animal, noun.artifact, ...) through Kafka in
class-incremental order. A client queries the inference service over gRPC with
held-out glosses while the stream runs; the terminal shows live progress and
ends with a summary. Ctrl-C or the end of the stream stops every process.

    python -m perennial_dev.demo --help
"""

from __future__ import annotations

import argparse
import json
import math
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
from perennial.learners import FirstSessionLearner, LearnerConfig
from perennial.runtime import load_backbone
from perennial.store import SnapshotStore, from_safetensors
from perennial_dev.datasets.wordnet import (
    ClassIncrementalSplit,
    Gloss,
    class_incremental_split,
    read_noun_glosses,
)
from perennial_dev.launch import Service, start_inference, start_trainer
from perennial_dev.localstack import LocalStack

ADAPTER = "wordnet"
TOPIC = "perennial.examples"
DEAD_LETTER_TOPIC = "perennial.examples.dlq"
REQUEST_TIMEOUT_SECONDS = 60.0
MALFORMED = (
    b"\x08\x96\x01not a protobuf",
    b'{"adapter": "wordnet", "text": "an example without a label"}',
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m perennial_dev.demo", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--classes", type=int, default=24, help="supersenses to stream (max 24)")
    parser.add_argument(
        "--classes-per-stage", type=int, default=4, help="new classes per arrival stage"
    )
    parser.add_argument(
        "--train-per-class", type=int, default=40, help="streamed glosses per class"
    )
    parser.add_argument("--test-per-class", type=int, default=20, help="held-out glosses per class")
    parser.add_argument("--rate", type=float, default=25.0, help="examples produced per second")
    parser.add_argument("--batch-size", type=int, default=16, help="trainer micro-batch size")
    parser.add_argument("--snapshot-every", type=int, default=64, help="snapshot every N examples")
    parser.add_argument(
        "--eval-per-class", type=int, default=4, help="held-out glosses per class in live checks"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep logs here (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    if args.rate <= 0:
        parser.error(f"--rate must be positive, got {args.rate}")
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
    """One live check of the served model on held-out glosses."""

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


class Client:
    """Queries the inference service over gRPC with held-out glosses, as a production client would."""

    def __init__(self, address: str, split: ClassIncrementalSplit) -> None:
        self.client = triton.InferenceServerClient(address)
        self.split = split

    def predict(self, glosses: list[Gloss]) -> tuple[str, list[str]]:
        predictions, version = [], ""
        for start in range(0, len(glosses), 64):
            texts = np.array(
                [g.text.encode() for g in glosses[start : start + 64]], dtype=np.object_
            )
            tensor = triton.InferInput("text", [len(texts)], "BYTES")
            tensor.set_data_from_numpy(texts)
            result = self.client.infer(
                ADAPTER,
                [tensor],
                outputs=[triton.InferRequestedOutput("label")],
                client_timeout=REQUEST_TIMEOUT_SECONDS,
            )
            version = result.get_response().parameters["adapter_version"].string_param
            predictions += [label.decode() for label in result.as_numpy("label")]
        return version, predictions

    def evaluate(self, stages: int, per_class: int | None) -> Evaluation:
        """Accuracy on the held-out glosses of the first `stages` stages (all, or `per_class` each)."""
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


# -- the run -------------------------------------------------------------------------------
def produce(
    stack: LocalStack,
    split: ClassIncrementalSplit,
    rate: float,
    state: DemoState,
    stop: threading.Event,
) -> None:
    producer = KafkaProducer(bootstrap_servers=stack.bootstrap, acks="all", linger_ms=5)
    stage_of = {label: i for i, stage in enumerate(split.stages) for label in stage}
    started = time.monotonic()
    malformed_at = {len(split.train) // 3: MALFORMED[0], 2 * len(split.train) // 3: MALFORMED[1]}
    try:
        for index, gloss in enumerate(split.train):
            if stop.is_set():
                return
            delay = started + index / rate - time.monotonic()
            if delay > 0 and stop.wait(delay):
                return
            example = codec.Example(ADAPTER, gloss.synset, gloss.text, gloss.label, time.time())
            # mostly protobuf; every 10th record in the JSON form a person would type into kcat
            value = codec.encode_json(example) if index % 10 == 9 else codec.encode(example)
            producer.send(TOPIC, key=ADAPTER.encode(), value=value)
            if index in malformed_at:  # bad input goes to the dead-letter topic, the stream goes on
                producer.send(TOPIC, key=ADAPTER.encode(), value=malformed_at[index])
            if gloss.label not in state.seen_classes:
                state.seen_classes.append(gloss.label)
            state.stage = stage_of[gloss.label]
            state.produced = index + 1
        producer.flush()
    finally:
        producer.close()


def render(
    state: DemoState,
    split: ClassIncrementalSplit,
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
    table.add_row("requests", f"{state.requests_ok} ok, {state.requests_failed} failed")
    return Group(progress, table)


def summary(
    console: Console,
    state: DemoState,
    final: Evaluation,
    split: ClassIncrementalSplit,
    inference: dict,
    elapsed: float,
    store: SnapshotStore,
    pet: str,
) -> None:
    table = Table(
        title="Per stage: accuracy on held-out glosses (rows: after stage t; columns: stage i's classes)"
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
        table.add_row(str(stage + 1), evaluation.version, *cells, f"{evaluation.seen:.1%}")
    console.print(table)
    head = store.head(ADAPTER)
    forgetting = [
        max(e.per_stage[i] for s, e in state.by_stage.items() if len(e.per_stage) > i)
        - final.per_stage[i]
        for i in range(len(final.per_stage) - 1)
    ]
    results = Table(title="Summary", show_header=False)
    rows = [
        ("classes / stages", f"{len(split.classes)} / {len(split.stages)}"),
        ("examples streamed", f"{len(split.train)} (+{len(MALFORMED)} malformed, dead-lettered)"),
        (
            "final version served",
            f"{final.version} ({head.examples if head else 0} examples trained)",
        ),
        ("guardrail", _guardrail_note(store)),
        ("accuracy, all seen classes", f"{final.seen:.1%} (chance {1 / len(split.classes):.1%})"),
        ("accuracy, first-stage classes", f"{final.first:.1%}"),
        ("PET contribution", pet),
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


def pet_contribution(store: SnapshotStore, split: ClassIncrementalSplit, final: Evaluation) -> str:
    """The served accuracy beside that of the same learner without its adapted features: the
    head of the served version's configuration fitted here on the frozen features of the same
    stream (the guardrail's holdout included), scored on the same held-out glosses."""
    head = store.head(ADAPTER)
    if head is None:
        return "-"
    _, blob = store.fetch(ADAPTER, head.version)
    tensors, metadata = from_safetensors(blob)
    config = LearnerConfig.from_dict(json.loads(metadata["learner"]))
    if config.learner != FirstSessionLearner.name:
        return f"- (the {config.learner} learner adapts no PET module)"
    if not any(name.startswith("pet.") for name in tensors):
        return "- (the stream ended before the PET's warm-up window closed)"
    backbone = load_backbone(ProcessSettings())
    frozen_only = FirstSessionLearner(backbone, config)
    texts, labels = [g.text for g in split.train], [g.label for g in split.train]
    for start in range(0, len(texts), 64):
        features = frozen_only.features(texts[start : start + 64], None)
        frozen_only.learn_features(features, labels[start : start + 64])
    test = [g for stage in split.stages for c in stage for g in split.test[c]]
    predicted = []
    for start in range(0, len(test), 64):
        features = frozen_only.features([g.text for g in test[start : start + 64]], None)
        scores = frozen_only.scores_features(features)
        predicted += [frozen_only.classes[i] for i in scores.argmax(-1).tolist()]
    frozen = sum(p == g.label for p, g in zip(predicted, test, strict=True)) / len(test)
    return (
        f"{final.seen - frozen:+.1%}: served {final.seen:.1%} with the adapted features, "
        f"{frozen:.1%} for the same head on frozen features only"
    )


def _guardrail_note(store: SnapshotStore) -> str:
    head, latest = store.head(ADAPTER), store.latest(ADAPTER)
    if head is None or latest is None or head.version == latest.version:
        return "every candidate promoted" if head else "-"
    return (
        f"candidate {latest.version} held: accuracy on known classes "
        f"{latest.metrics.get('candidate_accuracy', float('nan')):.0%} vs head "
        f"{latest.metrics.get('head_accuracy', float('nan')):.0%}"
    )


def run(args: argparse.Namespace, console: Console) -> int:
    glosses = read_noun_glosses()
    split = class_incremental_split(
        glosses,
        num_classes=args.classes,
        classes_per_stage=args.classes_per_stage,
        train_per_class=args.train_per_class,
        test_per_class=args.test_per_class,
        seed=args.seed,
    )
    console.print(
        f"[bold]Perennial demo[/]: {len(split.train)} WordNet glosses, {len(split.classes)} supersenses "
        f"in {len(split.stages)} stages, {args.rate:g} examples/s"
    )
    started = time.monotonic()
    state, stop = DemoState(), threading.Event()
    services: list[Service] = []
    with LocalStack(
        args.workdir, topics={TOPIC: 1, DEAD_LETTER_TOPIC: 1}, keep_workdir=args.workdir is not None
    ) as stack:
        console.print(f"broker {stack.bootstrap}, redis {stack.redis_url}; logs in {stack.workdir}")
        try:
            with console.status(
                "starting the inference service and the trainer (loading the backbone)"
            ):
                services.append(start_inference(stack.workdir, redis_url=stack.redis_url))
                services.append(
                    start_trainer(
                        stack.workdir,
                        bootstrap=stack.bootstrap,
                        redis_url=stack.redis_url,
                        PERENNIAL_BATCH_SIZE=args.batch_size,
                        PERENNIAL_SNAPSHOT_EVERY_EXAMPLES=args.snapshot_every,
                        PERENNIAL_SEED=args.seed,
                    )
                )
            inference, trainer = services
            store = SnapshotStore(redis.Redis.from_url(stack.redis_url))
            client = Client(inference.grpc_address, split)
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
            with Live(console=console, refresh_per_second=4) as live:
                while True:
                    trainer_metrics, inference_metrics = scrape(trainer), scrape(inference)
                    progress.update(task, completed=state.produced)
                    stages_seen = state.stage + 1 if state.produced else 0
                    head = store.head(ADAPTER)
                    if head is not None and stages_seen:
                        try:
                            evaluation = client.evaluate(stages_seen, args.eval_per_class)
                            state.evaluation = evaluation
                            state.by_stage[len(evaluation.per_stage) - 1] = evaluation
                            state.requests_ok += 1
                        except InferenceServerException as error:
                            state.requests_failed += 1
                            state.errors.append(str(error))
                    live.update(render(state, split, trainer_metrics, inference_metrics, progress))
                    latest = store.latest(ADAPTER)
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
                        break
                    if not trainer.process.alive or not inference.process.alive:
                        raise RuntimeError(f"a service died; see the logs in {stack.workdir}")
                    stop.wait(1.0)
            with console.status("final evaluation on every held-out gloss"):
                final = client.evaluate(len(split.stages), None)
                state.by_stage[len(split.stages) - 1] = final
            with console.status("the PET's contribution: the same head on frozen features only"):
                pet = pet_contribution(store, split, final)
            summary(
                console,
                state,
                final,
                split,
                scrape(inference),
                time.monotonic() - started,
                store,
                pet,
            )
            return 0 if state.requests_failed == 0 else 1
        finally:
            stop.set()
            for service in reversed(services):
                service.stop()


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

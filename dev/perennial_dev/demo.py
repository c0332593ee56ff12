"""`make demo`: the whole system on the real local stack, on a real data stream.

Starts Tansu (Kafka) and Redis on free ports, the trainer and the inference
service as separate processes, then streams WordNet noun glosses labelled with
their supersense (noun.animal, noun.artifact, ...) through Kafka in
class-incremental order. A client queries the inference service over gRPC with
held-out glosses while the stream runs, and answers some of its predictions with
feedback (the prediction log and the trainer's feedback join are on); the
terminal shows live progress and ends with a summary. Ctrl-C or the end of the
stream stops every process; with --keep the stack stays up, and the demo prints
how to use it and how to stop it.

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
from perennial_dev.datasets.wordnet import (
    ClassIncrementalSplit,
    Gloss,
    class_incremental_split,
    read_noun_glosses,
)
from perennial_dev.launch import Service, start_inference, start_trainer
from perennial_dev.localstack import LocalStack
from services.trainer.guardrail import GuardrailConfig

ADAPTER = "wordnet"
TOPIC = "perennial.examples"
DEAD_LETTER_TOPIC = "perennial.examples.dlq"
PREDICTIONS_TOPIC = "perennial.predictions"
FEEDBACK_TOPIC = "perennial.feedback"
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
    parser.add_argument(
        "--feedback-per-class",
        type=int,
        default=4,
        help="further held-out glosses per class the client asks about once and answers with "
        "feedback (learned by the trainer; never in the accuracy table)",
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
    answered: int = 0  # predictions the client answered with feedback
    answered_right: int = 0  # of those, how many the served label got right (client's count)


class Client:
    """Queries the inference service over gRPC with held-out glosses, as a production client would."""

    def __init__(
        self,
        address: str,
        split: ClassIncrementalSplit,
        traffic: dict[str, tuple[Gloss, ...]] | None = None,
        bootstrap: str = "",
    ) -> None:
        self.client = triton.InferenceServerClient(address)
        self.split = split
        self.traffic = traffic or {}  # asked once each, then answered with feedback
        self._asked = dict.fromkeys(self.traffic, 0)
        self.producer = (
            KafkaProducer(bootstrap_servers=bootstrap, acks="all") if bootstrap else None
        )
        self.last_ids: list[str] = []

    def predict(self, glosses: list[Gloss]) -> tuple[str, list[str]]:
        predictions, version, self.last_ids = [], "", []
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
            parameters = result.get_response().parameters
            version = parameters["adapter_version"].string_param
            if "prediction_id" in parameters:  # the prediction log is on
                self.last_ids += parameters["prediction_id"].string_param.split(",")
            predictions += [label.decode() for label in result.as_numpy("label")]
        return version, predictions

    def answer(self, classes: list[str], state: DemoState) -> None:
        """Ask about the next unasked traffic gloss of each seen class, then tell the service
        the truth: one feedback record per prediction, as a client learns it later."""
        glosses = []
        for label in classes:
            pool = self.traffic.get(label, ())
            if self._asked.get(label, 0) < len(pool):
                glosses.append(pool[self._asked[label]])
                self._asked[label] += 1
        if not glosses or self.producer is None:
            return
        _, served = self.predict(glosses)
        for number, (gloss, label, prediction_id) in enumerate(
            zip(glosses, served, self.last_ids, strict=True)
        ):
            answer = Feedback(prediction_id, gloss.label, time.time())
            # mostly protobuf; every third answer in the JSON form a person would send
            value = encode_feedback_json(answer) if number % 3 == 2 else encode_feedback(answer)
            self.producer.send(FEEDBACK_TOPIC, value=value)
            state.answered += 1
            state.answered_right += label == gloss.label
        self.producer.flush()

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
    table.add_row("feedback", _feedback_note(trainer, state))
    return Group(progress, table)


def _feedback_note(trainer: dict, state: DemoState) -> str:
    """Served accuracy from feedback, as the trainer counts it (prequential)."""
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
    split: ClassIncrementalSplit,
    inference: dict,
    elapsed: float,
    store: SnapshotStore,
    pet: str,
    trainer: dict,
    eval_per_class: int,
) -> None:
    per_class = len(next(iter(split.test.values())))
    table = Table(
        title="Per stage: accuracy on held-out glosses, never streamed as examples nor answered "
        "with feedback (columns: the classes of stage i)",
        caption=f"Rows 1..T-1: the last live check during stage t ({eval_per_class} glosses per "
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
    head = store.head(ADAPTER)
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
        ("guardrail", _guardrail_note(store)),
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
    silence_progress_bars()  # the summary, not a loading bar
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
        test_per_class=args.test_per_class + args.feedback_per_class,
        seed=args.seed,
    )
    # The held-out glosses of each class: the first ones only ever measure (never streamed,
    # never answered); the rest are the client's traffic, asked once and answered with feedback.
    traffic = {c: glosses[args.test_per_class :] for c, glosses in split.test.items()}
    split = dataclasses.replace(
        split, test={c: glosses[: args.test_per_class] for c, glosses in split.test.items()}
    )
    console.print(
        f"[bold]Perennial demo[/]: {len(split.train)} WordNet glosses, {len(split.classes)} supersenses "
        f"in {len(split.stages)} stages, {args.rate:g} examples/s"
    )
    started = time.monotonic()
    state, stop = DemoState(), threading.Event()
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
                        PERENNIAL_FEEDBACK="true",
                    )
                )
            inference, trainer = services
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
                            client.answer(state.seen_classes, state)
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
                explain_kept(console, stack, inference, trainer)
                try:
                    threading.Event().wait()
                except KeyboardInterrupt:
                    console.print("stopping the stack")
            return 0 if state.requests_failed == 0 else 1
        finally:
            stop.set()
            for service in reversed(services):
                service.stop()


def explain_kept(console: Console, stack: LocalStack, inference: Service, trainer: Service) -> None:
    """--keep: where everything is and the exact commands to try."""
    grpc, rest, control = (
        inference.grpc_address,
        f"http://{inference.rest_address}",
        trainer.grpc_address,
    )
    text = "a domesticated carnivorous mammal that barks"
    body = json.dumps(
        {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [text]}]}
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
        f"  perennial --target {control} status {ADAPTER}",
        f"  perennial --target {control} versions {ADAPTER}",
        "Ask the model with tritonclient (gRPC) and over REST:",
        f'  python examples/query_grpc.py --url {grpc} --adapter {ADAPTER} "{text}"',
        f"  python -c \"import numpy as np, tritonclient.grpc as t; i = t.InferInput('text', [1], "
        f"'BYTES'); i.set_data_from_numpy(np.array([b'{text}'], dtype=object)); "
        f"r = t.InferenceServerClient('{grpc}').infer('{ADAPTER}', [i]); "
        f"print(r.as_numpy('label'), r.get_response().parameters)\"",
        f"  curl -s {rest}/v2/models/{ADAPTER}/infer -d '{body}'",
        "Answer a prediction (its prediction_id is in the answer's parameters), then watch:",
        f"  python examples/send_feedback.py --bootstrap {stack.bootstrap} PREDICTION_ID=noun.animal",
        f"  python examples/watch_metrics.py --trainer http://127.0.0.1:{trainer.metrics_port} "
        f"--inference http://127.0.0.1:{inference.metrics_port}",
        "Produce more examples: python examples/produce_json.py --bootstrap "
        f"{stack.bootstrap} (docs/QUICKSTART.md)",
        "",
        "Stop everything: press Ctrl-C here (or kill -INT "
        f"{os.getpid()}): the trainer, inference, Kafka and Redis stop with the demo.",
    ]
    for line in lines:  # commands are printed verbatim: no markup, no wrapping
        bold = line.startswith(("The stack", "Stop everything"))
        console.print(
            line, markup=False, highlight=False, soft_wrap=True, style="bold" if bold else None
        )


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

"""`make bench-slow-pet`: does FSA gain from a PET that keeps adapting after its warm-up?

Issue 11 asks for one variant that keeps adapting after the warm-up (SLCA++/SSIAT-style slow
PET learning), kept only if it wins on validation. The variant: after FSA's warm-up (the
library's, with the warm-up and head width the last `make bench-learning` chose on validation),
every micro-batch of 16

1. adds its [frozen ⊕ adapted] features, computed by the PET as it is now, to the ridge head's
   statistics, exactly as FSA does; then
2. takes one Adam step on the PET at a slow learning rate (`ratio` × the warm-up's) and on a
   temporary linear head over every class seen so far at the warm-up's rate (SLCA's slow
   backbone, fast classifier), cross-entropy on the micro-batch.

The classifier is the statistics-based ridge head, re-solved from its sums as FSA's is (the
re-alignment from class statistics); the sums of earlier examples keep the features of the PET
of their time (no drift compensation). Ratio 0 is FSA itself through the same code, the
baseline side by side. The streams, splits, orders and cached frozen states are those of
`make bench-learning`. Every ratio is scored on validation (the choice) and test (reported).
Writes bench/learning-slow-results.json and the "PET that keeps adapting" section of
docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.learning import (
    Clock,
    Deferred,
    backbones,
    empty_matrix,
    evaluate,
    feed,
    micro_batches,
    warmup_position,
)
from bench.learning_data import STREAMS, adapted_features, build_cache, load_data
from bench.learning_report import STREAM_NAMES, run_metrics
from bench.report import write_section
from perennial.learners import LearnerConfig
from perennial.learners.fsa import FeatureMap, FirstSessionLearner

log = logging.getLogger(__name__)

MARKERS = ("<!-- slow-pet:begin -->", "<!-- slow-pet:end -->")
RATIOS = (0.0, 0.01, 0.03, 0.1)  # the PET's learning rate after the warm-up, × the warm-up's


class SlowPET:
    """One Adam step per micro-batch: the PET at `ratio` × `lr`, a linear head over every class
    of the stream (rows of unseen classes masked out) at `lr`."""

    def __init__(self, learner: FirstSessionLearner, classes: int, lr: float, ratio: float):
        self.learner = learner
        self.module = learner.module.requires_grad_(True)
        self.head = nn.Linear(learner.backbone.dim, classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self.optimizer = torch.optim.Adam(
            [
                {"params": list(self.module.parameters()), "lr": ratio * lr},
                {"params": list(self.head.parameters()), "lr": lr},
            ]
        )

    def learn(self, cache, rows: list[int], labels: list[str]) -> None:
        learner, fm = self.learner, self.learner.features
        state, batch = learner.backbone.rebatch([cache.states[i] for i in rows])
        adapted = fm.adapted(state, batch, self.module)
        features = torch.cat([cache.frozen[rows], adapted.detach()], dim=1).double()
        learner.learn_features(features, labels)  # the statistics, as FSA
        seen = len(learner.classes)
        targets = torch.tensor([learner.classes.index(y) for y in labels])
        loss = F.cross_entropy(self.head(adapted)[:, :seen], targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def pet_distance(a, b) -> float:
    pairs = zip(a.parameters(), b.parameters(), strict=True)
    with torch.no_grad():
        return float(sum(float((x.double() - y.double()).norm() ** 2) for x, y in pairs) ** 0.5)


def run_order(data, cache, order: int, config: LearnerConfig, backbone, ratios) -> dict:
    """R matrices (val, test) of FSA with each post-warm-up PET learning-rate ratio; seeded by
    the order, as `make bench-learning` seeds FSA."""
    o = data.orders[order]
    config = dataclasses.replace(config, seed=order)
    labels = [data.labels[i] for i in o.stream]
    learners = {r: FirstSessionLearner(backbone, config) for r in ratios}
    lead = learners[ratios[0]]
    deferred = {r: Deferred(learner.head) for r, learner in learners.items()}
    position = warmup_position(lead, labels, o)
    if position is None:
        raise RuntimeError(f"{data.name} order {order}: FSA's window never closes")
    features = cache.frozen[o.stream].double()  # until the warm-up; then FSA's, PET frozen
    eval_rows = sorted({i for groups in o.groups.values() for g in groups for i in g})
    where = {row: k for k, row in enumerate(eval_rows)}
    matrices = {r: {part: empty_matrix(len(o.stages)) for part in o.groups} for r in ratios}
    trainers: dict[float, SlowPET] = {}
    seconds = dict.fromkeys(ratios, 0.0)
    info: dict = {"warmup_position": position}
    start = 0
    for t, end in enumerate(o.ends):
        cuts = [start, position, end] if start < position < end else [start, end]
        for lo, hi in zip(cuts, cuts[1:], strict=False):
            for r, learner in learners.items():
                with Clock() as clock:
                    if r in trainers:
                        for a, b in micro_batches(lo, hi):
                            trainers[r].learn(cache, o.stream[a:b], labels[a:b])
                    else:
                        feed(learner, features, labels, lo, hi)
                seconds[r] += clock.wall
            if hi != position:
                continue
            with Clock() as warm:
                lead.buffer = [data.inputs[i] for i in o.stream[:position]]
                lead.buffer_labels = labels[:position]
                lead.warm_up()  # the library's warm-up, on real inputs
                warmed = copy.deepcopy(lead.module)
                features = adapted_features(backbone, lead.features, cache, o.stream, warmed)
            info["warmup_seconds"] = warm.wall
            for r, learner in learners.items():
                if learner is not lead:  # the end of warm_up(), on a copy of the same PET
                    learner.module = copy.deepcopy(warmed)
                    learner.head, learner._selected = learner.window_head(
                        features[:position], labels[:position]
                    )
                deferred[r] = Deferred(learner.head)
                if r:
                    trainers[r] = SlowPET(learner, len(data.classes), config.warmup_lr, r)
        start = end
        for r, learner in learners.items():
            with Clock() as clock:
                deferred[r].settle()
                if learner.module is None:
                    evaluated = cache.frozen[eval_rows].double()
                else:
                    evaluated = adapted_features(
                        backbone, learner.features, cache, eval_rows, learner.module
                    )

                def lookup(g, evaluated=evaluated):
                    return evaluated[[where[i] for i in g]]

                for part, groups in o.groups.items():
                    matrices[r][part][t][: t + 1] = evaluate(
                        learner.scores_features, learner.classes, lookup, data, groups[: t + 1]
                    )
            seconds[r] += clock.wall
    return {
        r: {
            "R": matrices[r],
            "pet_moved": pet_distance(learner.module, warmed),
            "seconds": seconds[r],
            **info,
        }
        for r, learner in learners.items()
    }


# -- summary and report ------------------------------------------------------------------------
def finals(stream: dict, ratio: str, part: str) -> list[float]:
    """Final accuracy of each order `ratio` ran on `stream`."""
    return [
        run_metrics(run["R"][part], run["sizes"])["final"] * 100
        for run in stream["runs"].get(ratio, [])
    ]


def verdict(results: dict) -> dict:
    """The ratio kept: the one whose worst-stream validation margin over FSA (ratio 0, same
    orders) is largest, and only if that margin is positive."""
    margins: dict[str, dict[str, float]] = {}
    for name, stream in results["streams"].items():
        base = np.mean(finals(stream, "0", "val"))
        for ratio in stream["runs"]:
            if ratio != "0":
                gain = float(np.mean(finals(stream, ratio, "val")) - base)
                margins.setdefault(ratio, {})[name] = gain
    worst = {ratio: min(m.values()) for ratio, m in margins.items()}
    best = max(worst, key=worst.get) if worst else None
    return {
        "margins": margins,
        "worst": worst,
        "best": best,
        "kept": best is not None and worst[best] > 0,
    }


def section(results: dict, path: Path) -> str:
    """The BENCHMARKS.md section of the results in `path`."""
    meta, choice = results["meta"], verdict(results)
    lines = [
        "## PET that keeps adapting after the warm-up",
        "",
        f"`make bench-slow-pet` — {meta['written']}, {meta['cpus']} CPU cores, {meta['threads']} "
        "torch thread. The streams, splits and class orders of `make bench-learning`. FSA with the "
        f"warm-up and head width that run chose on validation ({meta['fsa']}); after the warm-up "
        "every micro-batch of 16 adds its features to the ridge head's statistics, then takes one "
        "Adam step on the PET at ratio × the warm-up's learning rate, with a temporary linear "
        "head over the classes seen so far at the warm-up's rate (SLCA's slow PET, fast "
        "classifier). The ridge head is re-solved from its sums; earlier examples' sums keep the "
        "features of the PET of their time. Ratio 0 is FSA (the PET frozen after the warm-up), "
        "through the same code. Final accuracy, %, mean ± std over the orders run; "
        "'PET moved' is the L2 distance of the PET from the warmed-up one at the end.",
        "",
        "| stream | ratio | orders | val final | test final | test forgetting | PET moved |"
        " seconds per order |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, stream in results["streams"].items():
        for ratio, runs in stream["runs"].items():
            val, test = finals(stream, ratio, "val"), finals(stream, ratio, "test")
            forgetting = [
                run_metrics(run["R"]["test"], run["sizes"]).get("forgetting", np.nan) * 100
                for run in runs
            ]
            lines.append(
                f"| {STREAM_NAMES[name]} | {ratio} | {len(runs)} | "
                f"{np.mean(val):.1f} ± {np.std(val):.1f} | {np.mean(test):.1f} ± "
                f"{np.std(test):.1f} | {np.mean(forgetting):.1f} | "
                f"{np.mean([run['pet_moved'] for run in runs]):.2f} | "
                f"{np.mean([run['seconds'] for run in runs]):.0f} |"
            )
    lines.append("")
    for ratio, margins in choice["margins"].items():
        shown = ", ".join(f"{STREAM_NAMES[n]} {m:+.1f}" for n, m in margins.items())
        lines.append(f"- Ratio {ratio}: validation gain over FSA {shown} (points).")
    if choice["best"] is None:
        lines.append("- No ratio other than 0 ran.")
    elif choice["kept"]:
        lines.append(
            f"- **Kept**: ratio {choice['best']} wins on validation on every stream (worst "
            f"margin {choice['worst'][choice['best']]:+.1f} points)."
        )
    else:
        lines.append(
            f"- **Not kept**: no ratio wins on validation on every stream (best worst-stream "
            f"margin: ratio {choice['best']}, {choice['worst'][choice['best']]:+.1f} points), so "
            "FSA freezes its PET after the warm-up."
        )
    skipped = meta.get("skipped", [])
    if skipped:
        lines.append(
            "- Not run (the time budget of "
            f"{meta['budget_minutes']:.0f} min would have been exceeded): "
            + ", ".join(f"{STREAM_NAMES[s['stream']]} order {s['order']}" for s in skipped)
            + "."
        )
    lines += [
        "",
        f"Raw results: `{path}`; re-render with `make bench-slow-pet BENCH_ARGS=--render`.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", default=",".join(STREAMS))
    parser.add_argument("--orders", type=int, default=3)
    parser.add_argument("--ratios", default=",".join(str(r) for r in RATIOS))
    parser.add_argument("--budget-minutes", type=float, default=50.0)
    parser.add_argument("--results", type=Path, default=Path("bench/learning-slow-results.json"))
    parser.add_argument("--learning", type=Path, default=Path("docs/learning/results.json"))
    parser.add_argument("--doc", type=Path, default=Path("docs/BENCHMARKS.md"))
    parser.add_argument("--runtime", default="onnx", help="the frozen runtime, as bench-learning")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--render", action="store_true", help="only rewrite the section")
    args = parser.parse_args(argv)
    if args.render:
        write_section(
            args.doc, MARKERS, section(json.loads(args.results.read_text()), args.results)
        )
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    ratios = sorted({0.0, *(float(r) for r in args.ratios.split(","))})
    choice = json.loads(args.learning.read_text())["choices"]["fsa"]
    config = LearnerConfig(learner="fsa", projection_dim=choice["width"], **choice["warmup"])
    began = time.monotonic()
    results: dict = {
        "meta": {
            "written": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "runtime": args.runtime,
            "fsa": f"{choice['tag']},M={choice['width']}",
            "ratios": ratios,
            "budget_minutes": args.budget_minutes,
            "skipped": [],
        },
        "streams": {},
    }
    names = args.streams.split(",")
    loaded: dict = {}
    per_order: dict[str, float] = {}  # measured seconds of one order, by stream
    for order in range(args.orders):
        for name in names:
            spent = time.monotonic() - began
            if spent + per_order.get(name, 0.0) > args.budget_minutes * 60:
                results["meta"]["skipped"].append({"stream": name, "order": order})
                log.info("skipped %s order %d", name, order)
                continue
            if name not in loaded:
                spec = STREAMS[name]
                backbone = backbones(spec.domain, args)
                data = load_data(name, spec, list(range(args.orders)))
                fm = FeatureMap(backbone, LearnerConfig(learner="fsa"))
                loaded[name] = (backbone, data, build_cache(backbone, fm, data.inputs))
            backbone, data, cache = loaded[name]
            with Clock() as clock:
                runs = run_order(data, cache, order, config, backbone, ratios)
            per_order[name] = clock.wall
            stream = results["streams"].setdefault(name, {"runs": {}})
            sizes = [len(stage) for stage in data.orders[order].stages]
            for ratio, run in runs.items():
                stream["runs"].setdefault(f"{ratio:g}", []).append(
                    {"order": order, "sizes": sizes, **run}
                )
                log.info(
                    "%s order %d ratio %g: val %.1f test %.1f (%.0f s)", name, order, ratio,
                    run_metrics(run["R"]["val"], sizes)["final"] * 100,
                    run_metrics(run["R"]["test"], sizes)["final"] * 100, run["seconds"],
                )  # fmt: skip
            results["meta"]["elapsed_seconds"] = time.monotonic() - began
            args.results.write_text(json.dumps(results, indent=1) + "\n")
    results["meta"]["verdict"] = verdict(results)
    args.results.write_text(json.dumps(results, indent=1) + "\n")
    write_section(args.doc, MARKERS, section(results, args.results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""`make bench-int8`: what the int8 backbone runtime costs in continual-learning accuracy.

For each stream of `make bench-learning` (class order 0, the same data, splits and code), the
frozen-feature learners (SimpleCIL, RanPAC-frozen) and FSA with the warm-up chosen on validation
by the last `make bench-learning` run (docs/learning/results.json), at the shipped head width
(the trainer's `PERENNIAL_PROJECTION_DIM`) and the validated one, run on the frozen outputs of
ONNX Runtime fp32 (the services' default) and of ONNX Runtime with dynamic int8 quantization,
side by side in one run. FSA's warm-up trains its PET through the same runtime's hidden states.
Writes bench/learning-int8-results.json and the "int8 runtime" section of docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch

from bench.learning import FSA_WIDTHS, backbones, run_frozen, run_fsa
from bench.learning_data import STREAMS, build_cache, load_data
from bench.learning_report import STREAM_NAMES, label, run_metrics
from bench.report import write_section
from perennial.learners import LearnerConfig
from perennial.learners.fsa import FeatureMap

log = logging.getLogger(__name__)

MARKERS = ("<!-- int8:begin -->", "<!-- int8:end -->")
RUNTIMES = ("onnx", "onnx-int8")
ORDER = 0


def shipped_width() -> int:
    from services.trainer.settings import TrainerSettings

    return TrainerSettings.model_fields["projection_dim"].default


def measure(name: str, runtime: str, warmup: dict, threads: int) -> dict:
    """Test and validation final accuracy of each learner on `name`, order 0, with `runtime`."""
    spec = STREAMS[name]
    backbone = backbones(spec.domain, argparse.Namespace(runtime=runtime, threads=threads))
    data = load_data(name, spec, [ORDER])
    began = time.perf_counter()
    cache = build_cache(backbone, FeatureMap(backbone, LearnerConfig(learner="fsa")), data.inputs)
    runs = run_frozen(data, cache, ORDER, (), backbone)
    runs.update(run_fsa(data, cache, ORDER, warmup, backbone))
    sizes = [len(stage) for stage in data.orders[ORDER].stages]
    final = {
        learner: {part: run_metrics(run["R"][part], sizes)["final"] for part in ("val", "test")}
        for learner, run in runs.items()
        if not learner.startswith("aper")
    }
    return {
        "final": final,
        "seconds": time.perf_counter() - began,
        "quantized_ops": quantized_ops(backbone),
    }


def quantized_ops(backbone) -> int:
    """Integer operations in the graph the backbone runs (0 for fp32, and for a graph whose
    operations `onnx-int8` does not quantize)."""
    import onnx

    graph = onnx.load(str(backbone._frozen.path), load_external_data=False).graph
    return sum(node.op_type in ("MatMulInteger", "ConvInteger") for node in graph.node)


def section(results: dict) -> str:
    meta = results["meta"]
    lines = [
        "## int8 runtime and learning accuracy",
        "",
        f"`make bench-int8` — {meta['written']}, {meta['cpus']} CPU cores, {meta['threads']} torch "
        f"thread: the streams of `make bench-learning`, class order {ORDER}, each learner on the "
        "frozen outputs of ONNX Runtime fp32 (the services' default) and of ONNX Runtime with "
        "dynamic int8 quantization (`PERENNIAL_RUNTIME=onnx-int8`), side by side in one run. FSA "
        f"uses the warm-up chosen on validation ({meta['warmup_tag']}); M is its head's width (the "
        f"trainer ships M={meta['widths']['shipped']}). "
        "Test final accuracy, %; Δ = int8 − fp32 in points.",
        "",
        "| stream | learner | fp32 | int8 | Δ |",
        "| --- | --- | --- | --- | --- |",
    ]
    deltas, same = [], []
    for name, stream in results["streams"].items():
        if stream["onnx-int8"]["quantized_ops"] == 0:
            same.append(STREAM_NAMES[name])
        fp32, int8 = stream["onnx"]["final"], stream["onnx-int8"]["final"]
        for learner in fp32:
            a, b = fp32[learner]["test"], int8[learner]["test"]
            deltas.append((b - a) * 100)
            lines.append(
                f"| {STREAM_NAMES[name]} | {label(learner)} | {a * 100:.1f} | {b * 100:.1f} | "
                f"{(b - a) * 100:+.1f} |"
            )
    lines += [
        "",
        f"Across the {len(deltas)} rows, Δ ranges from {min(deltas):+.1f} to {max(deltas):+.1f} "
        f"points (mean {sum(deltas) / len(deltas):+.1f}). One class order, so a difference of "
        "about a point is within the order-to-order spread `docs/LEARNING.md` reports.",
        *(
            [
                "",
                f"{', '.join(same)}: the int8 graph has no integer operation — `onnx-int8` "
                "quantizes matrix multiplications (MatMul) only and this backbone is convolutions "
                "— so it computes what fp32 does and the rows match.",
            ]
            if same
            else []
        ),
        "",
        f"Raw results: `{meta['results']}`; re-render with `python -m bench.learning_int8 "
        "--render`.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", default=",".join(STREAMS))
    parser.add_argument("--results", type=Path, default=Path("bench/learning-int8-results.json"))
    parser.add_argument("--learning", type=Path, default=Path("docs/learning/results.json"))
    parser.add_argument("--doc", type=Path, default=Path("docs/BENCHMARKS.md"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--render", action="store_true", help="only rewrite the section")
    args = parser.parse_args(argv)
    if args.render:
        write_section(args.doc, MARKERS, section(json.loads(args.results.read_text())))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    choice = json.loads(args.learning.read_text())["choices"]["fsa"]
    results = {
        "meta": {
            "written": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "results": str(args.results),
            "warmup": choice["warmup"],
            "warmup_tag": choice["tag"],
            "widths": {"shipped": shipped_width(), "measured": list(FSA_WIDTHS)},
        },
        "streams": {},
    }
    for name in args.streams.split(","):
        stream = results["streams"].setdefault(name, {})
        for runtime in RUNTIMES:
            stream[runtime] = measure(name, runtime, choice["warmup"], args.threads)
            log.info("%s %s: %s", name, runtime, stream[runtime]["final"])
            args.results.write_text(json.dumps(results, indent=1) + "\n")
    write_section(args.doc, MARKERS, section(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

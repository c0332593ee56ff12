"""docs/LEARNING.md and its plots from docs/learning/results.json (`bench.learning`).

Every number, choice and verdict below is computed from the results file; the rules that make
the choices are declared here, before any run, and use validation accuracy only.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from perennial import evaluation

FSA_RULE = (
    "FSA's warm-up and head width: the grid point with the largest validation margin (final "
    "accuracy, mean over orders) over the best frozen-feature learner (SimpleCIL, RanPAC-frozen) "
    "of each stream, averaged over the streams; within 0.5 points of the best, the narrower head "
    "wins (at equal width, the larger margin). The average, not the worst stream: with 40 "
    "validation examples per class, a grid point's margin on one stream moves by about a point "
    "from order to order."
)
DEFAULT_RULE = (
    "Recommended default: among the library's learners (SimpleCIL, RanPAC-frozen, FSA as chosen "
    "above, LAE, naive fine-tuning) measured on every stream, the one whose worst stream has the "
    "largest validation margin over the best frozen-feature learner of that stream; within 0.5 "
    "points of the best, the cheaper to serve (serving cost per row) wins."
)
TIE = 0.005  # 0.5 points
EPS = 1e-9  # accuracies are ratios of counts: 0.79 - 0.76 must count as 3.0 points
FROZEN = ("simplecil", "ranpac")
STREAM_NAMES = {
    "nouns": "WordNet nouns",
    "verbs": "WordNet verbs",
    "fmnist": "Fashion-MNIST",
}


def label(key: str) -> str:
    """A readable name for a learner key of results.json."""
    names = {
        "simplecil": "SimpleCIL",
        "ranpac": "RanPAC-frozen (M=1024)",
        "lae": "LAE (tuned)",
        "naive": "naive fine-tuning",
        "oracle": "joint-so-far oracle",
    }
    if key in names:
        return names[key]
    kind, _, variant = key.partition("/")
    prefix = {
        "fsa": "FSA",
        "fsa_frozen": "FSA head on frozen multi-layer features (no PET)",
        "aper": "APER prototypes over FSA features",
    }[kind]
    return f"{prefix} ({variant})"


# -- metrics ---------------------------------------------------------------------------------
def stage_sizes(stream: dict, order: int) -> list[int]:
    stages = stream["info"]["stages"]
    return [len(s) for s in stages.get(str(order), stages.get(order, []))]


def run_metrics(matrix, sizes: list[int]) -> dict[str, float]:
    """final / average incremental accuracy, forgetting, BWT of one R matrix (NaN: not measured)."""
    r = np.asarray(matrix, dtype=float)
    if np.isnan(r[np.tril_indices(len(r))]).any():
        return {"final": float(evaluation.final_accuracy(np.nan_to_num(r), sizes))}
    out = evaluation.summary(r, sizes)
    return {
        "final": out["final_accuracy"],
        "avg_inc": out["average_incremental_accuracy"],
        "forgetting": out["forgetting"],
        "bwt": out["backward_transfer"],
    }


def summarise(stream: dict, learner: str, part: str) -> dict[str, tuple[float, float, int]]:
    """metric -> (mean, std, number of orders) over the orders `learner` ran on."""
    values: dict[str, list[float]] = {}
    for run in stream["runs"]:
        if run["learner"] != learner:
            continue
        for name, value in run_metrics(run["R"][part], stage_sizes(stream, run["order"])).items():
            values.setdefault(name, []).append(value)
    return {k: (float(np.mean(v)), float(np.std(v)), len(v)) for k, v in values.items()}


def mean_final(stream: dict, learner: str, part: str) -> float | None:
    summary = summarise(stream, learner, part)
    return summary["final"][0] if "final" in summary else None


def best_frozen(stream: dict, part: str) -> tuple[str, float]:
    """The best frozen-feature learner of a stream on `part` and its mean final accuracy."""
    scored = [(mean_final(stream, k, part), k) for k in FROZEN]
    value, key = max((v, k) for v, k in scored if v is not None)
    return key, value


def stream_margins(streams: dict, learner: str, part: str = "val") -> list[float] | None:
    """Per stream: learner's mean final accuracy − the best frozen learner's (None: not run on
    every stream)."""
    margins = []
    for stream in streams.values():
        value = mean_final(stream, learner, part)
        if value is None:
            return None
        margins.append(value - best_frozen(stream, part)[1])
    return margins


def worst_margin(streams: dict, learner: str, part: str = "val") -> float | None:
    margins = stream_margins(streams, learner, part)
    return None if margins is None else min(margins)


def pick(candidates: list[tuple[str, float, tuple]]) -> str:
    """The candidate with the largest score; within TIE of it, the smallest cost (at equal cost,
    the larger score)."""
    top = max(score for _, score, _ in candidates)
    close = [c for c in candidates if c[1] >= top - TIE - EPS]
    return min(close, key=lambda c: (c[2], -c[1]))[0]


def _fsa_key(key: str) -> dict:
    """Warm-up, width and tag of an FSA grid key such as "fsa/lr=0.001,ep=5,W=1024,M=2048" (keys
    written before the window was part of the grid have no W: it was 256)."""
    fields = dict(kv.split("=") for kv in key.split("/", 1)[1].split(","))
    window = int(fields.get("W", 256))
    return {
        "warmup": {
            "warmup_lr": float(fields["lr"]),
            "warmup_epochs": int(fields["ep"]),
            "warmup_examples": window,
            "warmup_cap": 4 * window,
        },
        "width": int(fields["M"]),
        "tag": ",".join(f"{k}={fields[k]}" for k in ("lr", "ep", "W") if k in fields),
    }


def choose_fsa(streams: dict) -> dict:
    """FSA_RULE applied to results.json's streams."""
    keys = sorted({r["learner"] for s in streams.values() for r in s["runs"]})
    table = []
    for key in (k for k in keys if k.startswith("fsa/")):
        margins = stream_margins(streams, key)
        if margins is not None:
            table.append((key, float(np.mean(margins)), (_fsa_key(key)["width"],)))
    chosen = pick(table)
    return {"rule": FSA_RULE, "chosen": chosen, "mean_margins": dict((k, m) for k, m, _ in table),
            **_fsa_key(chosen)}  # fmt: skip


def serving_relative(streams: dict, learner: str) -> float:
    costs = []
    for stream in streams.values():
        cost = stream.get("cost", {}).get(learner, {}).get("serving")
        if cost is None:  # LAE / naive: measured on their first run
            cost = next((r["serving"] for r in stream["runs"] if r["learner"] == learner
                         and "serving" in r), None)  # fmt: skip
        if cost is not None:
            costs.append(cost["relative"])
    return float(np.mean(costs)) if costs else math.inf


def recommend(streams: dict, fsa: str) -> dict:
    """DEFAULT_RULE applied to results.json's streams; `fsa` is the chosen FSA key."""
    names = {"simplecil": "simplecil", "ranpac": "ranpac", fsa: "fsa", "lae": "lae",
             "naive": "naive"}  # fmt: skip
    table, missing = [], []
    for key, learner in names.items():
        margin = worst_margin(streams, key)
        if margin is None:
            missing.append(learner)
            continue
        table.append((key, margin, (serving_relative(streams, learner),)))
    chosen = pick(table)
    return {
        "rule": DEFAULT_RULE,
        "chosen": names[chosen],
        "key": chosen,
        "worst_margins": {names[k]: m for k, m, _ in table},
        "not_on_every_stream": missing,
    }


# -- goals -----------------------------------------------------------------------------------
def goals(data: dict) -> list[dict]:
    """Issue 11's goals for the recommended learner, each with its numbers and a verdict."""
    streams = data["streams"]
    fsa = data["choices"]["fsa"]["chosen"]
    rec = recommend(streams, fsa)
    key = rec["key"]
    ablation = f"fsa_frozen/M={data['choices']['fsa']['width']}"
    out = []
    for name, stream in streams.items():
        row: dict = {"stream": name}
        for part in ("val", "test"):
            own = mean_final(stream, key, part)
            frozen_key, frozen = best_frozen(stream, part)
            row[f"margin_{part}"] = own - frozen
            row[f"frozen_{part}"] = (frozen_key, frozen)
            row[f"own_{part}"] = own
            abl = mean_final(stream, ablation, part)
            fsa_value = mean_final(stream, fsa, part)
            row[f"pet_contribution_{part}"] = (
                fsa_value - abl if abl is not None and fsa_value is not None else None
            )
            joint = stream.get("joint", {}).get(f"ridge_{part}")
            row[f"joint_{part}"] = joint
            row[f"joint_gap_{part}"] = None if joint is None else joint - own
            lae = mean_final(stream, "lae", part)
            row[f"lae_gap_{part}"] = None if lae is None else own - lae
        row["margin_met"] = row["margin_test"] >= 0.03 - EPS
        row["joint_met"] = (
            None if row["joint_test"] is None else row["joint_gap_test"] <= 0.03 + EPS
        )
        oracle_orders = sorted(r["order"] for r in stream["runs"] if r["learner"] == "oracle")
        row["oracle_orders"] = oracle_orders
        if oracle_orders:
            own_f = [
                run_metrics(r["R"]["test"], stage_sizes(stream, r["order"]))["forgetting"]
                for r in stream["runs"]
                if r["learner"] == key and r["order"] in oracle_orders
            ]
            oracle_f = [
                run_metrics(r["R"]["test"], stage_sizes(stream, r["order"]))["forgetting"]
                for r in stream["runs"]
                if r["learner"] == "oracle"
            ]
            row["forgetting"] = (float(np.mean(own_f)), float(np.mean(oracle_f)))
            row["forgetting_met"] = row["forgetting"][0] <= row["forgetting"][1] + 0.02 + EPS
        else:
            row["forgetting"], row["forgetting_met"] = None, None
        out.append(row)
    return out


# -- rendering -------------------------------------------------------------------------------
def pct(value: float | None, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * value:+.1f}" if signed else f"{100 * value:.1f}"


def pm(summary: dict, metric: str) -> str:
    if metric not in summary:
        return "–"
    mean, std, n = summary[metric]
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if n > 1 else f"{100 * mean:.1f}"


def verdict(met: bool | None) -> str:
    return "not measured" if met is None else ("**met**" if met else "**not met**")


def rows_of(data: dict) -> list[str]:
    """The learners of the main tables, chosen FSA variants first resolved."""
    choice = data["choices"]["fsa"]
    return [
        "simplecil",
        "ranpac",
        f"fsa_frozen/M={choice['width']}",
        choice["chosen"],
        f"aper/{choice['tag']}",
        "lae",
        "naive",
        "oracle",
    ]


def stream_table(name: str, stream: dict, keys: list[str]) -> list[str]:
    lines = [
        f"### {STREAM_NAMES.get(name, name)}",
        "",
        "| learner | val final | test final | test avg. incremental | test forgetting "
        "| test BWT | orders |",
        "|---|---|---|---|---|---|---|",
    ]
    for key in keys:
        val, test = summarise(stream, key, "val"), summarise(stream, key, "test")
        if not test:
            continue
        lines.append(
            f"| {label(key)} | {pm(val, 'final')} | {pm(test, 'final')} | {pm(test, 'avg_inc')} "
            f"| {pm(test, 'forgetting')} | {pm(test, 'bwt')} | {test['final'][2]} |"
        )
    joint = stream.get("joint")
    if joint:
        lines.append(
            f"| joint PET + head to convergence (lr {joint['lr']:g}, {joint['epochs']} epochs by "
            f"validation), then the ridge head (M={joint['width']}) | {pct(joint['ridge_val'])} "
            f"| {pct(joint['ridge_test'])} | – | – | – | seed 0 |"
        )
        lines.append(
            f"| the same joint PET, its own linear head | {pct(joint['linear_val'])} "
            f"| {pct(joint['linear_test'])} | – | – | – | seed 0 |"
        )
    return lines


def grid_table(data: dict) -> list[str]:
    streams = data["streams"]
    choice = data["choices"]["fsa"]
    names = list(streams)
    margins = choice["mean_margins"]
    lines = [
        "| FSA grid point | "
        + " | ".join(f"{STREAM_NAMES.get(n, n)} val" for n in names)
        + " | mean margin over best frozen (val) |",
        "|---|" + "---|" * (len(names) + 1),
    ]
    for key, margin in sorted(margins.items()):
        cells = [pm(summarise(streams[n], key, "val"), "final") for n in names]
        mark = " **(chosen)**" if key == choice["chosen"] else ""
        lines.append(f"| {label(key)}{mark} | " + " | ".join(cells) + f" | {pct(margin, True)} |")
    frozen = [
        f"{STREAM_NAMES.get(n, n)}: {label(best_frozen(streams[n], 'val')[0])} "
        f"{pct(best_frozen(streams[n], 'val')[1])}"
        for n in names
    ]
    lines += ["", "Best frozen-feature learner on validation: " + "; ".join(frozen) + "."]
    best = max(margins, key=margins.get)
    if best != choice["chosen"]:
        lines += ["", f"The chosen point is within the rule's 0.5-point band of the largest "
                  f"mean margin, {label(best)} ({pct(margins[best], True)})."]  # fmt: skip
    return lines


def cost_table(name: str, stream: dict) -> list[str]:
    lines = [
        f"#### {STREAM_NAMES.get(name, name)}",
        "",
        "| learner | training examples/s incl. encoding (order 0) | CPU s per 1000 examples "
        "| serving s/row (batches of 16) | × frozen forward | trainable parameters |",
        "|---|---|---|---|---|---|",
    ]
    for key, cost in stream.get("cost", {}).items():
        serving = cost["serving"]
        lines.append(
            f"| {label(key) if key != 'fsa' else 'FSA (chosen)'} "
            f"| {cost['examples_per_second']:.1f} ({cost['examples']} examples) "
            f"| {1000 * cost['cpu_seconds'] / cost['examples']:.1f} "
            f"| {serving['seconds_per_row'] * 1000:.1f} ms | {serving['relative']:.2f} "
            f"| {cost['trainable_parameters']:,} |"
        )
    for key in ("lae", "naive"):
        run = next((r for r in stream["runs"] if r["learner"] == key and "serving" in r), None)
        if run is None:
            continue
        serving = run["serving"]
        lines.append(
            f"| {label(key)} | {run['examples'] / run['train_seconds']:.1f} "
            f"({run['examples']} examples) "
            f"| {1000 * run['train_cpu_seconds'] / run['examples']:.1f} "
            f"| {serving['seconds_per_row'] * 1000:.1f} ms | {serving['relative']:.2f} "
            f"| {run['trainable_parameters']:,} |"
        )
    return lines


def goal_lines(data: dict) -> list[str]:
    rows = goals(data)
    rec = recommend(data["streams"], data["choices"]["fsa"]["chosen"])
    key = rec["key"]
    lines = [
        "| goal | " + " | ".join(STREAM_NAMES.get(r["stream"], r["stream"]) for r in rows) + " |",
        "|---|" + "---|" * len(rows),
    ]

    def cells(fn) -> str:
        return " | ".join(fn(r) for r in rows)

    lines.append(
        "| final accuracy ≥ 3.0 points above the best frozen-feature learner (test; val) | "
        + cells(
            lambda r: (
                f"{verdict(r['margin_met'])}: {pct(r['own_test'])} vs "
                f"{label(r['frozen_test'][0])} {pct(r['frozen_test'][1])} "
                f"({pct(r['margin_test'], True)}; val {pct(r['margin_val'], True)})"
            )
        )
        + " |"
    )
    lines.append(
        "| forgetting ≤ joint-so-far oracle + 2 points (test, orders the oracle ran) | "
        + cells(
            lambda r: (
                "oracle not run"
                if r["forgetting"] is None
                else f"{verdict(r['forgetting_met'])}: {pct(r['forgetting'][0])} vs oracle "
                f"{pct(r['forgetting'][1])} (orders {', '.join(map(str, r['oracle_orders']))})"
            )
        )
        + " |"
    )
    lines.append(
        "| final accuracy within 3 points of joint PET training to convergence (test) | "
        + cells(
            lambda r: (
                "joint not run"
                if r["joint_test"] is None
                else f"{verdict(r['joint_met'])}: joint {pct(r['joint_test'])}, gap "
                f"{pct(r['joint_gap_test'], True)} (val gap {pct(r['joint_gap_val'], True)})"
            )
        )
        + " |"
    )
    lines.append(
        "| LAE (tuned), as it is: the recommended learner's lead over it (test; val) | "
        + cells(lambda r: f"{pct(r['lae_gap_test'], True)} ({pct(r['lae_gap_val'], True)})")
        + " |"
    )
    lines.append(
        "| the PET's own contribution: FSA − the same head on frozen multi-layer features "
        "(test; val) | "
        + cells(
            lambda r: (
                f"{pct(r['pet_contribution_test'], True)} ({pct(r['pet_contribution_val'], True)})"
            )
        )
        + " |"
    )
    pet_changes = [
        run.get("pet_change")
        for s in data["streams"].values()
        for run in s["runs"]
        if run["learner"] == data["choices"]["fsa"]["chosen"]
    ]
    pet_changes = [p for p in pet_changes if p is not None]
    if rec["chosen"] == "fsa":
        lines += [
            "",
            f"The recommended learner (FSA) has trainable PET parameters that change during the "
            f"stream (distance of the warmed-up LoRA from its initialisation: "
            f"{min(pet_changes):.3f}–{max(pet_changes):.3f} over streams and orders) and are "
            f"used at inference (its features are [frozen ⊕ adapted]).",
        ]
    elif key:
        lines += ["", f"The recommended learner ({label(key)}) adapts no PET."]
    return lines


def findings(data: dict) -> list[str]:
    streams = data["streams"]
    choice = data["choices"]["fsa"]
    rec = recommend(streams, choice["chosen"])
    rows = goals(data)
    met = [r["stream"] for r in rows if r["margin_met"]]
    missed = [r["stream"] for r in rows if not r["margin_met"]]
    margins = ", ".join(f"{k} {pct(v, True)}" for k, v in rec["worst_margins"].items())
    lines = [
        f"- **Recommended default: `{rec['chosen']}`**"
        + (
            f" with `projection_dim={choice['width']}`, "
            + ", ".join(f"`{k}={v:g}`" for k, v in choice["warmup"].items())
            + " (the other warm-up settings at their LearnerConfig defaults)"
            if rec["chosen"] == "fsa"
            else ""
        )
        + f". Worst-stream validation margins over the best frozen learner: {margins}.",
    ]
    if rec["not_on_every_stream"]:
        lines.append(
            "- Not candidates (not run on every stream within the budget): "
            + ", ".join(rec["not_on_every_stream"])
            + "."
        )
    lines.append(
        f"- The +3.0-point goal is met on {', '.join(met) or 'no stream'}"
        + (f" and missed on {', '.join(missed)}" if missed else "")
        + " (test, mean over orders)."
    )
    own = [r for r in rows if r["pet_contribution_test"] is not None]
    if own:
        helps = [r["stream"] for r in own if r["pet_contribution_test"] >= 0.01 - EPS]
        lines.append(
            "- The PET's own contribution (FSA minus the same head on frozen multi-layer "
            "features), test (validation): "
            + "; ".join(
                f"{r['stream']} {pct(r['pet_contribution_test'], True)} "
                f"({pct(r['pet_contribution_val'], True)})"
                for r in own
            )
            + f". At least +1 point on test on: {', '.join(helps) or 'no stream'}; the rest of "
            "FSA's margin over RanPAC-frozen comes from its head (width, multi-layer features)."
        )
    lae = [(r["stream"], r["lae_gap_test"]) for r in rows if r["lae_gap_test"] is not None]
    if lae:
        parts = []
        for name, gap in lae:
            own = summarise(streams[name], rec["key"], "test").get("forgetting")
            theirs = summarise(streams[name], "lae", "test").get("forgetting")
            parts.append(
                f"{name} {pct(gap, True)} (forgetting {pm({'f': theirs}, 'f')} vs "
                f"{pm({'f': own}, 'f')})"
                if own and theirs
                else f"{name} {pct(gap, True)}"
            )
        lines.append(
            "- LAE (tuned) trails the recommended learner on test by: " + "; ".join(parts) + "."
        )
    return lines


def plots(data: dict, folder: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    streams = data["streams"]
    keys = [k for k in rows_of(data) if k != "oracle"] + ["oracle"]
    fig, axes = plt.subplots(1, len(streams), figsize=(5 * len(streams), 4), squeeze=False)
    for ax, (name, stream) in zip(axes[0], streams.items(), strict=True):
        for key in keys:
            curves = [
                evaluation.seen_accuracy(r["R"]["test"], stage_sizes(stream, r["order"]))
                for r in stream["runs"]
                if r["learner"] == key
                and not np.isnan(
                    np.asarray(r["R"]["test"], dtype=float)[np.tril_indices(len(r["R"]["test"]))]
                ).any()
            ]
            if curves:
                mean = 100 * np.mean(curves, axis=0)
                ax.plot(range(1, len(mean) + 1), mean, marker="o", label=label(key))
        ax.set_title(STREAM_NAMES.get(name, name))
        ax.set_xticks(range(1, len(stage_sizes(stream, stream["runs"][0]["order"])) + 1))
        ax.set_xlabel("stage")
        ax.set_ylabel("accuracy on seen classes, test (%)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(folder / "accuracy-curves.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(keys)
    for k, key in enumerate(keys):
        values = [mean_final(s, key, "test") for s in streams.values()]
        xs = [i + k * width for i, v in enumerate(values) if v is not None]
        ax.bar(xs, [100 * v for v in values if v is not None], width, label=label(key))
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(streams))])
    ax.set_xticklabels([STREAM_NAMES.get(n, n) for n in streams])
    ax.set_ylabel("final accuracy, test (%)")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(folder / "final-accuracy.png", dpi=110)
    plt.close(fig)
    return ["accuracy-curves.png", "final-accuracy.png"]


def methods(data: dict) -> list[str]:
    meta = data["meta"]
    specs = meta["specs"]
    lae = meta["lae_tuned"]
    return [
        "## Set-up",
        "",
        *(
            f"- **{STREAM_NAMES.get(n, n)}**: {s['train']} training / {s['val']} validation / "
            f"{s['test']} test examples per class, {s['per_stage']} classes per stage "
            f"({data['streams'][n]['info']['classes'] if n in data['streams'] else '?'} classes)."
            for n, s in specs.items()
        ),
        f"- Class orders {', '.join(map(str, meta['orders']))}; each class's examples are the "
        "same in every order (a fixed sample seed). Micro-batches of 16, no task boundaries. "
        f"Frozen runtime: {meta['runtime']}; torch and ONNX Runtime threads: {meta['threads']}.",
        "- Frozen outputs are computed once per stream. SimpleCIL, RanPAC, FSA and the FSA-head "
        "ablation are fed these cached features through the learners' own `learn_features` / "
        "`scores_features` (what `learn` does after encoding); FSA's warm-up is the library's "
        "`warm_up()` on the real buffered inputs, and its adapted features run the PET's blocks "
        "from the cached frozen state. λ is chosen at the example counts the library chooses, "
        "from a snapshot of the statistics, computed when the head is evaluated. LAE, naive "
        "fine-tuning, joint training and the oracle train PETs and run for real. Throughput "
        "including encoding is measured with real inputs on order 0 (SimpleCIL and RanPAC on "
        "the first 1024 examples, FSA on the whole stream, its validation accuracy compared "
        "with the cached run's below).",
        "- **SimpleCIL** and **RanPAC-frozen**: the library's learners with LearnerConfig "
        "defaults on the backbone's features.",
        "- **FSA** (`learner=fsa`): LoRA rank 8 on K,V of MiniLM's last 2 blocks / the 1×1 "
        "convolutions of EfficientNet-Lite0's last 4 blocks, warm-up on the stream's first window "
        "(≥ W examples with ≥ 4 classes of ≥ 8, at most 4W), then a ridge head on [frozen "
        "multi-layer ⊕ adapted] features. Grid: warm-up "
        + ", ".join(
            f"W {w.get('warmup_examples', 256)} × lr {w['warmup_lr']:g} × "
            f"{w['warmup_epochs']} epochs"
            for w in meta["fsa_grid"]["warmups"]
        )
        + "; head width M ∈ "
        + ", ".join(map(str, meta["fsa_grid"]["widths"]))
        + ". One warm-up serves both widths (it does not depend on the head). Its PET freezes "
        "after the warm-up; the variant whose PET keeps learning at a slow rate is measured "
        'against it by `make bench-slow-pet` ([BENCHMARKS.md](BENCHMARKS.md), "PET that keeps '
        'adapting after the warm-up").',
        "- **FSA head on frozen multi-layer features (no PET)**: the same learner whose window "
        "never closes — the ablation that isolates the PET's contribution.",
        "- **APER prototypes**: cosine class means over FSA's features (the same warm-up). Neither "
        "it nor the ablation is a library learner, so neither has a real-input throughput row; "
        "both cost what FSA costs.",
        f"- **LAE** and **naive fine-tuning**: the library's learners, PETs "
        f"{meta['lae_pets']['text']} (text) / {meta['lae_pets']['image']} (image); "
        f"settings from a validation-only grid run before this benchmark (not re-run here): "
        f"LAE text {lae['text']['lae']}, image {lae['image']['lae']}; naive text "
        f"{lae['text']['naive']}, image {lae['image']['naive']}.",
        "- **Joint PET to convergence**: FSA's PET + a linear head trained on every training "
        "example, shuffled, learning rate from "
        + ", ".join(f"{d}: {', '.join(f'{x:g}' for x in v)}" for d, v in meta["joint_lrs"].items())
        + ", epochs by validation early stopping (patience 2, at most "
        + ", ".join(f"{d} {v}" for d, v in meta["joint_max_epochs"].items())
        + "), then the ridge head of the chosen width on [frozen ⊕ adapted]. It does not depend "
        "on the class order: run once.",
        "- **Joint-so-far oracle**: after every stage, the joint training above (its learning "
        "rate and epochs) from scratch on all training data of stages ≤ t, then the ridge head.",
        "",
        f"Choices, declared before the run: {meta.get('fsa_rule', FSA_RULE)} {DEFAULT_RULE}",
    ]


def write_report(data: dict, out: Path, folder: Path) -> None:
    """docs/LEARNING.md from results.json's content, its plots into `folder`."""
    known = list(STREAM_NAMES)
    ordered = sorted(
        data["streams"].items(), key=lambda kv: known.index(kv[0]) if kv[0] in known else len(known)
    )
    data = {**data, "streams": dict(ordered)}
    meta = data["meta"]
    images = plots(data, folder) if data["streams"] else []
    link = Path(os.path.relpath(folder, out.parent))
    keys = rows_of(data)
    lines = [
        "# Learning quality: continual learners on class-incremental streams",
        "",
        f"Generated by `bench/learning_report.py` from `{meta.get('results', 'docs/learning/results.json')}`, written by "
        f"`{meta['command']}` ({meta['written']}). Status: **{meta['status']}**"
        + (" — a *quick* run (one order, fewer examples)." if meta["quick"] else ".")
        + f" Wall time {meta['elapsed_seconds'] / 60:.1f} min, CPU {meta['cpu_seconds'] / 60:.1f} "
        f"min on {meta['cpus']} cores (load average during the run: mean "
        f"{meta['load_average_mean']:.1f}, max {meta['load_average_max']:.1f}; the machine is "
        "shared, so seconds are noisy).",
        "",
        "## Findings (generated)",
        "",
        *findings(data),
        "",
        "## Goals of issue 11",
        "",
        *goal_lines(data),
        "",
        "## Final accuracy and forgetting (%, mean ± std over orders)",
        "",
    ]
    for name, stream in data["streams"].items():
        lines += [*stream_table(name, stream, keys), ""]
    lines += [
        "## FSA's grid (validation only)",
        "",
        *grid_table(data),
        "",
        "## Cost",
        "",
    ]
    for name, stream in data["streams"].items():
        cost = stream.get("cost", {})
        lines += [*cost_table(name, stream), ""]
        fsa = cost.get("fsa", {})
        cached = [
            r
            for r in stream["runs"]
            if r["learner"] == data["choices"]["fsa"]["chosen"] and r["order"] == 0
        ]
        if "real_final_val" in fsa and cached:
            stages = stage_sizes(stream, 0)
            lines += [
                f"FSA fed real inputs (order 0): validation accuracy {pct(fsa['real_final_val'])} "
                f"vs {pct(run_metrics(cached[0]['R']['val'], stages)['final'])} with cached features.",
                "",
            ]
        info = stream["info"]
        lines += [
            f"Caching the frozen outputs of {sum(info['examples'].values())} examples: "
            f"{info['cache_seconds']:.0f} s wall, {info['cache_cpu_seconds']:.0f} s CPU.",
            "",
        ]
    if data["skipped"]:
        lines += [
            "## Not run (the budget of "
            f"{meta['budget_minutes']:.0f} minutes would have been exceeded)",
            "",
            *(
                f"- {label(s['learner'])} on {STREAM_NAMES.get(s['stream'], s['stream'])}, "
                f"order {s['order']} (estimated {s['estimate_seconds'] / 60:.0f} min)"
                for s in data["skipped"]
            ),
            "",
        ]
    lines += [*methods(data), "", "## Plots", ""]
    lines += [f"![{image}]({(link / image).as_posix()})" for image in images]
    out.write_text("\n".join(lines) + "\n")

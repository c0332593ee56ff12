"""The Serving section of docs/BENCHMARKS.md, rendered from bench/serving-results.json alone
(`python -m bench.serving --render bench/serving-results.json --doc docs/BENCHMARKS.md`)."""

from __future__ import annotations

import statistics

SECTION = ("<!-- serving:begin (written by make bench-serving) -->", "<!-- serving:end -->")
CONCURRENCY = ("1", "8", "32")
LABELS = {
    ("perennial", "onnx"): "Perennial, ONNX fp32",
    ("perennial", "torch"): "Perennial, torch fp32",
    ("perennial", "onnx-int8"): "Perennial, ONNX dynamic int8",
    ("kserve", "onnx"): "KServe, ONNX fp32",
    ("kserve", "torch"): "KServe, torch fp32",
}


def _median(values) -> float:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def _spread(values, fmt: str = "{:.1f}") -> str:
    """Median [min–max] (just the value when there is one)."""
    values = [v for v in values if v is not None]
    if not values:
        return "—"
    if len(values) == 1:
        return fmt.format(values[0])
    return (
        f"{fmt.format(statistics.median(values))} "
        f"[{fmt.format(min(values))}–{fmt.format(max(values))}]"
    )


def _label(results: dict, name: str) -> str:
    server = results["servers"][name]
    label = LABELS[(server["kind"], server["runtime"])]
    threads = server["threads"]
    extra = "".join(
        f", {k.removeprefix('PERENNIAL_')}={v}" for k, v in server.get("settings", {}).items()
    )
    return f"{label}, {threads} thread{'s' if threads > 1 else ''}{extra}"


def _find(results: dict, kind: str, runtime: str, threads: int) -> str | None:
    for name, server in results["servers"].items():
        if (server["kind"], server["runtime"], server["threads"]) == (kind, runtime, threads) and (
            not server.get("settings")
        ):
            return name
    return None


def _point(results: dict, name: str | None, concurrency: str, key: str) -> float:
    if name is None:
        return float("nan")
    return _median(p[key] for p in results["points"][name][concurrency])


def _limit(results: dict, threads: int) -> tuple[str, float, list[float]]:
    """(best batch size, its median rows/s, its per-round rows/s) at `threads`."""
    rounds = results["limit"][str(threads)]
    medians = {b: _median(r[b] for r in rounds) for b in rounds[0]}
    best = max(medians, key=medians.get)
    return best, medians[best], [r[best] for r in rounds]


def _verdict(met: bool) -> str:
    return "**met**" if met else "**missed**"


def section(results: dict) -> str:
    model = results["model"]["onnx"]
    work = results["workload"]
    load = results["load_average"]
    rounds_load = ", ".join("/".join(f"{x:.1f}" for x in r[:1]) for r in load.get("rounds", []))
    out = [
        "## Serving",
        "",
        f"`{results['command']}` on {results['date']} — {results['machine']}, Python "
        f"{results['python']}, torch {results['torch']}; the whole run took "
        f"{results['wall_seconds'] / 60:.1f} min ({results['bench_cpu_seconds']} CPU s in the "
        f"bench process). **The machine is shared** with other engineers' jobs: load average "
        f"(1 min) {load['start'][0]:.1f} at the start, {rounds_load} at the start of each round, "
        f"{load['end'][0]:.1f} at the end. So every point was measured in {results['rounds']} "
        f"rounds, each visiting every (concurrency, server) point in a rotated order with all "
        f"servers alive; tables give the median [min–max] over the rounds. "
        f"{results['duration_per_point_s']:.0f} s measured per point after "
        f"{results['warmup_per_point_s']:.0f} s of warm-up.",
        "",
        f"**The model**: the trainer's default learner (`{model['learner']}`: {model['pet']} PET "
        f"{'active' if model['adapted'] else 'not yet trained'}, random-projection ridge head) "
        f"after a class-incremental WordNet stream of {work['stream_examples']} glosses in "
        f"micro-batches of {work['micro_batch']}: {model['classes']} classes, a "
        f"{model['snapshot_bytes'] / 1e6:.1f} MB snapshot, published to Redis with the store API "
        "(trained once per runtime: a snapshot records the runtime its features came from). "
        f"**Queries**: {work['queries']} held-out glosses of those classes, one random gloss per "
        "request. **Every server runs the same function**, `services.inference.model.predict`, "
        "on the version `load_version` builds from the same Redis snapshot: Perennial "
        "(`python -m services.inference`, defaults) batches requests into it; KServe 0.21's "
        "Python model server (`bench/kserve_server.py`, its own venv with this project installed "
        "by path) calls it once per request (it has no dynamic batching). Runtimes: ONNX Runtime "
        "fp32 (the services' default `PERENNIAL_RUNTIME=onnx`), torch fp32 (the runtime "
        "before it) and, for Perennial, ONNX Runtime with dynamic int8 quantization "
        "(`PERENNIAL_RUNTIME=onnx-int8`, its own snapshot: features differ; its accuracy effect "
        "is measured by `make bench-int8`). Threads: intra-op threads of torch and ONNX Runtime alike. "
        + _cpus(results)
        + "Load: "
        "`tritonclient.grpc`, closed loop, in the bench process, which shares the 2 cores: its "
        "CPU share (CPU seconds of the load generator / wall time) is in the table.",
        "",
        "| c | server | req/s | p50 ms | p99 ms | errors | load generator CPU | server CPU ms / req |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in CONCURRENCY:
        for name in results["points"]:
            points = results["points"][name][c]
            out.append(
                f"| {c} | {_label(results, name)} "
                f"| {_spread([p['throughput'] for p in points])} "
                f"| {_spread([p['p50_ms'] for p in points], '{:.0f}')} "
                f"| {_spread([p['p99_ms'] for p in points], '{:.0f}')} "
                f"| {sum(p['errors'] for p in points)} "
                f"| {_spread([p['client_cpu_share'] * 100 for p in points], '{:.0f}')} % "
                f"| {_spread([p['server_cpu_ms_per_request'] for p in points])} |"
            )
    out += _inside(results)
    out += _limit_table(results)
    out += _goals(results)
    out += _before(results)
    out += _perf_analyzer(results)
    out += _swap(results)
    out += _adapters(results)
    out += [
        "",
        "Raw results: `bench/serving-results.json`; re-render this section with "
        "`python -m bench.serving --render bench/serving-results.json --doc docs/BENCHMARKS.md`.",
    ]
    return "\n".join(out)


def _inside(results: dict) -> list[str]:
    """Where the time goes inside Perennial, from its own histograms per point."""
    out = [
        "",
        "**Inside Perennial** (its own histograms over each point, warm-up included; medians over "
        "the rounds): queue wait per request, rows per model call, the model call (`predict`) "
        "per batch and per row, the drift monitor's update per request (its own thread, off the "
        "request path but on the same cores):",
        "",
        "| c | server | queue ms | rows / call | call ms | call ms / row | drift update ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in CONCURRENCY:
        for name, points in results["points"].items():
            inner = [p["inside"] for p in points[c] if p.get("inside")]
            if not inner:
                continue

            def cell(key, scale=1000.0, inner=inner):
                return _median(i[key] * scale if i[key] is not None else None for i in inner)

            per_row = _call_per_row(inner)
            out.append(
                f"| {c} | {_label(results, name)} | {cell('queue'):.1f} | {cell('rows', 1):.1f} "
                f"| {cell('batch'):.1f} | {per_row:.1f} | {cell('drift'):.1f} |"
            )
    return out


def _call_per_row(inner: list[dict]) -> float:
    """The model call's ms per row, median over the rounds' histograms."""
    return _median(
        i["batch"] / i["rows"] * 1000 if i["batch"] and i["rows"] else None for i in inner
    )


def _before(results: dict) -> list[str]:
    """The run before (`--before`), by its own results file: the figures the goals compare."""
    old = results.get("before")
    if not old:
        return []
    threads = old["threads"]
    perennial = _find(old, "perennial", "onnx", threads)
    kserve = _find(old, "kserve", "onnx", threads)
    _, limit, _ = _limit(old, threads)
    c32 = _point(old, perennial, "32", "throughput")
    inner = [p["inside"] for p in old["points"][perennial]["32"] if p.get("inside")]
    p50 = _point(old, perennial, "1", "p50_ms")
    text = (
        f"Before ({old['date']}{'; ' + old['note'] if old.get('note') else ''}): Perennial "
        f"(ONNX fp32, {threads} thread{'s' if threads > 1 else ''}) at c=32 {c32:.1f} req/s, "
        f"**{c32 / limit:.2f}** of that run's in-process limit ({limit:.1f} rows/s), its model "
        f"call {_call_per_row(inner):.1f} ms per row; p50 at c=1 {p50:.1f} ms"
    )
    if kserve:
        text += f" against KServe's {_point(old, kserve, '1', 'p50_ms'):.1f} ms"
    return ["", text + "."]


def _cpus(results: dict) -> str:
    """Where the threads ran (`PERENNIAL_CPU_PINNING=auto`, by threads); runs before it: nothing."""
    plans = results.get("cpu_plan")
    if not plans:
        return ""
    parts = [
        f"at {threads} thread(s) the batch thread on CPU {_listed(plan['model_cpus'])} and "
        f"every other thread on CPU {_listed(plan['other_cpus'])}"
        if "model_cpus" in plan
        else f"at {threads} thread(s) no pinning"
        for threads, plan in plans.items()
    ]
    return (
        "CPUs (Perennial's default `PERENNIAL_CPU_PINNING=auto`): "
        + "; ".join(parts)
        + "; the in-process limit runs on the batch thread's CPU where there is one; KServe "
        "is not pinned, as its users run it. "
    )


def _listed(cpus: list[int]) -> str:
    return ", ".join(map(str, cpus))


def _limit_table(results: dict) -> list[str]:
    batches = results["batches"]
    out = [
        "",
        "**In-process limit**: `predict` called in the bench process (no server, no load "
        f"generator running) on random batches of the same queries, {results['limit_seconds']:g} "
        "s per batch size and round, ONNX Runtime fp32 — rows/s:",
        "",
        "| threads | " + " | ".join(f"batch {b}" for b in batches) + " | best |",
        "|---|" + "---|" * (len(batches) + 1),
    ]
    for threads, rounds in results["limit"].items():
        best, rate, _ = _limit(results, int(threads))
        cells = [_spread([r[str(b)] for r in rounds]) for b in batches]
        out.append(f"| {threads} | " + " | ".join(cells) + f" | {rate:.1f} (batch {best}) |")
    for threads, rounds in results.get("limit_unchunked", {}).items():
        cells = [_spread([r[str(b)] for r in rounds]) for b in batches]
        out.append(f"| {threads}, one pass per batch | " + " | ".join(cells) + " | |")
    choice = results.get("chunk_choice")
    if "limit_unchunked" in results:
        threads = next(iter(results["limit_unchunked"]))
        chunked = _median(r["32"] for r in results["limit"][threads])
        whole = _median(r["32"] for r in results["limit_unchunked"][threads])
        rows = choice["shipped"] if choice else 8  # results from before the choice ran with 8
        out += [
            "",
            f"`predict` runs the rows of FSA versions in length-sorted chunks of at most {rows}, "
            "each padded to its own longest text; *one pass per batch* is the ablation (the whole "
            f"batch padded to its longest): at batch 32, {chunked:.1f} vs {whole:.1f} rows/s "
            f"({chunked / whole:.2f}×).",
        ]
    if choice:
        out += ["", *_chunk_choice(choice)]
    return out


def _chunk_choice(choice: dict) -> list[str]:
    """The chunk size chosen on the training glosses (not the scored queries)."""
    batches = choice["batches"]
    out = [
        f"**Chunk size** (`CHUNK_ROWS`), chosen on the training glosses — never the queries "
        f"scored above — by the geometric mean of rows/s at batches "
        f"{', '.join(map(str, batches))} ({choice['threads']} thread):",
        "",
        "| rows per pass | " + " | ".join(f"batch {b}" for b in batches) + " | geometric mean |",
        "|---|" + "---|" * (len(batches) + 1),
    ]
    for rows, rounds in choice["rates"].items():
        cells = [_spread([r[str(b)] for r in rounds]) for b in batches]
        mark = " **(chosen)**" if int(rows) == choice["chosen"] else ""
        out.append(f"| {rows}{mark} | " + " | ".join(cells) + f" | {choice['score'][rows]:.1f} |")
    verdict = (
        "the shipped value"
        if choice["chosen"] == choice["shipped"]
        else f"**not** the shipped value {choice['shipped']}: change `CHUNK_ROWS` and run again"
    )
    out += ["", f"The choice, {choice['chosen']}, is {verdict}."]
    return out


def _goals(results: dict) -> list[str]:
    threads = results["threads"]
    other = next(int(t) for t in results["limit"] if int(t) != threads)
    p_onnx = _find(results, "perennial", "onnx", threads)
    k_onnx = _find(results, "kserve", "onnx", threads)
    p_torch = _find(results, "perennial", "torch", threads)
    k_torch = _find(results, "kserve", "torch", threads)
    out = ["", "| goal | measured | verdict |", "|---|---|---|"]
    for t in (threads, other):
        name = _find(results, "perennial", "onnx", t)
        best, rate, _ = _limit(results, t)
        ratio = _point(results, name, "32", "throughput") / rate
        out.append(
            f"| server efficiency, {t} thread{'s' if t > 1 else ''}: Perennial at c=32 ≥ 0.85 of "
            f"the in-process limit at the same threads | "
            f"{_point(results, name, '32', 'throughput'):.1f} / {rate:.1f} = **{ratio:.2f}** | "
            f"{_verdict(ratio >= 0.85)}"
            + (
                " (a server above its in-process limit: that limit collapsed in-process, see the "
                "limit table; not a valid bound)"
                if ratio > 1
                else ""
            )
            + " |"
        )
    if k_onnx:
        for c in ("8", "32"):
            ratio = _point(results, p_onnx, c, "throughput") / _point(
                results, k_onnx, c, "throughput"
            )
            p99 = (_point(results, p_onnx, c, "p99_ms"), _point(results, k_onnx, c, "p99_ms"))
            out.append(
                f"| same model, runtime, code: Perennial ≥ KServe at c={c} with a lower p99 "
                f"| throughput **{ratio:.2f}×**, p99 {p99[0]:.0f} vs {p99[1]:.0f} ms "
                f"| {_verdict(ratio >= 1 and p99[0] < p99[1])} |"
            )
        p50 = (_point(results, p_onnx, "1", "p50_ms"), _point(results, k_onnx, "1", "p50_ms"))
        out.append(
            f"| p50 ≤ KServe's at c=1 | {p50[0]:.1f} vs {p50[1]:.1f} ms "
            f"| {_verdict(p50[0] <= p50[1])} |"
        )
    p_int8 = _find(results, "perennial", "onnx-int8", threads)
    for name, runtime in ((p_onnx, "ONNX fp32, the default"), (p_int8, "ONNX int8")):
        if name is None:
            continue
        if k_torch:
            ratio = _point(results, name, "32", "throughput") / _point(
                results, k_torch, "32", "throughput"
            )
            out.append(
                f"| ≥ 2.5× KServe on torch fp32 (c=32); Perennial on {runtime} "
                f"| **{ratio:.2f}×** | {_verdict(ratio >= 2.5)} |"
            )
        ratio = _point(results, name, "32", "throughput") / _point(
            results, p_torch, "32", "throughput"
        )
        out.append(
            f"| ≥ 2× Perennial on torch fp32 (c=32); Perennial on {runtime} "
            f"| **{ratio:.2f}×** | {_verdict(ratio >= 2)} |"
        )
    if "swap" in results:
        sw = results["swap"]
        failed = sum(p["swapping"]["errors"] for p in sw["pairs"])
        out.append(
            f"| hot swap every 100 ms: p99 +≤ 10 %, 0 failed | p99 **{sw['p99_increase']:+.0%}**, "
            f"{failed} failed | {_verdict(sw['p99_increase'] <= 0.10 and failed == 0)} |"
        )
    winner = max(
        (threads, other),
        key=lambda t: _point(results, _find(results, "perennial", "onnx", t), "32", "throughput"),
    )
    out += [
        "",
        "Threads: at c=32 Perennial serves "
        + " vs ".join(
            f"{_point(results, _find(results, 'perennial', 'onnx', t), '32', 'throughput'):.1f} "
            f"req/s with {t}"
            for t in (threads, other)
        )
        + " intra-op thread(s); the in-process limit is "
        + " vs ".join(f"{_limit(results, t)[1]:.1f}" for t in (threads, other))
        + f" rows/s. **{winner} wins** at c=32; the servers compared above use "
        f"{threads}.",
    ]
    points = results["points"][p_onnx]["32"] if p_onnx else []
    rows = _median(p["inside"].get("rows") for p in points if p.get("inside"))
    if rows == rows:  # not NaN: the server's histograms were read
        nearest = min(results["limit"][str(threads)][0], key=lambda b: abs(int(b) - rows))
        at = _median(r[nearest] for r in results["limit"][str(threads)])
        served = _point(results, p_onnx, "32", "throughput")
        out += [
            "",
            f"Batch size: at c=32 Perennial's model calls held {rows:.1f} rows on average (a closed "
            "loop of 32 clients and one batch thread settles into two alternating half batches); "
            f"the in-process limit at batch {nearest} is {at:.1f} rows/s, so the server reaches "
            f"{served / at:.2f} of the limit at the batch size it forms, against "
            f"{served / _limit(results, threads)[1]:.2f} of the best batch's.",
        ]
    return out


def _perf_analyzer(results: dict) -> list[str]:
    check = results.get("perf_analyzer")
    if not check:
        return []
    point = check["perf_analyzer"]
    if not point["csv"]:
        return ["", f"perf_analyzer cross-check failed: `{point['stderr'].strip()[:200]}`"]
    row = point["csv"][0]
    ours = check["ours"]
    return [
        "",
        f"**Cross-check with perf_analyzer** (C++ client; `{_label(results, check['server'])}`, "
        f"c={check['concurrency']}, the same queries as its `--input-data`), between two runs of "
        f"our load generator on the same point: perf_analyzer "
        f"{float(row['Inferences/Second']):.1f} req/s, p50 {int(row['p50 latency']) / 1000:.0f} "
        f"ms, p99 {int(row['p99 latency']) / 1000:.0f} ms, its CPU share "
        f"{point['client_cpu_share']:.0%}; ours "
        + " and ".join(
            f"{p['throughput']:.1f} req/s (p50 {p['p50_ms']:.0f}, p99 {p['p99_ms']:.0f} ms, "
            f"CPU share {p['client_cpu_share']:.0%})"
            for p in ours
        )
        + f". Command: `{point['command']}`.",
    ]


def _swap(results: dict) -> list[str]:
    if "swap" not in results:
        return []
    sw = results["swap"]
    pairs = sw["pairs"]
    return [
        "",
        f"**Hot swap** (Perennial, ONNX fp32, c=8, the other servers stopped; {len(pairs)} pairs, "
        "baseline then swapping): p99 without swaps "
        + ", ".join(f"{p['baseline']['p99_ms']:.0f}" for p in pairs)
        + " ms; with a new version published every 100 ms "
        + ", ".join(f"{p['swapping']['p99_ms']:.0f}" for p in pairs)
        + " ms (versions published / swapped in: "
        + ", ".join(f"{p['versions_published']} / {p['swaps_applied']:.0f}" for p in pairs)
        + f"; failed requests: {sum(p['swapping']['errors'] for p in pairs)} of "
        f"{sum(p['swapping']['requests'] for p in pairs)}); server CPU per request "
        + ", ".join(f"{p['baseline']['server_cpu_ms_per_request']:.1f}" for p in pairs)
        + " → "
        + ", ".join(f"{p['swapping']['server_cpu_ms_per_request']:.1f}" for p in pairs)
        + " ms (building versions included). "
        + (
            f"The p99 increase in the goals compares the pooled latencies: "
            f"{sw['pooled_p99_ms']['baseline']:.0f} ms over "
            f"{sw['pooled_requests']['baseline']} requests without swaps, "
            f"{sw['pooled_p99_ms']['swapping']:.0f} ms over "
            f"{sw['pooled_requests']['swapping']} with."
            if "pooled_p99_ms" in sw
            else "The p99 increase in the goals is median over median (this results file "
            "predates the pooled estimate)."
        ),
    ]


def _adapters(results: dict) -> list[str]:
    if not results.get("adapters"):
        return []
    out = [
        "",
        "**Resident adapters** (Perennial, ONNX fp32, c=32; requests round-robin over all of them "
        "vs all to one):",
        "",
        "| adapters | tensor bytes / adapter | RSS growth / adapter | spread: req/s, p99 ms | one: req/s, p99 ms |",
        "|---|---|---|---|---|",
    ]
    for row in results["adapters"]:
        out.append(
            f"| {row['adapters']} | {row['tensor_bytes_per_adapter'] / 1e6:.2f} MB "
            f"| {row['rss_bytes_per_adapter'] / 1e6:.2f} MB "
            f"| {row['spread']['throughput']:.1f}, {row['spread']['p99_ms']:.0f} "
            f"| {row['one']['throughput']:.1f}, {row['one']['p99_ms']:.0f} |"
        )
    return out

"""bench/serving_report.py: the Serving section renders from a results file alone, with
medians over rounds, the in-process limit's best batch and the goals' verdicts."""

from __future__ import annotations

from bench.serving_report import section

SERVERS = {
    "perennial-onnx-t1": ("perennial", "onnx", 1, {}, 50.0),
    "perennial-onnx-t2": ("perennial", "onnx", 2, {}, 40.0),
    "perennial-torch-t1": ("perennial", "torch", 1, {}, 20.0),
    "perennial-onnx-int8-t1": ("perennial", "onnx-int8", 1, {}, 100.0),
    "kserve-onnx-t1": ("kserve", "onnx", 1, {}, 45.0),
    "kserve-torch-t1": ("kserve", "torch", 1, {}, 18.0),
}


def point(c: int, throughput: float, kind: str) -> dict:
    faster = kind == "perennial"
    return {
        "concurrency": c, "requests": int(throughput * 5), "errors": 0,
        "throughput": throughput, "p50_ms": 20.0 if faster else 25.0,
        "p99_ms": 40.0 if faster else 50.0, "client_cpu_share": 0.03,
        "server_cpu_share": 0.9, "server_cpu_ms_per_request": 17.0,
        **({"inside": {"queue": 0.002, "batch": 0.03, "rows": 2.0, "drift": 0.001}}
           if faster else {}),
    }  # fmt: skip


def results() -> dict:
    points = {
        name: {
            str(c): [point(c, rate * scale, kind) for scale in (0.9, 1.0, 1.1)] for c in (1, 8, 32)
        }
        for name, (kind, _, _, _, rate) in SERVERS.items()
    }
    limit = {b: 10.0 * (1 + (b == "16")) * 5 for b in ("1", "2", "4", "8", "16", "32", "64")}
    return {
        "date": "2026-11-30T00:00:00+00:00", "machine": "test CPU, 2 cores", "python": "3.11.7",
        "torch": "2.13.0", "command": "make bench-serving", "duration_per_point_s": 5.0,
        "warmup_per_point_s": 1.0, "rounds": 3, "limit_seconds": 1.5, "threads": 1,
        "load_average": {"start": [1.0, 1.0, 1.0], "rounds": [[2.0, 2, 2]] * 3, "end": [3.0, 3, 3]},
        "batches": [1, 2, 4, 8, 16, 32, 64],
        "workload": {"stream_examples": 480, "classes": 24, "queries": 960, "micro_batch": 16},
        "model": {"onnx": {"learner": "fsa", "pet": "lora", "adapted": True, "classes": 24,
                           "snapshot_bytes": 8_900_000}},
        "servers": {name: {"kind": k, "runtime": r, "threads": t, "settings": s}
                    for name, (k, r, t, s, _) in SERVERS.items()},
        "points": points,
        "limit": {"1": [limit] * 3, "2": [{b: v / 2 for b, v in limit.items()}] * 3},
        "limit_unchunked": {"1": [{b: v / 4 for b, v in limit.items()}] * 3},
        "wall_seconds": 900, "bench_cpu_seconds": 300,
    }  # fmt: skip


def test_goals_from_the_results_alone():
    text = section(results())
    # Perennial 50 req/s at c=32 over a best-batch limit of 100 rows/s (batch 16): 0.50
    assert "50.0 / 100.0 = **0.50** | **missed**" in text
    assert "throughput **1.11×**, p99 40 vs 50 ms | **met**" in text  # 50 vs 45 at c=8 and 32
    assert "| p50 ≤ KServe's at c=1 | 20.0 vs 25.0 ms | **met** |" in text
    assert (
        "| ≥ 2.5× KServe on torch fp32 (c=32); Perennial on ONNX fp32, the default | **2.78×** | **met** |"
        in text
    )
    assert (
        "| ≥ 2× Perennial on torch fp32 (c=32); Perennial on ONNX fp32, the default | **2.50×** | **met** |"
        in text
    )
    assert "| ≥ 2× Perennial on torch fp32 (c=32); Perennial on ONNX int8 | **5.00×** |" in text
    assert "**1 wins** at c=32" in text


def test_medians_with_spread_per_server():
    text = section(results())
    assert "| 32 | Perennial, ONNX fp32, 1 thread | 50.0 [45.0–55.0] |" in text
    assert "| 32 | Perennial, ONNX dynamic int8, 1 thread | 100.0 [90.0–110.0] |" in text
    assert "| 1, one pass per batch | 12.5 [12.5–12.5] |" in text  # the ablation of length chunks
    assert "at batch 32, 50.0 vs 12.5 rows/s (4.00×)" in text
    assert "100.0 (batch 16)" in text


def test_the_chunk_size_choice_and_whether_it_is_shipped():
    rates = {
        "4": [{"8": 40.0, "16": 40.0, "32": 40.0}] * 3,
        "8": [{"8": 50.0, "16": 50.0, "32": 50.0}] * 3,
    }
    choice = {
        "texts": "training glosses", "threads": 1, "batches": [8, 16, 32], "rates": rates,
        "score": {"4": 40.0, "8": 50.0}, "chosen": 8, "shipped": 8,
    }  # fmt: skip
    text = section({**results(), "chunk_choice": choice})
    assert (
        "| 8 **(chosen)** | 50.0 [50.0–50.0] | 50.0 [50.0–50.0] | 50.0 [50.0–50.0] | 50.0 |" in text
    )
    assert "The choice, 8, is the shipped value." in text
    assert "chunks of at most 8," in text
    text = section({**results(), "chunk_choice": {**choice, "shipped": 4}})
    assert "**not** the shipped value 4" in text
    assert "chunks of at most 4," in text


def test_hot_swap_verdict_from_the_pooled_latencies():
    data = results()
    pairs = [
        {"baseline": point(8, 50.0, "perennial"), "swapping": point(8, 50.0, "perennial"),
         "versions_published": 50, "swaps_applied": 48.0}
        for _ in range(3)
    ]  # fmt: skip
    data["swap"] = {
        "pairs": pairs,
        "pooled_p99_ms": {"baseline": 100.0, "swapping": 108.0},
        "pooled_requests": {"baseline": 750, "swapping": 740},
        "p99_increase": 0.08,
    }
    text = section(data)
    assert "p99 **+8%**, 0 failed | **met**" in text
    assert "100 ms over 750 requests without swaps, 108 ms over 740 with" in text
    del data["swap"]["pooled_p99_ms"]
    assert "predates the pooled estimate" in section(data)


def test_where_the_threads_ran_and_the_run_before_from_its_own_results():
    now = results()
    now["cpu_plan"] = {
        "1": {"cpu_pinning": "batch thread pinned", "model_cpus": [1], "other_cpus": [0]},
        "2": {"cpu_pinning": "none"},
    }
    before = results()
    before["points"]["perennial-onnx-t1"]["32"] = [point(32, 30.0, "perennial")] * 3
    now["before"] = {**before, "date": "2026-11-29T00:00:00+00:00", "note": "no pinning"}
    text = section(now)
    assert "at 1 thread(s) the batch thread on CPU 1 and every other thread on CPU 0" in text
    assert "at 2 thread(s) no pinning" in text
    # 30 req/s over that run's limit of 100 rows/s; its call: 30 ms for 2 rows
    assert (
        "Before (2026-11-29T00:00:00+00:00; no pinning): Perennial (ONNX fp32, 1 thread) at c=32 "
        "30.0 req/s, **0.30** of that run's in-process limit (100.0 rows/s), its model call "
        "15.0 ms per row; p50 at c=1 20.0 ms against KServe's 25.0 ms." in text
    )
    assert "CPUs (" not in section(results())  # runs that did not record it say nothing

"""bench/learning_report.py: metrics over orders, the declared choice rules and the goal verdicts."""

from __future__ import annotations

import math

import pytest

from bench.learning_report import choose_fsa, goals, pick, recommend, run_metrics, summarise

NAN = math.nan


def matrix(final: float, first: float = 1.0) -> list[list[float]]:
    """Two stages: group 0 at `first` after stage 0, both groups at `final` after stage 1."""
    return [[first, NAN], [final, final]]


def run(learner: str, order: int, val: float, test: float | None = None, **extra) -> dict:
    test = val if test is None else test
    return {"learner": learner, "order": order, "R": {"val": matrix(val), "test": matrix(test)},
            **extra}  # fmt: skip


def stream(finals: dict[str, tuple[float, float]], orders=(0, 1), **extra) -> dict:
    """Per learner (val, test) final accuracy, the same in every order."""
    runs = [run(k, o, v, t) for k, (v, t) in finals.items() for o in orders]
    return {
        "runs": runs,
        "info": {"stages": {str(o): [["a"], ["b"]] for o in orders}},
        "cost": {},
        **extra,
    }


def test_run_metrics_of_a_full_matrix():
    m = run_metrics([[0.9, NAN], [0.6, 0.8]], [1, 1])
    assert m["final"] == pytest.approx(0.7)
    assert m["avg_inc"] == pytest.approx((0.9 + 0.7) / 2)
    assert m["forgetting"] == pytest.approx(0.3)
    assert m["bwt"] == pytest.approx(-0.3)


def test_run_metrics_of_a_final_row_only():
    assert run_metrics([[NAN, NAN], [0.5, 0.7]], [2, 1]) == {"final": pytest.approx(17 / 30)}


def test_summarise_mean_std_and_orders():
    s = {"runs": [run("x", 0, 0.6), run("x", 1, 0.8), run("y", 0, 0.1)],
         "info": {"stages": {"0": [["a"], ["b"]], "1": [["a"], ["b"]]}}}  # fmt: skip
    mean, std, n = summarise(s, "x", "val")["final"]
    assert (mean, std, n) == (pytest.approx(0.7), pytest.approx(0.1), 2)


def test_pick_prefers_the_cheaper_within_half_a_point():
    assert pick([("wide", 0.034, (2048,)), ("narrow", 0.030, (1024,))]) == "narrow"
    assert pick([("wide", 0.040, (2048,)), ("narrow", 0.030, (1024,))]) == "wide"
    # equally cheap: the larger score, whatever the order of the candidates
    assert pick([("a", 0.046, (2048,)), ("b", 0.050, (2048,))]) == "b"


def test_choose_fsa_maximises_the_mean_stream_margin():
    a, b = "fsa/lr=0.001,ep=5,W=256,M=1024", "fsa/lr=0.0003,ep=5,W=1024,M=2048"
    streams = {
        "a": stream(
            {"simplecil": (0.60, 0.6), "ranpac": (0.62, 0.6), a: (0.66, 0.7), b: (0.72, 0.7)}
        ),
        "b": stream(
            {"simplecil": (0.50, 0.5), "ranpac": (0.40, 0.4), a: (0.55, 0.5), b: (0.53, 0.5)}
        ),
    }
    choice = choose_fsa(streams)
    assert choice["chosen"] == b  # mean (+10, +3) beats (+4, +5), though its worst stream is lower
    assert choice["width"] == 2048
    assert choice["warmup"] == {"warmup_lr": 0.0003, "warmup_epochs": 5, "warmup_examples": 1024,
                                "warmup_cap": 4096}  # fmt: skip
    assert choice["tag"] == "lr=0.0003,ep=5,W=1024"
    assert choice["mean_margins"][a] == pytest.approx(0.045)


def test_fsa_keys_without_a_window_were_run_with_256():
    streams = {"a": stream({"simplecil": (0.6, 0.6), "ranpac": (0.6, 0.6),
                            "fsa/lr=0.001,ep=5,M=2048": (0.7, 0.7)})}  # fmt: skip
    choice = choose_fsa(streams)
    assert choice["warmup"]["warmup_examples"] == 256 and choice["tag"] == "lr=0.001,ep=5"


def test_recommend_skips_learners_missing_a_stream():
    streams = {
        "a": stream(
            {"simplecil": (0.6, 0.6), "ranpac": (0.6, 0.6), "fsa/x": (0.7, 0.7), "lae": (0.9, 0.9)}
        ),  # fmt: skip
        "b": stream({"simplecil": (0.5, 0.5), "ranpac": (0.6, 0.6), "fsa/x": (0.65, 0.6)}),
    }
    rec = recommend(streams, "fsa/x")
    assert rec["chosen"] == "fsa"
    assert rec["not_on_every_stream"] == ["lae", "naive"]
    assert rec["worst_margins"]["fsa"] == pytest.approx(0.05)


def test_goal_verdicts_from_numbers():
    key = "fsa/lr=0.001,ep=5,M=2048"
    finals = {"simplecil": (0.70, 0.70), "ranpac": (0.76, 0.76), key: (0.80, 0.79),
              "fsa_frozen/M=2048": (0.79, 0.78)}  # fmt: skip
    s = stream(finals, orders=(0,), joint={"ridge_val": 0.83, "ridge_test": 0.83})
    s["runs"].append({"learner": "oracle", "order": 0,
                      "R": {"val": [[1.0, NAN], [0.9, 0.9]], "test": [[1.0, NAN], [0.9, 0.9]]}})  # fmt: skip
    data = {"streams": {"x": s}, "choices": {"fsa": {"chosen": key, "width": 2048}}}
    (row,) = goals(data)
    assert row["margin_met"]  # 0.79 - 0.76 is 3.0 points despite float rounding
    assert row["margin_test"] == pytest.approx(0.03)
    assert row["pet_contribution_test"] == pytest.approx(0.01)
    assert row["joint_met"] is False  # 4 points behind joint
    assert row["forgetting"] == (pytest.approx(0.21), pytest.approx(0.1))
    assert row["forgetting_met"] is False

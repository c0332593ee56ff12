"""bench/learning_slow.py: the verdict and the section are computed from the results file."""

from __future__ import annotations

from pathlib import Path

from bench.learning_slow import section, verdict

RESULTS = Path("bench/learning-slow-results.json")


def run(final: float) -> dict:
    """One order of a 2-stage stream whose final accuracy is `final` on both parts."""
    matrix = [[final, float("nan")], [final, final]]
    return {
        "order": 0,
        "sizes": [2, 2],
        "R": {"val": matrix, "test": matrix},
        "pet_moved": 0.5,
        "seconds": 20.0,
    }


def results(gains: dict[str, float]) -> dict:
    """FSA (ratio 0) at 0.50 on every stream; ratio 0.1 at 0.50 + gain."""
    return {
        "meta": {
            "written": "2026-12-01 03:00 UTC",
            "cpus": 2,
            "threads": 1,
            "fsa": "lr=0.001,ep=5,M=2048",
            "budget_minutes": 50,
            "skipped": [{"stream": "verbs", "order": 2}],
        },
        "streams": {
            name: {"runs": {"0": [run(0.50)], "0.1": [run(0.50 + gain)]}}
            for name, gain in gains.items()
        },
    }


def test_a_ratio_is_kept_only_if_it_wins_on_every_stream():
    both = verdict(results({"nouns": 0.02, "verbs": 0.01}))
    assert both["kept"] and both["best"] == "0.1"
    assert round(both["worst"]["0.1"], 6) == 1.0
    one = verdict(results({"nouns": 0.02, "verbs": -0.01}))
    assert not one["kept"] and round(one["worst"]["0.1"], 6) == -1.0


def test_section_rows_and_verdict_come_from_the_results():
    text = section(results({"nouns": 0.02, "verbs": -0.01}), RESULTS)
    assert "| WordNet nouns | 0.1 | 1 | 52.0 ± 0.0 | 52.0 ± 0.0 |" in text
    assert "validation gain over FSA WordNet nouns +2.0, WordNet verbs -1.0" in text
    assert "**Not kept**" in text
    assert "WordNet verbs order 2" in text
    assert "Raw results: `bench/learning-slow-results.json`" in text
    assert "**Kept**: ratio 0.1" in section(results({"nouns": 0.02, "verbs": 0.01}), RESULTS)

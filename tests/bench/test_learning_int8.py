"""bench/learning_int8.py: the section is computed from the results file."""

from __future__ import annotations

from bench.learning_int8 import section


def results(image_ops: int) -> dict:
    def final(test: float) -> dict:
        return {"simplecil": {"val": test, "test": test}}

    return {
        "meta": {
            "written": "2026-11-30 12:00 UTC",
            "cpus": 2,
            "threads": 1,
            "results": "bench/learning-int8-results.json",
            "warmup_tag": "lr=0.001,ep=5",
            "widths": {"shipped": 1024, "measured": [1024, 2048]},
        },
        "streams": {
            "nouns": {
                "onnx": {"final": final(0.700), "quantized_ops": 0},
                "onnx-int8": {"final": final(0.680), "quantized_ops": 36},
            },
            "fmnist": {
                "onnx": {"final": final(0.850), "quantized_ops": 0},
                "onnx-int8": {"final": final(0.850), "quantized_ops": image_ops},
            },
        },
    }


def test_rows_and_range_come_from_the_results():
    text = section(results(image_ops=0))
    assert "| WordNet nouns | SimpleCIL | 70.0 | 68.0 | -2.0 |" in text
    assert "| Fashion-MNIST | SimpleCIL | 85.0 | 85.0 | +0.0 |" in text
    assert "Δ ranges from -2.0 to +0.0 points (mean -1.0)" in text


def test_a_graph_without_integer_operations_is_explained_only_when_measured_so():
    assert "Fashion-MNIST: the int8 graph has no integer operation" in section(results(0))
    assert "no integer operation" not in section(results(image_ops=49))

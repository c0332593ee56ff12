"""The demo's reading of Prometheus histograms."""

import math

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from perennial_dev.demo import histogram_quantile


def _samples(values):
    registry = CollectorRegistry()
    histogram = Histogram("fresh_seconds", "x", buckets=(1, 2, 4, 8), registry=registry)
    for value in values:
        histogram.observe(value)
    samples = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def test_quantile_interpolates_inside_the_bucket_like_prometheus():
    samples = _samples([0.5] * 50 + [3.0] * 50)
    assert histogram_quantile(samples, "fresh_seconds", 0.5) == 1.0  # rank 50 closes bucket le=1
    assert histogram_quantile(samples, "fresh_seconds", 0.75) == 3.0  # halfway through (2, 4]


def test_quantile_of_an_empty_histogram_is_nan():
    assert math.isnan(histogram_quantile(_samples([]), "fresh_seconds", 0.5))
    assert math.isnan(histogram_quantile({}, "fresh_seconds", 0.5))

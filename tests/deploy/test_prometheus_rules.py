"""deploy/prometheus/rules.yml: valid for promtool, unit-tested by promtool, every alert documented."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
RULE_TESTS = Path(__file__).with_name("prometheus_rules_test.yml")
RUNBOOK = ROOT / "docs" / "RUNBOOK.md"
ALERTS = {
    "PerennialTargetDown",
    "PerennialMetricsAbsent",
    "ServedAccuracyDropped",
    "FeedbackAccuracyLow",
    "TrainerBackpressure",
    "DeadLettersHigh",
    "DependencyErrors",
    "VerificationFailures",
    "DriftDetected",
    "ForgettingHigh",
    "GuardrailHeld",
    "FreshnessSlow",
    "TrainerLagHigh",
    "SnapshotStale",
    "TrainerStalled",
    "SnapshotCorrupted",
    "SnapshotWritesFenced",
    "InferenceErrorsHigh",
    "InferenceLatencyHigh",
}


def promtool(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    assert binary, "promtool not found: install the Debian package 'prometheus' (make setup does)"
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def alerts() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_promtool_check_rules() -> None:
    result = promtool("check", "rules", "--lint=all", "--lint-fatal", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_by_promtool() -> None:
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert tested == ALERTS


@pytest.mark.parametrize("rule", alerts(), ids=lambda rule: rule["alert"])
def test_alert_has_for_severity_summary_and_a_runbook_paragraph(rule: dict) -> None:
    assert rule["alert"] in ALERTS
    assert re.fullmatch(r"\d+[smh]", rule["for"]), rule
    assert rule["labels"]["severity"] in {"info", "warning", "critical"}
    assert rule["annotations"]["summary"]
    assert _seconds(rule["for"]) >= 60, "a `for` under a minute pages on one scrape's noise"
    anchor = rule["alert"].lower()
    # The chart rewrites the base from monitoring.runbookUrl; this file carries its default.
    assert rule["annotations"]["runbook_url"] == f"{runbook_base()}#{anchor}"
    runbook = RUNBOOK.read_text()
    section = re.search(rf"^## {rule['alert']}\n(.+?)(?=^## |\Z)", runbook, re.M | re.S)
    assert section and len(section.group(1).split()) > 40, (
        f"no runbook paragraph for {rule['alert']}"
    )


def runbook_base() -> str:
    values = yaml.safe_load((ROOT / "helm" / "perennial" / "values.yaml").read_text())
    base = values["monitoring"]["runbookUrl"]
    assert base.startswith("https://"), "runbook links must be absolute"
    return base


def _seconds(duration: str) -> int:
    return int(duration[:-1]) * {"s": 1, "m": 60, "h": 3600}[duration[-1]]


def test_every_aggregation_keeps_namespace_and_cluster_and_every_by_keeps_job() -> None:
    """Two releases in one cluster never merge: `by` keeps cluster, namespace and job; joins
    across the trainer and inference jobs match on release instead of job."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    for rule in (r for g in groups for r in g["rules"]):
        for labels in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", rule["expr"]):
            names = {label.strip() for label in labels.split(",")}
            assert {"cluster", "namespace"} <= names, (rule.get("record") or rule["alert"], labels)
            assert "job" in names or "release" in names, (
                rule.get("record") or rule["alert"],
                labels,
            )


def test_recorded_series_are_named_after_their_aggregation_level() -> None:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    for rule in (r for g in groups for r in g["rules"] if "record" in r):
        assert rule["record"].startswith("namespace_job"), rule["record"]


def test_the_rule_set_names_every_alert_once() -> None:
    names = [rule["alert"] for rule in alerts()]
    assert sorted(names) == sorted(ALERTS)

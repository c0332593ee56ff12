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
    "DriftDetected",
    "ForgettingHigh",
    "GuardrailHeld",
    "FreshnessSlow",
    "TrainerLagHigh",
    "SnapshotStale",
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
    anchor = rule["alert"].lower()
    assert rule["annotations"]["runbook_url"] == f"docs/RUNBOOK.md#{anchor}"
    runbook = RUNBOOK.read_text()
    section = re.search(rf"^## {rule['alert']}\n(.+?)(?=^## |\Z)", runbook, re.M | re.S)
    assert section and len(section.group(1).split()) > 40, (
        f"no runbook paragraph for {rule['alert']}"
    )


def test_the_rule_set_names_every_alert_once() -> None:
    names = [rule["alert"] for rule in alerts()]
    assert sorted(names) == sorted(ALERTS)

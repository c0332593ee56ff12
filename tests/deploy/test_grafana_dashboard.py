"""deploy/grafana/perennial.json and docs/METRICS.md: valid queries, the promised panels, every metric documented."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry

from services.inference.metrics import InferenceDriftMetrics, InferenceMetrics
from services.trainer.metrics import TrainerDriftMetrics, TrainerMetrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "perennial.json"
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
METRICS_DOC = ROOT / "docs" / "METRICS.md"


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the dashboard (panels and annotations), variables substituted."""
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in board["annotations"]["list"]]
    return [e.replace("$adapter", ".*") for e in exprs]


def test_dashboard_has_the_promised_panels() -> None:
    board = json.loads(DASHBOARD.read_text())
    titles = " | ".join(p["title"].lower() for p in board["panels"])
    for topic in (
        "freshness",
        "requests",
        "latency",
        "versions per adapter",
        "drift scores",
        "drift detections",
        "forgetting",
        "accuracy matrix",
        "consumer lag",
        "dead letters",
    ):
        assert topic in titles, topic
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": expr}
                    for i, expr in enumerate(dashboard_queries())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: install the Debian package 'prometheus' (make setup does)"
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def registered_names() -> set[str]:
    registry = CollectorRegistry()
    for metrics in (TrainerMetrics, InferenceMetrics, TrainerDriftMetrics, InferenceDriftMetrics):
        metrics(registry)
    return {f"{m.name}_total" if m.type == "counter" else m.name for m in registry.collect()}


def test_metrics_doc_lists_every_registered_metric() -> None:
    documented = set(re.findall(r"`(perennial_[a-z_]+)`", METRICS_DOC.read_text()))
    missing = registered_names() - documented
    assert not missing, f"add to docs/METRICS.md: {sorted(missing)}"


def test_dashboard_and_rules_use_only_documented_metrics() -> None:
    documented = set(re.findall(r"`(perennial_[a-z_]+)`", METRICS_DOC.read_text()))
    text = "\n".join(dashboard_queries()) + RULES.read_text()
    raw = re.findall(r"(?<![:\w])(perennial_[a-z_]+)(?![:\w])", text)  # not parts of recorded names
    used = {re.sub(r"_(bucket|sum|count)$", "", name) for name in raw}
    assert used <= documented, f"undocumented: {sorted(used - documented)}"

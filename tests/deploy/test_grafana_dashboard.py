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


VARIABLES = ("namespace", "job", "instance", "adapter")


def substitute(expr: str) -> str:
    """A query as Grafana sends it with every variable on "All"."""
    for name in VARIABLES:
        expr = expr.replace(f"${name}", ".*")
    return expr


def panels() -> list[dict]:
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the dashboard (panels and annotations), variables substituted."""
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [a["expr"] for a in board["annotations"]["list"]]
    return [substitute(e) for e in exprs]


def test_dashboard_has_datasource_namespace_job_instance_and_adapter_variables() -> None:
    board = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert list(variables) == ["datasource", *VARIABLES]
    assert variables["datasource"]["type"] == "datasource"
    for name in VARIABLES:
        assert variables[name]["includeAll"] and variables[name]["allValue"] == ".*"
        assert variables[name]["datasource"]["uid"] == "${datasource}"
    for panel in panels():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            # Every query is scoped to the chosen release: namespace and job (raw series also
            # by instance); two releases in one cluster never mix on a panel.
            assert 'namespace=~"$namespace"' in expr and 'job=~"$job"' in expr, expr


def test_one_unit_per_axis() -> None:
    """Each panel has one unit on its left axis; a second unit only through overrides that
    move their series to the right axis, and at most one unit there."""
    for panel in panels():
        config = panel["fieldConfig"]
        assert config["defaults"].get("unit"), panel["title"]
        right = set()
        for override in config.get("overrides", []):
            properties = {p["id"]: p["value"] for p in override["properties"]}
            if "unit" in properties and properties["unit"] != config["defaults"]["unit"]:
                assert properties.get("custom.axisPlacement") == "right", panel["title"]
                right.add(properties["unit"])
        assert len(right) <= 1, panel["title"]


def shown_metrics() -> set[str]:
    """Metrics a panel reads, directly or through the recorded series it queries."""
    exprs = "\n".join(substitute(t["expr"]) for p in panels() for t in p["targets"])
    groups = yaml.safe_load(RULES.read_text())["groups"]
    recorded = {r["record"]: r["expr"] for g in groups for r in g["rules"] if "record" in r}
    text = exprs + "".join(expr for name, expr in recorded.items() if name in exprs)
    raw = re.findall(r"(?<![:\w])(perennial_[a-z_]+)(?![:\w])", text)
    return {re.sub(r"_(bucket|sum|count)$", "", name) for name in raw}


def test_every_documented_metric_is_on_a_panel_or_listed_as_not_shown() -> None:
    doc = METRICS_DOC.read_text()
    documented = set(re.findall(r"^\| `(perennial_[a-z_]+)`", doc, re.M))
    not_shown = doc.split("Not shown:", 1)[1] if "Not shown:" in doc else ""
    missing = {m for m in documented - shown_metrics() if f"`{m}`" not in not_shown}
    assert not missing, f"put on a panel or list under 'Not shown' in docs/METRICS.md: {missing}"


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

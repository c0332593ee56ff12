"""The settings classes are the one declaration of every PERENNIAL_* variable: the generated
docs, the README, the docs and the chart name only declared variables, and the chart's
environment loads into each service's settings (with the services' own defaults)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from perennial.config import variable
from perennial_dev import configuration
from services.inference.settings import InferenceSettings
from services.trainer.settings import TrainerSettings

from .test_chart import _env
from .values import VALUE_SETS

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = {"inference": InferenceSettings, "trainer": TrainerSettings}
CLI_VARIABLES = {"PERENNIAL_TRAINER_TARGET"}  # read by the `perennial` CLI, not by a service
# The chart sets these on purpose: the required ones, the device from gpu.enabled, and what it
# sizes to its pods' resources (threads to the CPU request; batching, queue and the adapter
# memory budget to the CPU and memory limits). Everything else keeps the services' defaults.
DEPLOYMENT_SPECIFIC = {
    "PERENNIAL_REDIS_URL",
    "PERENNIAL_KAFKA_BOOTSTRAP",
    "PERENNIAL_DEVICE",
    "PERENNIAL_TORCH_THREADS",
    "PERENNIAL_MAX_BATCH_SIZE",
    "PERENNIAL_MAX_QUEUE_DELAY_MS",
    "PERENNIAL_MAX_QUEUE_SIZE",
    "PERENNIAL_ADAPTER_MEMORY_BYTES",
}


def _declared(cls) -> set[str]:
    return {variable(name) for name in cls.model_fields}


def test_configuration_doc_is_generated_from_the_settings() -> None:
    assert (ROOT / "docs" / "CONFIGURATION.md").read_text() == configuration.render(), (
        "docs/CONFIGURATION.md is stale: run `make docs`"
    )


def test_every_variable_the_docs_and_the_chart_name_is_declared() -> None:
    declared = _declared(InferenceSettings) | _declared(TrainerSettings) | CLI_VARIABLES
    files = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), ROOT / "helm/perennial/README.md",
             ROOT / "helm/perennial/values.yaml", *(ROOT / "helm/perennial/templates").rglob("*.*")]  # fmt: skip
    named = {
        (match, path.relative_to(ROOT).as_posix())
        for path in files
        for match in re.findall(r"PERENNIAL_[A-Z0-9_]*[A-Z0-9](?![_(*A-Z0-9])", path.read_text())
    }
    undeclared = sorted((name, where) for name, where in named if name not in declared)
    assert undeclared == []


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
@pytest.mark.parametrize("component", sorted(SETTINGS))
def test_the_chart_environment_loads_into_the_service_settings(
    render, value_set, component
) -> None:
    environment = _env(render(VALUE_SETS[value_set]), component)
    cls = SETTINGS[component]
    extra_env = {e["name"] for e in VALUE_SETS[value_set].get(component, {}).get("extraEnv", [])}
    assert sorted(set(environment) - _declared(cls) - extra_env) == []
    # values from Secrets and the downward API are resolved by Kubernetes: stand-ins here
    plain = {k: v if isinstance(v, str) else "from-kubernetes" for k, v in environment.items()}
    fields = {
        name.removeprefix("PERENNIAL_").lower(): value
        for name, value in plain.items()
        if name not in extra_env
    }
    cls(**fields)  # validates: raises on any value the service would refuse at start


def test_the_chart_keeps_the_service_defaults(render) -> None:
    differ = []
    for component, cls in SETTINGS.items():
        environment = _env(render(VALUE_SETS["default"]), component)
        defaults = cls.model_construct()
        for name, value in environment.items():
            field = name.removeprefix("PERENNIAL_").lower()
            if name in DEPLOYMENT_SPECIFIC or not isinstance(value, str):
                continue
            parsed = cls.model_validate({**_required(cls), field: value})
            if getattr(parsed, field) != getattr(defaults, field):
                differ.append((component, name, value, getattr(defaults, field)))
    assert differ == [], "\n".join(map(str, differ))


def _required(cls) -> dict[str, str]:
    return {"redis_url": "redis://r:6379/0", "kafka_bootstrap": "k:9092"} if cls is TrainerSettings else {
        "redis_url": "redis://r:6379/0"}  # fmt: skip

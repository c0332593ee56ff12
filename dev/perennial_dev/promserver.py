"""A real Prometheus server as a child process (tests and local runs), and its HTTP API.

Uses the Debian package's `/usr/bin/prometheus` with a generated configuration:
the given scrape targets, our rule files, storage in a work directory, and the
listen address on the loopback. Nothing here is used by the services.
"""

from __future__ import annotations

import json
import shutil
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from perennial_dev.localstack import ManagedProcess, free_port

STARTUP_SECONDS = 60.0


@dataclass
class PrometheusServer:
    """A real Prometheus running as a child process, with its HTTP API."""

    process: ManagedProcess
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _get(self, path: str, **params: str) -> dict:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as response:
            body = json.loads(response.read())
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus {path} failed: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        """Instant query: the result vector (list of {metric, value})."""
        return self._get("/api/v1/query", query=expr)["result"]

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> list[dict]:
        """Range query: the result matrix (list of {metric, values})."""
        return self._get(
            "/api/v1/query_range",
            query=expr,
            start=f"{start:.3f}",
            end=f"{end:.3f}",
            step=f"{step:g}",
        )["result"]

    def alerts(self) -> list[dict]:
        """Active alerts (pending and firing), with labels, state and activeAt."""
        return self._get("/api/v1/alerts")["alerts"]

    def rules(self) -> list[dict]:
        """Loaded rule groups with each rule's health and last error."""
        return self._get("/api/v1/rules")["groups"]

    def targets_up(self) -> bool:
        active = self._get("/api/v1/targets")["activeTargets"]
        return bool(active) and all(t["health"] == "up" for t in active)

    def stop(self, timeout: float = 20) -> int:
        return self.process.stop(timeout)


def start_prometheus(
    workdir: Path,
    targets: Mapping[str, Sequence[str]],
    rule_files: Sequence[Path] = (),
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
) -> PrometheusServer:
    """Start Prometheus scraping `targets` ({job: ["host:port", ...]}); ready once /-/ready answers."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise FileNotFoundError(
            "prometheus not found: install the Debian package 'prometheus' (make setup)"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    config = {
        "global": {
            "scrape_interval": scrape_interval,
            "evaluation_interval": evaluation_interval,
            "scrape_timeout": scrape_interval,
        },
        "rule_files": [str(Path(path).resolve()) for path in rule_files],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": list(addresses)}]}
            for job, addresses in targets.items()
        ],
    }
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    process = ManagedProcess(
        [
            binary,
            f"--config.file={config_path}",
            f"--web.listen-address=127.0.0.1:{port}",
            f"--storage.tsdb.path={workdir / 'data'}",
            "--storage.tsdb.retention.time=1d",
        ],
        workdir / "prometheus.log",
        name="prometheus",
    )
    server = PrometheusServer(process, port)

    def ready() -> bool:
        with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as response:
            return response.status == 200

    try:
        process.wait_ready(ready, STARTUP_SECONDS, "prometheus /-/ready")
    except BaseException:
        process.stop()
        raise
    return server

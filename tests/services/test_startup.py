"""Both services as processes: `--help` lists the settings; a configuration mistake is one line
naming the variable and exit status 2, never a traceback; both start against a Redis that
requires a password (the same connector for both)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import redis
import tritonclient.grpc as triton

from perennial.store import SnapshotStore
from perennial_dev.launch import start_inference, start_trainer
from perennial_dev.localstack import start_redis

SERVICES = ("inference", "trainer")
STARTUP_SECONDS = 120


def run(service: str, environment: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PERENNIAL_")}
    return subprocess.run(
        [sys.executable, "-m", f"services.{service}", *args],
        env={**clean, "HF_HUB_OFFLINE": "1", **environment},
        capture_output=True,
        text=True,
        timeout=STARTUP_SECONDS,
    )


@pytest.mark.parametrize(
    ("service", "expected"),
    [("inference", "PERENNIAL_GRPC_PORT"), ("trainer", "PERENNIAL_KAFKA_BOOTSTRAP")],
)
def test_help_prints_the_settings_and_exits(service: str, expected: str) -> None:
    result = run(service, {}, "--help")
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout and "PERENNIAL_REDIS_PASSWORD" in result.stdout


@pytest.fixture
def taken_port():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield held.getsockname()[1]


REDIS = {"PERENNIAL_REDIS_URL": "redis://127.0.0.1:1/0"}
TRAINER = {**REDIS, "PERENNIAL_KAFKA_BOOTSTRAP": "127.0.0.1:1"}


@pytest.mark.parametrize(
    ("service", "environment", "message"),
    [
        ("inference", {}, "PERENNIAL_REDIS_URL is required but not set"),
        ("trainer", REDIS, "PERENNIAL_KAFKA_BOOTSTRAP is required but not set"),
        ("inference", {**REDIS, "PERENNIAL_GRPC_PORT": "eighty"}, "PERENNIAL_GRPC_PORT='eighty'"),
        ("inference", {"PERENNIAL_REDIS_URL": "localhost:6379"}, "not a Redis URL"),
        ("trainer", {**TRAINER, "PERENNIAL_LEARNER": "magic"}, "PERENNIAL_LEARNER='magic'"),
        (
            "trainer",
            {**TRAINER, "PERENNIAL_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"},
            "needs PERENNIAL_KAFKA_SASL_USERNAME and PERENNIAL_KAFKA_SASL_PASSWORD",
        ),
        (
            "inference",
            {**REDIS, "PERENNIAL_AUTH_TOKEN_FILE": "/nonexistent/token"},
            "PERENNIAL_AUTH_TOKEN_FILE='/nonexistent/token' cannot be read",
        ),
        ("trainer", {**TRAINER, "PERENNIAL_DEVICE": "tpu"}, "PERENNIAL_DEVICE='tpu'"),
        ("inference", REDIS, "Redis at redis://127.0.0.1:1/0 is not usable"),
        ("trainer", TRAINER, "Redis at redis://127.0.0.1:1/0 is not usable"),
    ],
)
def test_a_configuration_mistake_is_one_line_naming_the_variable(service, environment, message):
    ports = {"PERENNIAL_METRICS_PORT": "0", "PERENNIAL_GRPC_PORT": "0", "PERENNIAL_REST_PORT": "0"}
    result = run(service, {**ports, **environment})
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("service", "variable"),
    [
        ("inference", "PERENNIAL_METRICS_PORT"),
        ("inference", "PERENNIAL_GRPC_PORT"),
        ("inference", "PERENNIAL_REST_PORT"),
        ("trainer", "PERENNIAL_METRICS_PORT"),
        ("trainer", "PERENNIAL_CONTROL_PORT"),
    ],
)
def test_a_taken_port_names_its_variable(service, variable, taken_port) -> None:
    own = {
        "inference": ("PERENNIAL_GRPC_PORT", "PERENNIAL_REST_PORT"),
        "trainer": ("PERENNIAL_CONTROL_PORT",),
    }[service]
    ports = {"PERENNIAL_METRICS_PORT": "0", **dict.fromkeys(own, "0"), variable: str(taken_port)}
    result = run(service, {**TRAINER, **ports})
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"{variable}={taken_port}: the port is already in use" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.e2e
def test_both_services_start_against_a_redis_with_a_password(kafka_broker, tmp_path) -> None:
    server = start_redis(tmp_path / "redis", password="s3cret-pass")
    try:
        secured = {"PERENNIAL_REDIS_PASSWORD": "s3cret-pass"}
        inference = start_inference(tmp_path, redis_url=server.url, **secured)
        trainer = start_trainer(
            tmp_path, bootstrap=kafka_broker.bootstrap, redis_url=server.url, **secured
        )
        try:
            store = SnapshotStore(redis.Redis.from_url(server.url, password="s3cret-pass"))
            assert store.redis.ping()
            with triton.InferenceServerClient(inference.grpc_address) as client:
                assert client.is_server_ready()
                assert not client.is_model_ready("nothing-yet")  # a Redis read, authenticated
            assert trainer.process.alive
        finally:
            inference.stop()
            trainer.stop()
        wrong = run(
            "inference", {"PERENNIAL_REDIS_URL": server.url, "PERENNIAL_REDIS_PASSWORD": "x"}
        )
        assert wrong.returncode == 2
        assert "refused the credentials" in wrong.stderr and "Traceback" not in wrong.stderr
    finally:
        server.stop()


def test_an_unreachable_kafka_is_one_line(redis_server) -> None:
    environment = {
        "PERENNIAL_REDIS_URL": redis_server.url,
        "PERENNIAL_KAFKA_BOOTSTRAP": "127.0.0.1:1",
    }
    result = run(
        "trainer", {"PERENNIAL_METRICS_PORT": "0", "PERENNIAL_CONTROL_PORT": "0", **environment}
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Kafka at 127.0.0.1:1 is not usable" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_inference_serves_rest_beside_grpc_and_stops_both(redis_server, tmp_path) -> None:
    import tritonclient.http as triton_http

    inference = start_inference(tmp_path, redis_url=redis_server.url)
    try:
        client = triton_http.InferenceServerClient(inference.rest_address, network_timeout=10)
        assert client.is_server_live() and client.is_server_ready()
        assert not client.is_model_ready("nothing-yet")  # a Redis read through the data plane
        index = client.get_model_repository_index()  # the Redis is shared: other tests' adapters
        assert all(model["state"] == "READY" and model["version"] for model in index)
        client.close()
    finally:
        assert inference.stop() == 0  # SIGTERM: both transports drain, the process exits cleanly

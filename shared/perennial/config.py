"""Typed settings from `PERENNIAL_*` environment variables, on pydantic-settings.

Each service has ONE settings class (`services.inference.settings.InferenceSettings`,
`services.trainer.settings.TrainerSettings`) built from the mixins here, so a variable
both services read (Redis, TLS, logging) is declared once, with its type, default and
a one-line description. `load` turns a validation failure into a `ConfigError` whose
message names the variable and says what is wrong; `settings_table` renders the
declarations for `--help` and for docs/CONFIGURATION.md (a test keeps that file, the
README and the chart in step with the classes).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated, Literal, Self, get_args, get_origin

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from perennial.codec import InputSpec

PREFIX = "PERENNIAL_"


class ConfigError(ValueError):
    """A missing or malformed setting; the message names the variable."""


def variable(field: str) -> str:
    """The environment variable of a settings field."""
    return PREFIX + field.upper()


class Settings(BaseSettings):
    """Base of every settings class: `PERENNIAL_` prefix, immutable, no unknown fields."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, frozen=True, extra="forbid")

    @classmethod
    def load(cls, **overrides: object) -> Self:
        """Read the environment (plus `overrides`); raise `ConfigError` naming each bad variable."""
        try:
            return cls(**overrides)
        except ValidationError as error:
            raise ConfigError(_explain(error)) from None


def _explain(error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        name = str(item["loc"][0]) if item["loc"] else ""
        if item["type"] == "missing":
            problems.append(f"{variable(name)} is required but not set")
        elif name:
            shown = "***" if "password" in name or "token" in name else item.get("input")
            problems.append(f"{variable(name)}={shown!r}: {item['msg']}")
        else:
            problems.append(item["msg"].removeprefix("Value error, "))
    return "; ".join(problems)


LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class ProcessSettings(Settings):
    """What every service process reads: logging, threads, metrics endpoint, the backbone."""

    log_level: LogLevel = Field("INFO", description="log level of the JSON logs on stdout")
    torch_threads: int = Field(
        0, ge=0, description="torch intra-op threads (0: torch's default, one per core)"
    )
    metrics_host: str = Field("0.0.0.0", description="listen address of Prometheus /metrics")
    metrics_port: int = Field(
        9100, ge=0, le=65535, description="port of Prometheus /metrics (0: any free port)"
    )
    backbone: Literal["text", "image"] = Field(
        "text",
        description="the frozen backbone: text (a transformers encoder) or image (EfficientNet-Lite0, "
        "FP32 images of PERENNIAL_IMAGE_SHAPE); trainer and inference must agree",
    )
    backbone_path: Path | None = Field(
        None, description="a transformers encoder directory (unset: the bundled all-MiniLM-L6-v2)"
    )
    image_shape: Annotated[tuple[int, int, int], NoDecode] = Field(
        (3, 64, 64),
        description="C,H,W of every image (image backbone): examples and requests of another "
        "shape are refused; C is 1 (grey) or 3 (RGB)",
    )
    image_size: int = Field(
        64,
        ge=32,
        le=512,
        description="side the image backbone resizes images to; trainer and inference must agree",
    )
    runtime: Literal["torch", "onnx", "onnx-int8"] = Field(
        "onnx",
        description="runtime of the frozen backbone; trainer and inference must use the same",
    )
    onnx_cache_dir: Path | None = Field(
        None,
        description="where exported ONNX graphs are cached (unset: $XDG_CACHE_HOME/perennial/onnx)",
    )
    pod_name: str = Field("", description="this Pod's name (downward API); names the replica")
    pod_namespace: str = Field("", description="this Pod's namespace (downward API)")
    pod_uid: str = Field("", description="this Pod's uid (downward API)")
    drift_queue_size: int = Field(
        1024, ge=2, description="batches waiting for the drift monitor's thread; more are dropped"
    )
    tracing_endpoint: str = Field(
        "",
        description="OTLP/gRPC collector for OpenTelemetry traces, e.g. http://otel-collector:4317 (empty: tracing off)",
    )
    tracing_sample_ratio: float = Field(
        1.0,
        ge=0,
        le=1,
        description="share of new traces sampled (a sampled parent, e.g. a producer's, is always followed)",
    )

    def input_spec(self) -> InputSpec:
        """What the deployment's backbone takes: texts, or images of `image_shape`."""
        if self.backbone == "image":
            return InputSpec("image", self.image_shape)
        return InputSpec("text")

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("image_shape", mode="before")
    @classmethod
    def _shape(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                value = tuple(int(part) for part in re.split(r"[,x×]", value.strip()))
            except ValueError:
                raise ValueError("write C,H,W, e.g. 1,28,28") from None
        if isinstance(value, (tuple, list)) and len(value) == 3:
            channels, height, width = value
            if channels not in (1, 3) or not (1 <= height <= 1024 and 1 <= width <= 1024):
                raise ValueError("C must be 1 or 3, H and W between 1 and 1024")
        return value


class RedisSettings(Settings):
    """The Redis connection both services use (`perennial.redis_connect.connect`)."""

    redis_url: str = Field(
        "",
        description="redis://host:6379/0 or rediss:// (TLS), a Cluster seed node with "
        "PERENNIAL_REDIS_CLUSTER; required unless PERENNIAL_REDIS_SENTINELS is set",
    )
    redis_password: SecretStr | None = Field(
        None, description="Redis password (from a Secret), if not in the URL"
    )
    redis_sentinels: str = Field(
        "", description="host:port,host:port of Redis Sentinels: find the master through them"
    )
    redis_sentinel_master: str = Field("mymaster", description="the master's name in Sentinel")
    redis_cluster: bool = Field(False, description="Redis Cluster (an adapter's keys share a slot)")
    redis_tls_ca_file: Path | None = Field(
        None, description="CA of the Redis server certificate (with rediss://)"
    )
    redis_timeout_seconds: float = Field(
        5.0, gt=0, description="connect and socket timeout of Redis calls"
    )

    @model_validator(mode="after")
    def _redis_target(self) -> Self:
        if self.redis_sentinels:
            try:
                self.sentinel_nodes()
            except ValueError:
                raise ValueError(
                    f"{variable('redis_sentinels')}={self.redis_sentinels!r}: use host:port,host:port"
                ) from None
        elif not self.redis_url:
            raise ValueError(
                f"{variable('redis_url')} is required but not set (or set {variable('redis_sentinels')})"
            )
        elif self.redis_url.split("://", 1)[0] not in ("redis", "rediss", "unix"):
            raise ValueError(
                f"{variable('redis_url')}={self.redis_url!r}: not a Redis URL; "
                "use redis://host:port/db, rediss:// for TLS, or unix:///path"
            )
        if self.redis_tls_ca_file is not None and not self.redis_url.startswith("rediss://"):
            raise ValueError(
                f"{variable('redis_tls_ca_file')} is set but {variable('redis_url')} is not rediss://"
            )
        return self

    def sentinel_nodes(self) -> list[tuple[str, int]]:
        """The Sentinels as (host, port) pairs."""
        nodes = []
        for item in self.redis_sentinels.split(","):
            host, port = item.strip().rsplit(":", 1)
            nodes.append((host, int(port)))
        return nodes


class KafkaSettings(Settings):
    """The Kafka transport both services use (`kafka_bootstrap` is each service's own)."""

    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka transport"
    )
    kafka_sasl_mechanism: str = Field(
        "SCRAM-SHA-512", description="SASL mechanism (SASL_* protocols)"
    )
    kafka_sasl_username: str = Field("", description="SASL user name (SASL_* protocols)")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password (from a Secret)")
    kafka_ssl_cafile: Path | None = Field(None, description="CA of the brokers (SSL, SASL_SSL)")

    @model_validator(mode="after")
    def _kafka_credentials(self) -> Self:
        if self.kafka_security_protocol.startswith("SASL") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                f"{variable('kafka_security_protocol')}={self.kafka_security_protocol} needs "
                f"{variable('kafka_sasl_username')} and {variable('kafka_sasl_password')}"
            )
        return self

    def kafka_options(self) -> dict[str, object]:
        """kafka-python client options for the transport (empty: PLAINTEXT)."""
        options: dict[str, object] = {}
        if self.kafka_security_protocol != "PLAINTEXT":
            options["security_protocol"] = self.kafka_security_protocol
        if self.kafka_security_protocol.startswith("SASL"):
            options["sasl_mechanism"] = self.kafka_sasl_mechanism
            options["sasl_plain_username"] = self.kafka_sasl_username
            options["sasl_plain_password"] = self.kafka_sasl_password.get_secret_value()
        if self.kafka_ssl_cafile is not None:
            options["ssl_cafile"] = str(self.kafka_ssl_cafile)
        return options


class GrpcSecuritySettings(Settings):
    """TLS and bearer-token settings of a gRPC server (`perennial.grpc_security`)."""

    tls_cert_file: Path | None = Field(None, description="PEM certificate chain: serve TLS")
    tls_key_file: Path | None = Field(None, description="PEM private key of the certificate")
    tls_client_ca_file: Path | None = Field(
        None, description="PEM CA: require client certificates signed by it (mutual TLS)"
    )
    auth_token: SecretStr | None = Field(
        None, description="bearer token every call but health and reflection must carry"
    )
    auth_token_file: Path | None = Field(
        None, description="a file holding the bearer token (a mounted Secret), read at start"
    )


def _type_name(annotation: object) -> str:
    if get_origin(annotation) is tuple:
        return ",".join(_type_name(a) for a in get_args(annotation))
    args = [a for a in get_args(annotation) if a is not type(None)]
    if getattr(annotation, "__origin__", None) is Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if args:
        return " or ".join(_type_name(a) for a in args)
    return {SecretStr: "secret", Path: "path"}.get(annotation, getattr(annotation, "__name__", "?"))


def _default(value: object) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def settings_table(cls: type[Settings]) -> str:
    """A markdown table of every variable of `cls`: name, type, default, description."""
    rows = ["| variable | type | default | meaning |", "| --- | --- | --- | --- |"]
    for name, field in cls.model_fields.items():
        default = "required" if field.is_required() else _default(field.default)
        rows.append(
            f"| `{variable(name)}` | {_type_name(field.annotation)} | {default} | {field.description} |"
        )
    return "\n".join(rows)


def help_requested(cls: type[Settings], service: str, argv: list[str] | None = None) -> bool:
    """`--help` / `-h`: print the service's settings and return True (the caller exits)."""
    argv = sys.argv[1:] if argv is None else argv
    if not ({"--help", "-h"} & set(argv)):
        return False
    print(f"{service}: configured only by environment variables.\n\n{settings_table(cls)}")
    return True

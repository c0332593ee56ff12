"""Trainer configuration from `PERENNIAL_*` environment variables."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from perennial.config import ConfigError, env
from services.trainer.guardrail import GuardrailConfig

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")


@dataclass(frozen=True)
class TrainerSettings:
    """The trainer's configuration."""

    kafka_bootstrap: str
    redis_url: str
    topic: str = "perennial.examples"
    dead_letter_topic: str = "perennial.examples.dlq"
    events_topic: str = "perennial.events"
    group_id: str = "perennial-trainer"
    batch_size: int = 16
    batch_wait_seconds: float = 2.0
    snapshot_every_examples: int = 64
    snapshot_every_seconds: float = 5.0
    retain_versions: int = 20
    max_pending: int = 2048  # records buffered before partitions are paused (back-pressure)
    max_record_bytes: int = 1024 * 1024  # larger records are dead-lettered (RecordTooLarge)
    prequential_budget: float = (
        0.05  # share of learning time spent predicting before learning (drift)
    )
    seed: int = 0
    control_port: int = 50051
    source: str = field(default_factory=socket.gethostname)  # names this replica in events
    guardrail: GuardrailConfig = field(default_factory=GuardrailConfig)
    kafka_security: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        counts = {
            "batch_size": self.batch_size,
            "snapshot_every_examples": self.snapshot_every_examples,
            "retain_versions": self.retain_versions,
        }
        bad = {name: value for name, value in counts.items() if value < 1}
        if bad:
            raise ConfigError(f"{bad}: each must be >= 1")
        if self.prequential_budget < 0:
            raise ConfigError(
                f"prequential_budget={self.prequential_budget}: must be >= 0 (0 turns it off)"
            )

    @classmethod
    def from_env(cls) -> TrainerSettings:
        d = cls.__dataclass_fields__
        return cls(
            kafka_bootstrap=env("PERENNIAL_KAFKA_BOOTSTRAP"),
            redis_url=env("PERENNIAL_REDIS_URL"),
            topic=env("PERENNIAL_TOPIC", d["topic"].default),
            dead_letter_topic=env("PERENNIAL_DEAD_LETTER_TOPIC", d["dead_letter_topic"].default),
            events_topic=env("PERENNIAL_EVENTS_TOPIC", d["events_topic"].default),
            group_id=env("PERENNIAL_GROUP_ID", d["group_id"].default),
            batch_size=env("PERENNIAL_BATCH_SIZE", d["batch_size"].default, int),
            batch_wait_seconds=env(
                "PERENNIAL_BATCH_WAIT_SECONDS", d["batch_wait_seconds"].default, float
            ),
            snapshot_every_examples=env(
                "PERENNIAL_SNAPSHOT_EVERY_EXAMPLES", d["snapshot_every_examples"].default, int
            ),
            snapshot_every_seconds=env(
                "PERENNIAL_SNAPSHOT_EVERY_SECONDS", d["snapshot_every_seconds"].default, float
            ),
            retain_versions=env("PERENNIAL_RETAIN_VERSIONS", d["retain_versions"].default, int),
            max_pending=env("PERENNIAL_MAX_PENDING", d["max_pending"].default, int),
            max_record_bytes=env("PERENNIAL_MAX_RECORD_BYTES", d["max_record_bytes"].default, int),
            prequential_budget=env(
                "PERENNIAL_PREQUENTIAL_BUDGET", d["prequential_budget"].default, float
            ),
            seed=env("PERENNIAL_SEED", d["seed"].default, int),
            control_port=env("PERENNIAL_CONTROL_PORT", d["control_port"].default, int),
            source=env("PERENNIAL_POD_NAME", socket.gethostname()),
            guardrail=GuardrailConfig(
                every=env("PERENNIAL_HOLDOUT_EVERY", GuardrailConfig.every, int),
                per_class=env("PERENNIAL_HOLDOUT_PER_CLASS", GuardrailConfig.per_class, int),
                margin=env("PERENNIAL_GUARDRAIL_MARGIN", GuardrailConfig.margin, float),
                min_holdout=env(
                    "PERENNIAL_GUARDRAIL_MIN_HOLDOUT", GuardrailConfig.min_holdout, int
                ),
            ),
            kafka_security=kafka_security_from_env(),
        )


def kafka_security_from_env() -> dict[str, str]:
    """kafka-python client options for TLS and SASL (empty: PLAINTEXT)."""
    protocol = env("PERENNIAL_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT").upper()
    if protocol not in SECURITY_PROTOCOLS:
        raise ConfigError(
            f"PERENNIAL_KAFKA_SECURITY_PROTOCOL={protocol!r}: use one of {SECURITY_PROTOCOLS}"
        )
    options: dict[str, str] = {}
    if protocol != "PLAINTEXT":
        options["security_protocol"] = protocol
    if protocol.startswith("SASL"):
        options["sasl_mechanism"] = env("PERENNIAL_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
        options["sasl_plain_username"] = env("PERENNIAL_KAFKA_SASL_USERNAME")
        options["sasl_plain_password"] = env("PERENNIAL_KAFKA_SASL_PASSWORD")
    cafile = env("PERENNIAL_KAFKA_SSL_CAFILE", None)
    if cafile:
        options["ssl_cafile"] = cafile
    return options

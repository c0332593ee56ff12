"""`python -m services.trainer`: run the trainer until SIGTERM. Configuration: environment
variables `PERENNIAL_*` (see docs/ARCHITECTURE.md)."""

from __future__ import annotations

import redis

from perennial import runtime
from perennial.backbone import TextBackbone
from perennial.config import env
from perennial.metrics import TrainerMetrics
from perennial.store import SnapshotStore
from services.trainer.worker import Trainer, TrainerSettings


def main() -> None:
    settings = TrainerSettings.from_env()
    registry, stop = runtime.start("trainer")
    store = SnapshotStore(redis.Redis.from_url(settings.redis_url))
    store.redis.ping()  # fail at start, with the URL's error, if Redis is unreachable
    backbone = TextBackbone.load(env("PERENNIAL_BACKBONE_PATH", None))
    Trainer(settings, backbone, store, TrainerMetrics(registry)).run(stop)


if __name__ == "__main__":
    main()

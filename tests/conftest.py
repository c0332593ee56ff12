"""Shared fixtures: the real local infrastructure (Redis, the Tansu Kafka broker) as child processes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

from perennial.backbone import TextBackbone, default_model_path
from perennial_dev.localstack import KafkaBroker, RedisServer, start_kafka, start_redis


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A ``redis-server`` on a free port for the whole session, with no persistence."""
    server = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaBroker]:
    """A Tansu broker (memory storage) on a free port for the whole session.

    The broker is shared, so tests should use their own topic and group names.
    """
    broker = start_kafka(tmp_path_factory.mktemp("kafka"))
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client on the session's Redis server, emptied (``FLUSHALL``) before the test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def tiny_backbone() -> TextBackbone:
    """A 2-block random BERT with MiniLM's tokenizer: fast, for mechanics (not quality)."""
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    tokenizer = AutoTokenizer.from_pretrained(default_model_path(), local_files_only=True)
    return TextBackbone(BertModel(config), tokenizer, max_length=16)


@pytest.fixture(scope="session")
def tiny_backbone_dir(tmp_path_factory: pytest.TempPathFactory):
    """The tiny backbone saved as a transformers directory, for services run as processes
    (`PERENNIAL_BACKBONE_PATH`) where the point is plumbing, not quality."""
    path = tmp_path_factory.mktemp("tiny-backbone")
    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    BertModel(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(default_model_path(), local_files_only=True).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def minilm() -> TextBackbone:
    """The real backbone, loaded once."""
    return TextBackbone.load()

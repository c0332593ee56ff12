"""A Redis client from the environment: a single server, Sentinel, or Cluster.

    PERENNIAL_REDIS_URL              redis://host:6379/0 (single server or a Cluster seed node)
    PERENNIAL_REDIS_SENTINELS        "host:port,host:port": use Sentinel to find the master
    PERENNIAL_REDIS_SENTINEL_MASTER  the master's name (default "mymaster")
    PERENNIAL_REDIS_CLUSTER          "true": Redis Cluster (every adapter's keys share a hash slot)
    PERENNIAL_REDIS_PASSWORD         password (from a Secret), if not in the URL

Timeouts are short so that an unreachable Redis surfaces as an error the
services retry, instead of a call that hangs.
"""

from __future__ import annotations

import redis
from redis.cluster import RedisCluster
from redis.sentinel import Sentinel

from perennial.config import ConfigError, env

SOCKET_TIMEOUT_SECONDS = 5.0


def _flag(value: str) -> bool:
    if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise ValueError(f"expected true or false, got {value!r}")
    return value.lower() in ("true", "1", "yes")


def connect(url: str | None = None) -> redis.Redis:
    options = {
        "socket_timeout": SOCKET_TIMEOUT_SECONDS,
        "socket_connect_timeout": SOCKET_TIMEOUT_SECONDS,
        "health_check_interval": 30,
    }
    password = env("PERENNIAL_REDIS_PASSWORD", None)
    if password:
        options["password"] = password
    sentinels = env("PERENNIAL_REDIS_SENTINELS", "")
    if sentinels:
        try:
            nodes = [
                (host, int(port))
                for host, port in (item.rsplit(":", 1) for item in sentinels.split(","))
            ]
        except ValueError as error:
            raise ConfigError(
                f"PERENNIAL_REDIS_SENTINELS={sentinels!r}: use host:port,host:port"
            ) from error
        sentinel = Sentinel(
            nodes, sentinel_kwargs={"socket_timeout": SOCKET_TIMEOUT_SECONDS}, **options
        )
        return sentinel.master_for(env("PERENNIAL_REDIS_SENTINEL_MASTER", "mymaster"), **options)
    url = url or env("PERENNIAL_REDIS_URL")
    if env("PERENNIAL_REDIS_CLUSTER", False, _flag):
        return RedisCluster.from_url(url, **options)
    return redis.Redis.from_url(url, **options)

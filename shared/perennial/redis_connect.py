"""The one Redis connector of both services: a single server, Sentinel or Cluster.

Everything comes from `perennial.config.RedisSettings` (password, TLS, Sentinel,
Cluster, timeouts). Timeouts are short so that an unreachable Redis surfaces as an
error the services retry, instead of a call that hangs.
"""

from __future__ import annotations

import redis
from redis.cluster import RedisCluster
from redis.sentinel import Sentinel

from perennial.config import RedisSettings


def connect(settings: RedisSettings) -> redis.Redis:
    """A client for the configured Redis; nothing is sent until the first command."""
    options: dict[str, object] = {
        "socket_timeout": settings.redis_timeout_seconds,
        "socket_connect_timeout": settings.redis_timeout_seconds,
        "health_check_interval": 30,
    }
    if settings.redis_password is not None:
        options["password"] = settings.redis_password.get_secret_value()
    if settings.redis_tls_ca_file is not None:
        options["ssl_ca_certs"] = str(settings.redis_tls_ca_file)
    if settings.redis_sentinels:
        sentinel = Sentinel(
            settings.sentinel_nodes(),
            sentinel_kwargs={"socket_timeout": settings.redis_timeout_seconds},
            **options,
        )
        return sentinel.master_for(settings.redis_sentinel_master, **options)
    if settings.redis_cluster:
        return RedisCluster.from_url(settings.redis_url, **options)
    return redis.Redis.from_url(settings.redis_url, **options)

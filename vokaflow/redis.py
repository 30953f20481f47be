"""The one place that makes Redis connections (created on first use, one pool per process)."""

from __future__ import annotations

import functools

import redis


@functools.cache
def get_redis(url: str | None = None) -> redis.Redis:
    """A client for REDIS_URL (or `url`) with short time-outs, so callers never hang."""
    from django.conf import settings

    timeout = settings.VOKAFLOW_BROKER_TIMEOUT
    return redis.Redis.from_url(url or settings.REDIS_URL, socket_connect_timeout=timeout,
                                socket_timeout=max(timeout, 5), health_check_interval=30)


def redacted_url(url: str) -> str:
    """The URL without its password, fit for an error message or a status page."""
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.split('@', 1)[1]}"

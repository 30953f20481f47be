"""The process's Redis client for REDIS_URL: the one place that makes it (created on first use,
one connection pool per process). URL forms and time-outs: vokaflow.redis_connect."""

from __future__ import annotations

import functools

import redis
from django.conf import settings

from vokaflow.redis_connect import client_from_url


@functools.cache
def get_redis(url: str | None = None) -> redis.Redis:
    """The process's client for REDIS_URL (or `url`)."""
    return client_from_url(url or settings.REDIS_URL, sentinel_master=settings.VOKAFLOW_REDIS_SENTINEL_MASTER,
                           timeout=settings.VOKAFLOW_BROKER_TIMEOUT)

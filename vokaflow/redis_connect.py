"""Redis clients from a URL, with short time-outs; no Django, so vokaflow.locks and scripts use it too.

REDIS_URL forms: ``redis://[:password@]host:6379/0``, ``rediss://`` (TLS), and Redis Sentinel
for high availability:
``sentinel://host1:26379;sentinel://host2:26379/0`` with VOKAFLOW_REDIS_SENTINEL_MASTER naming
the monitored primary (clients follow a failover to the new primary).
"""

from __future__ import annotations

from urllib.parse import urlparse

import redis
from redis.sentinel import Sentinel


def is_sentinel(url: str) -> bool:
    return url.startswith("sentinel://")


def client_from_url(url: str, *, sentinel_master: str | None = None, timeout: float = 2.0) -> redis.Redis:
    """A client with short time-outs, so callers never hang (no Django needed)."""
    options = {"socket_connect_timeout": timeout, "socket_timeout": max(timeout, 5), "health_check_interval": 30}
    if not is_sentinel(url):
        return redis.Redis.from_url(url, **options)
    if not sentinel_master:
        raise ValueError("a sentinel:// REDIS_URL needs VOKAFLOW_REDIS_SENTINEL_MASTER (the primary's name)")
    nodes, password, db = [], None, 0
    for part in url.split(";"):
        parsed = urlparse(part.strip())
        nodes.append((parsed.hostname or "127.0.0.1", parsed.port or 26379))
        password = password or parsed.password
        if parsed.path.strip("/"):
            db = int(parsed.path.strip("/"))
    sentinel = Sentinel(nodes, socket_timeout=timeout)
    return sentinel.master_for(sentinel_master, db=db, password=password, **options)


def as_text(value: object) -> str:
    """A reply of a client without decode_responses (bytes) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def redacted_url(url: str) -> str:
    """The URL without its passwords, fit for an error message or a status page."""
    return ";".join(_redact_one(part) for part in url.split(";"))


def _redact_one(url: str) -> str:
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.split('@', 1)[1]}"

"""Redis clients from a URL, with short time-outs; no Django, so vokaflow.locks and scripts use it too.

REDIS_URL forms: ``redis://[:password@]host:6379/0``, ``rediss://`` (TLS), and Redis Sentinel
for high availability:
``sentinel://host1:26379;sentinel://host2:26379/0`` with VOKAFLOW_REDIS_SENTINEL_MASTER naming
the monitored primary (clients follow a failover to the new primary), and Redis Cluster:
``rediscluster://[:password@]host1:7000,host2:7001,host3:7002/`` (any reachable subset of the
nodes; ``redisclusters://`` for TLS; no database number, a cluster has only 0). A cluster client
is redis-py's RedisCluster: it learns the slots from the nodes, follows MOVED and ASK, and finds
a replica promoted after a failover. Redis 7 or later.
"""

from __future__ import annotations

import functools
from urllib.parse import unquote, urlparse

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException
from redis.sentinel import Sentinel

from vokaflow.core.errors import Unavailable

CLUSTER_SCHEMES = ("rediscluster://", "redisclusters://")


class BadRedisUrl(Unavailable, ValueError):
    """REDIS_URL cannot be used as it is (its text names the URL, password redacted, and why)."""


def is_sentinel(url: str) -> bool:
    return url.startswith("sentinel://")


def is_cluster(url: str) -> bool:
    return url.startswith(CLUSTER_SCHEMES)


def is_cluster_client(client: object) -> bool:
    """Whether `client` talks to a Redis Cluster (its keys then follow the cluster layout)."""
    return isinstance(client, RedisCluster)


def refresh_slots(client) -> None:
    """After a failed MULTI or pipeline on a cluster, read the slot map again: redis-py does it
    after such a failure only every fifth failure of the same pipeline object, and each push
    makes a new one, so without this every push to a failed-over primary's slots would keep
    going to the dead node. A failure here is left to the next push to retry."""
    if not is_cluster_client(client):
        return
    try:
        client.nodes_manager.initialize()
    except (redis.RedisError, RedisClusterException, OSError):
        pass


def mget(client, names: list) -> list:
    """MGET of keys that may lie on several slots of a cluster (redis-py splits it by slot there)."""
    return client.mget_nonatomic(names) if is_cluster_client(client) else client.mget(names)


def cluster_nodes(url: str) -> tuple[list[tuple[str, int]], str | None, str | None, bool]:
    """(host, port) of each node a rediscluster:// URL names, its user name, password and TLS."""
    scheme, rest = url.split("://", 1)
    credentials, _, hosts = rest.rpartition("@")
    hosts = hosts.split("/", 1)[0]
    username, _, password = credentials.partition(":") if credentials else ("", "", "")
    nodes = []
    for part in filter(None, (h.strip() for h in hosts.split(","))):
        parsed = urlparse(f"//{part}")
        try:
            port = parsed.port or 6379
        except ValueError:
            raise BadRedisUrl(f"{redacted_url(url)}: {part!r} is not host:port") from None
        nodes.append((parsed.hostname or "127.0.0.1", port))
    if not nodes:
        raise BadRedisUrl(f"{redacted_url(url)} names no node: use rediscluster://host1:7000,host2:7001/")
    return nodes, unquote(username) or None, unquote(password) or None, scheme == "redisclusters"


@functools.cache
def cluster_client(url: str, *, timeout: float = 2.0) -> RedisCluster:
    """The process's RedisCluster for a rediscluster:// URL (one per URL: it learns the slots
    once, and its pools start afresh after a fork); BadRedisUrl (one line: the URL, password
    redacted, and the reason) when no node answers or the nodes are not a cluster."""
    nodes, username, password, tls = cluster_nodes(url)
    try:
        return RedisCluster(startup_nodes=[ClusterNode(host, port) for host, port in nodes], username=username,
                            password=password, ssl=tls, socket_connect_timeout=timeout,
                            socket_timeout=max(timeout, 5), health_check_interval=30)
    except (RedisClusterException, redis.RedisError, OSError) as exc:
        reason = str(exc).split("\n", 1)[0] or type(exc).__name__
        if "not enabled" in reason or "cluster support disabled" in reason.lower():
            reason = "it is not a Redis Cluster (cluster mode is off on that node): use redis:// for one Redis"
        raise BadRedisUrl(f"Redis Cluster {redacted_url(url)} cannot be used: {reason}") from exc


def client_from_url(url: str, *, sentinel_master: str | None = None, timeout: float = 2.0) -> redis.Redis:
    """A client with short time-outs, so callers never hang (no Django needed)."""
    options = {"socket_connect_timeout": timeout, "socket_timeout": max(timeout, 5), "health_check_interval": 30}
    if is_cluster(url):
        return cluster_client(url, timeout=timeout)  # type: ignore[return-value]  # the same commands
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


def kombu_url(url: str) -> str:
    """The broker URL kombu is given for a rediscluster:// REDIS_URL: its first node as redis://
    (kombu parses one host; the cluster transport is handed the whole URL as an option)."""
    nodes, username, password, tls = cluster_nodes(url)
    credentials = f"{username or ''}:{password}@" if password else ""
    return f"{'rediss' if tls else 'redis'}://{credentials}{nodes[0][0]}:{nodes[0][1]}/0"


def _redact_one(url: str) -> str:
    if "@" not in url:
        return url
    scheme, rest = url.split("://", 1)
    return f"{scheme}://***@{rest.split('@', 1)[1]}"

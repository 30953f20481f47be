"""Flower's Broker tab on a Redis Cluster.

Flower reads queue lengths with one Redis client at the host of the broker URL, which on a
cluster names one node: the lengths of queues on the other primaries would fail with MOVED.
kombu spells the cluster transport's URI ``rediscluster://`` (vokaflow.celery), and `teach()`
makes Flower's Broker answer that scheme with a client of the whole cluster, from the
``cluster_url`` transport option (the rediscluster:// REDIS_URL). Relies on Flower's
`flower.utils.broker.Broker` dispatching on the scheme in `__new__` and on `RedisBase.queues`
(checked in tests/test_contracts.py).
"""

from __future__ import annotations

from urllib.parse import urlparse

from vokaflow.redis_connect import cluster_nodes


def teach() -> None:
    """Make Flower's Broker understand rediscluster:// (idempotent)."""
    from flower.utils import broker as flower_broker
    from redis.asyncio.cluster import ClusterNode, RedisCluster

    if getattr(flower_broker.Broker, "vokaflow_cluster", False):
        return

    class ClusterBroker(flower_broker.RedisBase):
        def __init__(self, broker_url, *args, **kwargs):
            super().__init__(broker_url, *args, **kwargs)
            self.priority_steps = [0]  # one list per queue, named as the queue (vokaflow.celery)
            nodes, username, password, tls = cluster_nodes(kwargs.get("broker_options", {})["cluster_url"])
            self.redis = RedisCluster(startup_nodes=[ClusterNode(host, port) for host, port in nodes],
                                      username=username, password=password, ssl=tls,
                                      socket_connect_timeout=self.socket_connect_timeout,
                                      socket_timeout=self.socket_timeout)

    original = flower_broker.Broker.__new__

    def dispatch(cls, broker_url, *args, **kwargs):
        if urlparse(broker_url).scheme == "rediscluster":
            return ClusterBroker(broker_url, *args, **kwargs)
        return original(cls, broker_url, *args, **kwargs)

    flower_broker.Broker.__new__ = dispatch
    flower_broker.Broker.vokaflow_cluster = True

"""The same no-op workload on Dramatiq, the fastest Python peer.

    dramatiq bench.dramatiq_app -p 2 -t 8
"""

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

broker = RedisBroker(url=os.environ["BENCH_REDIS_URL"], namespace="bench-dramatiq")
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="noop")
def noop():
    return None

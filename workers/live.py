"""The live workers: heartbeats (written by workers.heartbeat) that have not expired.

Read by the fleet views (workers.status), by pausing (workers.queues) and by health; it imports
neither of them, so they need not import each other."""

from __future__ import annotations

import json
import time

from django.conf import settings

from vokaflow.core import keys
from vokaflow.redis import get_redis
from vokaflow.redis_connect import as_text, mget


def live_workers() -> list[dict]:
    """Heartbeats that have not expired, newest first."""
    r = get_redis()
    names = [as_text(n) for n in r.zrangebyscore(keys.WORKERS, time.time() - settings.VOKAFLOW_HEARTBEAT_TTL, "+inf")]
    if not names:
        return []
    beats = mget(r, [keys.WORKER.format(n) for n in names])
    return sorted((json.loads(b) for b in beats if b), key=lambda w: -w["last_seen"])

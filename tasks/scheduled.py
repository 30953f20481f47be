"""Tasks waiting for their countdown or ETA, read where they wait.

A worker takes a message whose `eta` is in the future off its queue at once and holds it,
unacknowledged, until it is due: the message sits in kombu's `unacked` hash (the name is kombu's
Redis transport default, `Channel.unacked_key`; tests/test_contracts.py checks it) as
`[message, exchange, routing key]`. Messages still queued (no worker of their type running)
carry their `eta` too; the queues page counts them.
"""

from __future__ import annotations

import heapq
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from vokaflow.core import keys
from vokaflow.redis import get_redis

SCAN_COUNT = 1000
# Most held messages are running tasks without an ETA: their `"eta": null` is skipped without
# decoding the message, and only the `limit` soonest are decoded whole (a full json.loads of
# every held message cost 3× more with 1,000 held, bench/console.py).
_ETA = re.compile(rb'"eta": "([^"]+)"')


@dataclass(frozen=True)
class ScheduledTask:
    task_id: str
    name: str
    eta: datetime
    queue: str
    args: str
    retries: int


def scheduled_tasks(limit: int = 200) -> list[ScheduledTask]:
    """Held tasks whose ETA is still ahead, soonest first (at most `limit`)."""
    now = datetime.now(UTC)
    ahead = []
    for _, raw in get_redis().hscan_iter(keys.UNACKED, count=SCAN_COUNT):
        match = _ETA.search(raw)
        if match is None:
            continue
        try:
            eta = datetime.fromisoformat(match[1].decode())
        except ValueError:
            continue
        eta = eta if eta.tzinfo else eta.replace(tzinfo=UTC)
        if eta > now:  # a due one is running or about to
            ahead.append((eta, raw))
    soonest = heapq.nsmallest(limit, ahead, key=lambda pair: pair[0])
    return [task for eta, raw in soonest if (task := _scheduled(raw, eta)) is not None]


def _scheduled(raw: bytes, eta: datetime) -> ScheduledTask | None:
    try:
        message, _exchange, queue = json.loads(raw)
        headers = message["headers"]
    except (ValueError, KeyError, TypeError):
        return None  # not a Celery task message
    return ScheduledTask(task_id=headers.get("id", ""), name=headers.get("task", ""), eta=eta, queue=queue,
                         args=f"{headers.get('argsrepr') or ''} {headers.get('kwargsrepr') or ''}".strip()[:200],
                         retries=headers.get("retries") or 0)

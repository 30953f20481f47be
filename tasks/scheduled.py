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
from dataclasses import dataclass
from datetime import UTC, datetime

from vokaflow.redis import get_redis

UNACKED_KEY = "unacked"
SCAN_COUNT = 1000


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
    found = []
    for _, raw in get_redis().hscan_iter(UNACKED_KEY, count=SCAN_COUNT):
        task = _scheduled(raw, now)
        if task is not None:
            found.append(task)
    return heapq.nsmallest(limit, found, key=lambda t: t.eta)


def _scheduled(raw: bytes, now: datetime) -> ScheduledTask | None:
    try:
        message, _exchange, queue = json.loads(raw)
        headers = message["headers"]
        eta = datetime.fromisoformat(headers["eta"]) if headers.get("eta") else None
    except (ValueError, KeyError, TypeError):
        return None  # not a Celery task message
    if eta is None:
        return None
    eta = eta if eta.tzinfo else eta.replace(tzinfo=UTC)
    if eta <= now:
        return None  # due: running or about to
    return ScheduledTask(task_id=headers.get("id", ""), name=headers.get("task", ""), eta=eta, queue=queue,
                         args=f"{headers.get('argsrepr') or ''} {headers.get('kwargsrepr') or ''}".strip()[:200],
                         retries=headers.get("retries") or 0)

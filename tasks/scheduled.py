"""Delayed tasks wait in Redis, not in a worker: any countdown or eta runs once, when it is due.

A message that sat in a worker's memory (Celery's eta handling) longer than the visibility
timeout was handed to a second worker and ran twice. Now a task due more than SCHEDULE_AFTER
seconds from now is written, in the enqueue's MULTI, to the sorted set
`vokaflow:scheduled:<type>` (member: the message, score: when it is due). Every worker
(workers.scheduler) runs MOVE_DUE about once a second: one Lua script takes what is due within
LOOKAHEAD seconds, LPUSHes each message to the queue named in it and rings that type's bell, and
removes it from the set, so several workers polling at once never move a message twice. A
message moved early still carries its eta, which the worker waits for (at most LOOKAHEAD).

The console's Scheduled page lists both kinds of waiting task: those in these sets, and those a
worker already holds until their eta (due within SCHEDULE_AFTER, or a retry's back-off), which sit
in kombu's `unacked` hash as `[message, exchange, routing key]`.

A task revoked while it waits (tasks.state.revoke_task keeps its id revoked until its eta plus
the result TTL) is dropped when it comes due, and its place in its owner's quota is freed.
"""

from __future__ import annotations

import heapq
import json
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from vokaflow.core import keys
from vokaflow.core.queues import parse_queue
from vokaflow.core.workers import WorkerType
from vokaflow.redis import get_redis
from vokaflow.transport import BODY_BYTES, FIELD_LUA, outline_all, unacked_record

SCHEDULE_AFTER = 1.0  # seconds: a task due sooner goes straight to its queue
LOOKAHEAD = 0.5  # seconds: what is due this soon is moved now (the worker waits for the eta)
BATCH = 500  # messages moved per set per call: bounds how long one script holds Redis

# KEYS: the scheduled sets. ARGV: now, lookahead, batch, revoked set, bell key prefix, pending key
# prefix, body key prefix, the property that marks a message whose body waits in its own key.
# Queue, bell, pending and body keys are named inside the script (read from each message):
# VokaFlow runs on one Redis primary or Sentinel, not yet a cluster. The bell is transport.ring's
# XADD, written here. No message is decoded: its queue, id, owner and delivery tag are read by
# substring search, as the fetch script reads its fields (transport.FIELD_LUA).
MOVE_DUE = FIELD_LUA + """
local now = tonumber(ARGV[1])
local whole = 0  -- the window: search the whole message
local moved = 0
for _, set in ipairs(KEYS) do
  local due = redis.call('ZRANGEBYSCORE', set, '-inf', now + tonumber(ARGV[2]), 'LIMIT', 0, tonumber(ARGV[3]))
  local bells = {}
  for _, item in ipairs(due) do
    redis.call('ZREM', set, item)
    local queue = field(item, '"routing_key": "', whole)
    local id = field(item, '"id": "', whole)
    if queue and id then
      local revoked_until = redis.call('ZSCORE', ARGV[4], id)
      if revoked_until and tonumber(revoked_until) > now then
        -- the user's id: a JSON number (a string in older messages)
        local _, e = find(item, '"vokaflow_owner": ', 1, true)
        local owner = e and string.match(item, '^"?(%d+)', e + 1)
        if owner then redis.call('ZREM', ARGV[6] .. owner, id) end
        -- a large message's body, kept in its own key (transport.outline), goes with it
        local tag = field(item, '"delivery_tag": "', whole)
        if tag and find(item, '"' .. ARGV[8] .. '": ', 1, true) then redis.call('DEL', ARGV[7] .. tag) end
      else
        redis.call('LPUSH', queue, item)
        bells[ARGV[5] .. string.match(queue, '^[^.]+')] = true
        moved = moved + 1
      end
    end
  end
  for bell in pairs(bells) do redis.call('XADD', bell, 'MAXLEN', '=', 1, '*', 'm', 1) end
end
return moved
"""


def scheduled_keys() -> list[str]:
    return [keys.SCHEDULED.format(t.short) for t in WorkerType]


def is_delayed(eta: datetime | None, now: float) -> bool:
    return eta is not None and eta.timestamp() > now + SCHEDULE_AFTER


def schedule(pipe, delayed: dict[str, dict[str, float]]) -> None:
    """Add to `pipe` the ZADD of each worker type's delayed messages ({type short: {message: due}});
    a large message's body goes to its own key first (transport.outline)."""
    for short, messages in delayed.items():
        pipe.zadd(keys.SCHEDULED.format(short), dict(zip(outline_all(pipe, messages), messages.values(), strict=True)))


_scripts: dict[int, Any] = {}  # a registered Script per client


def move_due(r=None, now: float | None = None) -> int:
    """Move every task due within LOOKAHEAD to its queue; returns how many were moved."""
    r = r or get_redis()
    script = _scripts.get(id(r))
    if script is None:
        script = _scripts[id(r)] = r.register_script(MOVE_DUE)
    return script(keys=scheduled_keys(), args=[time.time() if now is None else now, LOOKAHEAD, BATCH, keys.REVOKED,
                                              keys.BELL.format(""), keys.PENDING.format(""),
                                              keys.BODY.format(""), BODY_BYTES])


def scheduled_count() -> int:
    r = get_redis()
    with r.pipeline(transaction=False) as pipe:
        for key in scheduled_keys():
            pipe.zcard(key)
        return sum(pipe.execute())



# Held records per HSCAN call: each is at most VOKAFLOW_INLINE_BODY_BYTES (a larger body waits
# in its own key), so one call copies at most 512 KiB and never holds Redis for long.
SCAN_COUNT = 32
# Most held messages are running tasks without an ETA: their `"eta": null` is skipped without
# decoding the message, and only the `limit` soonest are decoded whole (a full json.loads of
# every held message cost 3× more with 1,000 held, bench/console_pages.py).
_ETA = re.compile(rb'"eta": "([^"]+)"')


@dataclass(frozen=True)
class ScheduledTask:
    task_id: str
    name: str
    eta: datetime
    queue: str
    args: str
    retries: int

    @property
    def worker_type(self) -> str | None:
        route = parse_queue(self.queue)
        return route.worker_type.value if route else None

    @property
    def priority(self) -> str | None:
        route = parse_queue(self.queue)
        return route.priority.name if route else None


def scheduled_tasks(limit: int = 200) -> list[ScheduledTask]:
    """Tasks waiting for their time, soonest first (at most `limit`): in the scheduled sets and
    held by workers."""
    waiting = _in_sets(limit) + _held(limit)
    return heapq.nsmallest(limit, waiting, key=lambda task: task.eta)


def _in_sets(limit: int) -> list[ScheduledTask]:
    r = get_redis()
    with r.pipeline(transaction=False) as pipe:
        for key in scheduled_keys():
            pipe.zrange(key, 0, limit - 1, withscores=True)
        found = [entry for entries in pipe.execute() for entry in entries]
    tasks = []
    for raw, due in found:
        message = json.loads(raw)
        queue = ((message.get("properties") or {}).get("delivery_info") or {}).get("routing_key") or ""
        task = _task(message.get("headers") or {}, datetime.fromtimestamp(due, UTC), queue)
        tasks.append(task)
    return tasks


def _held(limit: int) -> list[ScheduledTask]:
    """Held by workers, eta still ahead."""
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
        message, _exchange, queue = unacked_record(raw)
        headers = message["headers"]
    except (ValueError, KeyError, TypeError):
        return None  # not a Celery task message
    return _task(headers, eta, queue)


def _task(headers: dict, eta: datetime, queue: str) -> ScheduledTask:
    return ScheduledTask(task_id=headers.get("id", ""), name=headers.get("task", ""), eta=eta, queue=queue,
                         args=f"{headers.get('argsrepr') or ''} {headers.get('kwargsrepr') or ''}".strip()[:200],
                         retries=headers.get("retries") or 0)

"""Delayed tasks wait in Redis, not in a worker: any countdown or eta runs once, when it is due.

A message that sat in a worker's memory (Celery's eta handling) longer than the visibility
timeout was handed to a second worker and ran twice. Now a task due more than SCHEDULE_AFTER
seconds from now is written, in the enqueue's MULTI, to the sorted set
`vokaflow:scheduled:<type>` (member: the message, score: when it is due). Every worker
(workers.scheduler) runs MOVE_DUE about once a second: one Lua script takes what is due within
LOOKAHEAD seconds, LPUSHes each message to the queue named in it and rings that type's bell, and
removes it from the set, so several workers polling at once never move a message twice. A
message moved early still carries its eta, which the worker waits for (at most LOOKAHEAD).

A task revoked while it waits (tasks.state.revoke_task keeps its id revoked until its eta plus
the result TTL) is dropped when it comes due, and its place in its owner's quota is freed.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

from vokaflow.core import keys
from vokaflow.core.queues import parse_queue
from vokaflow.core.workers import WorkerType
from vokaflow.redis import get_redis

SCHEDULE_AFTER = 1.0  # seconds: a task due sooner goes straight to its queue
LOOKAHEAD = 0.5  # seconds: what is due this soon is moved now (the worker waits for the eta)
BATCH = 500  # messages moved per set per call: bounds how long one script holds Redis

# KEYS: the scheduled sets. ARGV: now, lookahead, batch, revoked set, bell key prefix, pending key prefix.
# Queue, bell and pending keys are named inside the script (read from each message): VokaFlow
# runs on one Redis primary, never a cluster. The bell is transport.ring's XADD, written here.
MOVE_DUE = """
local now = tonumber(ARGV[1])
local moved = 0
for _, set in ipairs(KEYS) do
  local due = redis.call('ZRANGEBYSCORE', set, '-inf', now + tonumber(ARGV[2]), 'LIMIT', 0, tonumber(ARGV[3]))
  local bells = {}
  for _, item in ipairs(due) do
    redis.call('ZREM', set, item)
    local ok, message = pcall(cjson.decode, item)
    local headers = ok and type(message) == 'table' and message['headers']
    local props = ok and type(message) == 'table' and message['properties']
    local info = type(props) == 'table' and props['delivery_info']
    local queue = type(info) == 'table' and info['routing_key']
    local id = type(headers) == 'table' and headers['id']
    if type(queue) == 'string' and type(id) == 'string' then
      local revoked_until = redis.call('ZSCORE', ARGV[4], id)
      if revoked_until and tonumber(revoked_until) > now then
        local owner = headers['vokaflow_owner']
        if type(owner) == 'string' then redis.call('ZREM', ARGV[6] .. owner, id) end
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
    """Add to `pipe` the ZADD of each worker type's delayed messages ({type short: {message: due}})."""
    for short, messages in delayed.items():
        pipe.zadd(keys.SCHEDULED.format(short), messages)


_scripts: dict[int, object] = {}


def move_due(r=None, now: float | None = None) -> int:
    """Move every task due within LOOKAHEAD to its queue; returns how many were moved."""
    r = r or get_redis()
    script = _scripts.get(id(r))
    if script is None:
        script = _scripts[id(r)] = r.register_script(MOVE_DUE)
    return script(keys=scheduled_keys(), args=[time.time() if now is None else now, LOOKAHEAD, BATCH, keys.REVOKED,
                                              keys.BELL.format(""), keys.PENDING.format("")])


def scheduled_tasks(limit: int = 100) -> list[dict]:
    """The tasks waiting for their time, soonest first (for the console's Scheduled page)."""
    r = get_redis()
    with r.pipeline(transaction=False) as pipe:
        for key in scheduled_keys():
            pipe.zrange(key, 0, limit - 1, withscores=True)
        found = [entry for entries in pipe.execute() for entry in entries]
    found.sort(key=lambda entry: entry[1])
    return [_describe(raw, due) for raw, due in found[:limit]]


def scheduled_count() -> int:
    r = get_redis()
    with r.pipeline(transaction=False) as pipe:
        for key in scheduled_keys():
            pipe.zcard(key)
        return sum(pipe.execute())


def _describe(raw: bytes, due: float) -> dict:
    message = json.loads(raw)
    headers = message.get("headers") or {}
    queue = ((message.get("properties") or {}).get("delivery_info") or {}).get("routing_key")
    route = parse_queue(queue or "")
    return {"task_id": headers.get("id"), "task": headers.get("task"), "queue": queue,
            "worker_type": route.worker_type.value if route else None,
            "priority": route.priority.name if route else None, "partition": route.partition if route else None,
            "eta": datetime.fromtimestamp(due, UTC).isoformat()}

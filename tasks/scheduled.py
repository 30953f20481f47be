"""Delayed tasks wait in Redis, not in a worker: any countdown or eta runs once, when it is due.

A message that sat in a worker's memory (Celery's eta handling) longer than the visibility
timeout was handed to a second worker and ran twice. Now a task due more than SCHEDULE_AFTER
seconds from now is written, in the enqueue's MULTI, to the sorted set
`vokaflow:scheduled:<type>` (member: the message, score: when it is due). Every worker
(workers.scheduler) runs move_due about once a second: it reads what is due within LOOKAHEAD
seconds, and one Lua script removes each message from the set, LPUSHes it to the queue named in
it and rings that type's bell, so several workers polling at once never move a message twice. A
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
import logging
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.conf import settings

from vokaflow.announce import announce, needs_announcing, new_token
from vokaflow.core import keys
from vokaflow.core.queues import parse_queue, queue_tag
from vokaflow.core.slots import group_tag
from vokaflow.core.workers import WorkerType
from vokaflow.redis import get_redis
from vokaflow.transport import BODY_BYTES, body_key, outline_all, ring, unacked_record

logger = logging.getLogger(__name__)

SCHEDULE_AFTER = 1.0  # seconds: a task due sooner goes straight to its queue
LOOKAHEAD = 0.5  # seconds: what is due this soon is moved now (the worker waits for the eta)
BATCH = 500  # due messages read per set per call

# Moving takes three steps, so that one script touches one slot (the rule that lets it run on a
# Redis Cluster, where each partition group has its own scheduled set per type): the worker reads
# what is due and which of those tasks are revoked; the script removes each message from the set
# and, unless it is revoked, pushes it to its queue, only when its own ZREM succeeded (another
# worker may have moved it meanwhile), so no message is moved twice and none is lost; then the
# worker rings the bells of the queues it filled and frees the quota places of the revoked ones.
# KEYS: the scheduled set, the group's announcing hash (vokaflow.announce), then the queues and
# body keys the messages name. ARGV: the announcement token ('' on one Redis), then per message:
# the message, the index in KEYS of its queue (0: dropped: revoked or unreadable), of its body key
# (0: none). Returns, per message, 1 when it was pushed, 2 when it was dropped, 0 when another
# worker took it; then, with a token, per queue pushed to: its index in KEYS and what ANNOUNCE
# would answer for it (2: it was empty, announced with this token; 1: announce too; 0: done).
MOVE_DUE = """
local token = ARGV[1]
local out, first, order = {}, {}, {}
for i = 2, #ARGV, 3 do
  local state = 0
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    local queue, body = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
    if queue > 0 then
      local length = redis.call('LPUSH', KEYS[queue], ARGV[i])
      if not first[queue] then
        first[queue] = length
        order[#order + 1] = queue
      end
      state = 1
    else
      if body > 0 then redis.call('DEL', KEYS[body]) end
      state = 2
    end
  end
  out[#out + 1] = state
end
if token ~= '' then
  for _, queue in ipairs(order) do
    local announce = 0
    if first[queue] == 1 then
      redis.call('HSET', KEYS[2], KEYS[queue], token)
      announce = 2
    elseif redis.call('HGET', KEYS[2], KEYS[queue]) ~= 'done' then
      announce = 1
    end
    out[#out + 1] = queue
    out[#out + 1] = announce
  end
end
return out
"""
CHUNK_BYTES = 256 * 1024  # of messages per script: bounds how long one call holds Redis


def scheduled_key(worker_type_short: str, partition: int) -> str:
    """The sorted set a delayed task waits in: one per type, per partition group on a cluster."""
    return keys.in_group(keys.SCHEDULED.format(worker_type_short), group_tag(partition))


def scheduled_keys() -> list[str]:
    groups = range(settings.VOKAFLOW_PARTITIONS) if keys.cluster_layout() else [0]
    return sorted({scheduled_key(t.short, p) for t in WorkerType for p in groups})


def is_delayed(eta: datetime | None, now: float) -> bool:
    return eta is not None and eta.timestamp() > now + SCHEDULE_AFTER


def schedule(pipe, delayed: dict[str, dict[str, float]]) -> None:
    """Add to `pipe` the ZADD of delayed messages ({scheduled_key: {message: due}}); a large
    message's body goes to its own key first (transport.outline), in the set's slot."""
    for key, messages in delayed.items():
        queued = outline_all(pipe, messages, queue_tag(key))
        pipe.zadd(key, dict(zip(queued, messages.values(), strict=True)))


_scripts: dict[int, Any] = {}  # a registered Script per client


def move_due(r=None, now: float | None = None) -> int:
    """Move every task due within LOOKAHEAD to its queue; returns how many were moved."""
    r = r or get_redis()
    script = _scripts.get(id(r))
    if script is None:
        script = _scripts[id(r)] = r.register_script(MOVE_DUE)
    now = time.time() if now is None else now
    moved = 0
    sets = scheduled_keys()
    # The first look at every set at once (on a cluster, one round trip per primary, not per set).
    with r.pipeline(transaction=False) as pipe:
        for key in sets:
            pipe.zrangebyscore(key, "-inf", now + LOOKAHEAD, start=0, num=BATCH)
        looks = pipe.execute()
    for key, due in zip(sets, looks, strict=True):
        while due:  # BATCH at a time, until what is due is gone (moved here or by another worker)
            for chunk in _chunks(due):
                moved += _move(r, script, key, chunk, now)
            due = r.zrangebyscore(key, "-inf", now + LOOKAHEAD, start=0, num=BATCH) if len(due) == BATCH else []
    return moved


def _chunks(messages: list[bytes]):
    chunk: list[bytes] = []
    size = 0
    for message in messages:
        if chunk and size + len(message) > CHUNK_BYTES:
            yield chunk
            chunk, size = [], 0
        chunk.append(message)
        size += len(message)
    if chunk:
        yield chunk


def _move(r, script, scheduled: str, messages: list[bytes], now: float) -> int:
    """One script's worth of due messages of one set; returns how many this call pushed."""
    entries = [_entry(raw) for raw in messages]
    ids = [entry[1] for entry in entries if entry]
    revoked = {task_id for task_id, until in zip(ids, r.zmscore(keys.REVOKED, ids) if ids else [], strict=True)
               if until is not None and until > now}
    group = queue_tag(scheduled)
    names = [scheduled, keys.in_group(keys.ANNOUNCING, group)]
    index: dict[str, int] = {}

    def at(name: str) -> int:
        if name not in index:
            names.append(name)
            index[name] = len(names)
        return index[name]

    token = new_token() if keys.cluster_layout() else ""
    args: list = [token]
    for raw, entry in zip(messages, entries, strict=True):
        if entry is None:
            logger.error("dropped a scheduled entry that is not a task message: %r", raw[:200])
            args += [raw, 0, 0]
        else:
            queue, task_id, _owner, body_tag = entry
            args += [raw, 0 if task_id in revoked else at(queue), at(body_key(body_tag, group)) if body_tag else 0]
    reply = script(keys=names, args=args)
    states, announced = reply[:len(messages)], reply[len(messages):]
    announce(r, [({names[q - 1]: state for q, state in zip(announced[::2], announced[1::2], strict=True)
                   if needs_announcing(names[q - 1])}, token)])
    filled = {entry[0] for entry, state in zip(entries, states, strict=True) if entry and state == 1}
    dropped = [entry for entry, state in zip(entries, states, strict=True) if entry and state == 2]
    if filled or dropped:
        with r.pipeline(transaction=False) as pipe:
            ring(pipe, filled)
            for _queue, task_id, owner, _tag in dropped:  # a revoked task's quota place is free again
                if owner is not None:
                    pipe.zrem(keys.PENDING.format(owner), task_id)
            pipe.execute()
    return sum(1 for state in states if state == 1)


def _entry(raw: bytes) -> tuple[str, str, object, str | None] | None:
    """(queue, task id, owner, delivery tag of an outlined body) of a scheduled message."""
    try:
        message = json.loads(raw)
        props, headers = message["properties"], message["headers"]
        queue, task_id = props["delivery_info"]["routing_key"], headers["id"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(queue, str) or not isinstance(task_id, str) or not queue:
        return None
    tag = props.get("delivery_tag")
    return queue, task_id, headers.get("vokaflow_owner"), tag if BODY_BYTES in props and isinstance(tag, str) else None


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

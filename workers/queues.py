"""Queues as an operator sees them: depth and oldest age, pause and resume a level, purge.

A level is one (worker type, priority): its `VOKAFLOW_PARTITIONS` queues. Paused levels live in
the Redis set `vokaflow:paused` ("GENERAL_PURPOSE:LOW"), the one source of truth: live workers
are told to stop consuming those queues through Celery's remote control (`cancel_consumer`, as
Flower does it), a worker that starts later leaves them out of its queue list
(vokaflow.celery.ConsumeWorkerTypeQueues), and resuming adds them back (`add_consumer`). Paused
work stays queued.
"""

from __future__ import annotations

import functools
import logging
import time
import uuid
from dataclasses import dataclass

import redis
from django.conf import settings

from tasks.messages import ENQUEUED_AT_HEADER
from vokaflow.core import keys
from vokaflow.core.autoscale import READY_AT_HEADER, ready_age
from vokaflow.core.errors import NotFound
from vokaflow.core.priorities import Priority
from vokaflow.core.queues import Route, all_queues, parse_queue, queue_name, queue_tag
from vokaflow.core.workers import WorkerType
from vokaflow.redis import get_redis
from vokaflow.redis_connect import as_text
from vokaflow.transport import FIELD_LUA, HEADERS_WINDOW, body_keys
from workers.live import live_workers

logger = logging.getLogger(__name__)



class UnknownQueue(NotFound):
    def __init__(self, name: str):
        self.name = name
        super().__init__(f"no queue named {name!r}; queue names read <type>.<priority>.p<partition>, "
                         "for example general.low.p0")


@dataclass(frozen=True)
class QueueInfo:
    name: str
    worker_type: str
    priority: str
    partition: int
    depth: int
    oldest_age_seconds: float | None  # None: the next message carries no enqueue time
    paused: bool
    # How long the next task has been ready to run: since max(enqueued, due, let out by a limit)
    # (vokaflow.core.autoscale.ready_age); what autoscaling and KEDA scale on.
    oldest_wait_seconds: float | None = None


@dataclass(frozen=True)
class Level:
    worker_type: WorkerType
    priority: Priority

    @property
    def key(self) -> str:
        return f"{self.worker_type.value}:{self.priority.name}"

    def queues(self) -> list[str]:
        return [queue_name(self.worker_type, self.priority, p) for p in range(settings.VOKAFLOW_PARTITIONS)]

    def as_dict(self) -> dict:
        return {"worker_type": self.worker_type.value, "priority": self.priority.name}


def level(worker_type: str, priority: str) -> Level:
    """The level named by a worker type and a priority (ValueError naming the choices)."""
    return Level(WorkerType.parse(worker_type), Priority.parse(priority))


# One script per worker type: the depth of each of its queues, and the enqueue time of the message
# a worker takes next (the list's right end), one line per non-empty queue in one string (960
# separate replies cost 30 ms of packing and parsing in redis-py: bench/console_pages.py). Every
# key is passed in KEYS. One call per type, one after the other: a script copies each message it
# reads into Lua (at most VOKAFLOW_INLINE_BODY_BYTES: a larger body waits in its own key), so a
# call holds Redis for at most a type's 64 queues. The header is found by a plain substring search,
# not by decoding the message: task arguments reach the JSON only escaped (in argsrepr) or base64
# (the body), so only a real header reads `"vokaflow_enqueued_at": <number>`. The headers follow
# the body in kombu's JSON: each is looked for in the message's last HEADERS_WINDOW bytes first
# (transport.FIELD_LUA's search), the whole message only when it is not there.
_SCAN = FIELD_LUA + r"""
local function number(item, name)
  local _, e = find(item, '"' .. name .. '": ', -HEADERS, true)
  if not e and HEADERS < #item then _, e = find(item, '"' .. name .. '": ', 1, true) end
  return e and string.match(item, '^[%d%.]+', e + 1) or ''
end
local out = {}
for _, key in ipairs(KEYS) do
  local depth = redis.call('LLEN', key)
  if depth > 0 then
    local item = redis.call('LINDEX', key, '-1')
    local eta = field(item, '"eta": "', HEADERS) or ''
    out[#out + 1] = key .. ' ' .. depth .. ' ' .. number(item, ARGV[1]) .. ' ' .. number(item, ARGV[2]) .. ' ' .. eta
  end
end
return table.concat(out, '\n')
""".replace("HEADERS", str(HEADERS_WINDOW))


def non_empty_queues() -> list[QueueInfo]:
    """Every non-empty VokaFlow queue with its depth and the age of its oldest waiting task,
    highest priority first."""
    r = get_redis()
    scan = r.register_script(_SCAN)
    lines = [line for queues in _scan_groups()
             for line in as_text(scan(keys=queues, args=[ENQUEUED_AT_HEADER, READY_AT_HEADER])).split("\n") if line]
    paused = paused_levels_set()
    now = time.time()
    found = []
    for line in lines:
        name, depth, at, ready, eta = line.split(" ")
        route = _route(name)
        wait = ready_age({ENQUEUED_AT_HEADER: float(at or 0), READY_AT_HEADER: float(ready or 0), "eta": eta or None},
                         now)
        found.append(QueueInfo(
            name=name, worker_type=route.worker_type.value, priority=route.priority.name,
            partition=route.partition, depth=int(depth),
            oldest_age_seconds=round(max(0.0, now - float(at)), 1) if at else None,
            paused=Level(route.worker_type, route.priority) in paused,
            oldest_wait_seconds=round(wait, 1) if wait is not None else None))
    return sorted(found, key=lambda q: int(Priority[q.priority]))  # stable: type and partition order stay


def _scan_groups() -> list[list[str]]:
    """The queues one scan script reads at a time: a worker type's (on a cluster, a type's in
    one partition group: a script touches one slot)."""
    if not keys.cluster_layout():
        return [_type_queues(t) for t in WorkerType]
    groups: dict[tuple, list[str]] = {}
    for worker_type in WorkerType:
        for queue in _type_queues(worker_type):
            groups.setdefault((worker_type, queue_tag(queue)), []).append(queue)
    return list(groups.values())


@functools.lru_cache(maxsize=16)
def _type_queues(worker_type: WorkerType) -> list[str]:
    return [queue_name(worker_type, priority, p) for priority in Priority for p in range(settings.VOKAFLOW_PARTITIONS)]


@functools.lru_cache(maxsize=4096)
def _route(name: str) -> Route:
    route = parse_queue(name)
    if route is None:
        raise UnknownQueue(name)
    return route


def paused_levels_set() -> set[Level]:
    levels = set()
    for raw in get_redis().smembers(keys.PAUSED):
        worker_type, _, priority = as_text(raw).partition(":")
        try:
            levels.add(level(worker_type, priority))
        except ValueError:
            continue  # written by a newer version with another vocabulary
    return levels


def paused_levels() -> list[dict]:
    """[{"worker_type", "priority"}] of every paused level, in priority order."""
    return [lv.as_dict() for lv in sorted(paused_levels_set(), key=lambda lv: (lv.priority, lv.worker_type.value))]


def paused_queue_names() -> set[str]:
    return {q for lv in paused_levels_set() for q in lv.queues()}


def pause_level(worker_type: str, priority: str) -> dict:
    """Stop consuming a level: recorded in Redis first (workers that start later read it), then
    every live worker that consumes its queues is told to cancel them."""
    return _set_paused(level(worker_type, priority), True)


def resume_level(worker_type: str, priority: str) -> dict:
    return _set_paused(level(worker_type, priority), False)


def _set_paused(lv: Level, paused: bool) -> dict:
    r = get_redis()
    (r.sadd if paused else r.srem)(keys.PAUSED, lv.key)
    _tell_workers("cancel_consumer" if paused else "add_consumer", lv)
    logger.info("%s %s", "paused" if paused else "resumed", lv.key)
    return {**lv.as_dict(), "paused": paused}


def _tell_workers(command: str, lv: Level) -> None:
    """Celery's remote control (cancel_consumer / add_consumer) to the live workers of this level's
    type, queue by queue for the partitions each one owns; no reply is awaited."""
    from vokaflow.celery import app

    owners: dict[str, list[str]] = {}
    for worker in live_workers():
        if lv.worker_type.value in worker["worker_types"]:
            for partition in worker["partitions"]:
                owners.setdefault(Route(lv.worker_type, lv.priority, partition).queue, []).append(worker["name"])
    for queue, names in owners.items():
        getattr(app.control, command)(queue, destination=names, reply=False)


PURGE_CHUNK = 1000  # messages dropped per round trip of a purge


def purge_queue(name: str) -> int:
    """Delete every task waiting in one queue; returns how many. Running tasks are not touched;
    the purged tasks' states stay PENDING until their records expire."""
    if name not in all_queues(settings.VOKAFLOW_PARTITIONS):
        raise UnknownQueue(name)
    r = get_redis()
    # The queue is emptied at once (RENAME), then its messages are dropped in chunks with the
    # bodies of the large ones (kept in keys of their own: transport.outline).
    doomed = keys.in_group(keys.PURGING.format(uuid.uuid4().hex), queue_tag(name))  # RENAME stays in its slot
    try:
        r.rename(name, doomed)
    except redis.ResponseError:  # no such key: the queue was empty
        return 0
    depth = 0
    while chunk := r.lrange(doomed, 0, PURGE_CHUNK - 1):
        with r.pipeline(transaction=True) as pipe:
            pipe.ltrim(doomed, len(chunk), -1)
            if bodies := body_keys(chunk, queue_tag(name)):
                pipe.delete(*bodies)
            pipe.execute()
        depth += len(chunk)
    logger.warning("purged %d tasks from %s", depth, name)
    return depth

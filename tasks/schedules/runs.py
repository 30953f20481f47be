"""What happened to a schedule's occurrences, kept in Redis so a beat needs no database.

Per schedule, two keys with one hash tag (`{s<id>}`, one slot on a cluster):
- `vokaflow:schedule:{s<id>}`: `last_due` (the latest occurrence handled, epoch seconds: it only
  moves forward), `last_task` and `last_task_due` (the newest occurrence's task, for `overlap: skip`);
- `vokaflow:schedule:{s<id>}:runs`: due time → what happened to it (JSON: task id, or why it was
  skipped), the newest RECENT_RUNS kept.

The record script writes both at once, first writer wins per due time: beats that handled the
same occurrence (one enqueued it, the others were answered `duplicate` with the same task id)
leave one entry. Enqueueing itself is exactly once through the occurrence's idempotency key
(tasks.schedules.beat), not through these keys.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from redis.cluster import RedisCluster
from redis.exceptions import ResponseError

from vokaflow.core import keys
from vokaflow.redis_connect import as_text

RECENT_RUNS = 20
# A schedule's keys outlive their last write by this long: a deleted schedule's are gone by then
# (a beat that had not yet seen the delete may record one last run after it).
IDLE_TTL = 400 * 86400

# KEYS: state hash, runs hash. ARGV: due (epoch s, as text), entry (JSON), task id ('' when skipped),
# runs kept, '1' for a run now (which is no occurrence: the timing's last due time stays), idle ttl (s).
# Returns 1 when this call recorded the due time, 0 when another beat had.
_RECORD = """
local due = tonumber(ARGV[1])
local last = tonumber(redis.call('HGET', KEYS[1], 'last_due') or '-1')
if due > last and ARGV[5] ~= '1' then redis.call('HSET', KEYS[1], 'last_due', ARGV[1]) end
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('EXPIRE', KEYS[2], ARGV[6])
if ARGV[3] ~= '' then
  local task_due = tonumber(redis.call('HGET', KEYS[1], 'last_task_due') or '-1')
  if due >= task_due then redis.call('HSET', KEYS[1], 'last_task', ARGV[3], 'last_task_due', ARGV[1]) end
end
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then
  -- An occurrence one beat skipped (overlap) and another enqueued: the enqueue is what happened.
  if ARGV[3] == '' then return 0 end
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
  return 0
end
local n = redis.call('HLEN', KEYS[2])
if n > tonumber(ARGV[4]) * 2 then
  local dues = redis.call('HKEYS', KEYS[2])
  table.sort(dues, function(a, b) return tonumber(a) > tonumber(b) end)
  redis.call('HDEL', KEYS[2], unpack(dues, tonumber(ARGV[4]) + 1))
end
return 1
"""


@dataclass(frozen=True)
class Run:
    due: float  # epoch seconds
    task_id: str | None
    skipped: str | None = None  # why no task was enqueued: overlap, missed, refused: <reason>
    manual: bool = False  # "run now"


@dataclass(frozen=True)
class State:
    last_due: float | None
    last_task: str | None


def due_text(due: float) -> str:
    return f"{due:.3f}".rstrip("0").rstrip(".")


def record_run(r, schedule_id: int, run: Run) -> bool:
    """Record what happened to one occurrence; False when another beat recorded it first."""
    return record_runs(r, [(schedule_id, run)])[0]


def record_runs(r, runs: list[tuple[int, Run]]) -> list[bool]:
    """record_run of many, pipelined: one script call each, touching one schedule's slot. On a
    Redis Cluster (whose pipelines refuse scripts) pipelined per primary; a call redirected while
    slots move goes again through RedisCluster, which follows it (recording is idempotent)."""
    calls: list[tuple[list[str], list[str | int]]] = [
        ([keys.SCHEDULE_STATE.format(sid), keys.SCHEDULE_RUNS.format(sid)],
              [due_text(run.due), json.dumps({"task_id": run.task_id, "skipped": run.skipped, "manual": run.manual}),
               run.task_id or "", RECENT_RUNS, "1" if run.manual else "0", IDLE_TTL]) for sid, run in runs]
    if not isinstance(r, RedisCluster):
        return _pipelined(r, list(range(len(calls))), calls)
    by_node: dict[str, list[int]] = {}
    for i, (names, _) in enumerate(calls):
        by_node.setdefault(r.get_node_from_key(names[0]).name, []).append(i)
    replies = [False] * len(calls)
    for indexes in by_node.values():
        node = r.get_redis_connection(r.get_node_from_key(calls[indexes[0]][0][0]))
        try:
            for i, reply in zip(indexes, _pipelined(node, indexes, calls), strict=True):
                replies[i] = reply
        except ResponseError:  # MOVED or ASK: one by one through the cluster client
            for i in indexes:
                replies[i] = bool(r.eval(_RECORD, 2, *calls[i][0], *calls[i][1]))
    return replies


def _pipelined(client, indexes: list[int], calls: list) -> list[bool]:
    script = client.register_script(_RECORD)
    with client.pipeline(transaction=False) as pipe:
        for i in indexes:
            script(keys=calls[i][0], args=calls[i][1], client=pipe)
        return [bool(reply) for reply in pipe.execute()]


def read_state(r, schedule_ids: list[int]) -> dict[int, State]:
    """The stored state of each schedule, in one pipelined round trip (one key each: any layout)."""
    with r.pipeline(transaction=False) as pipe:
        for schedule_id in schedule_ids:
            pipe.hmget(keys.SCHEDULE_STATE.format(schedule_id), "last_due", "last_task")
        replies = pipe.execute()
    return {sid: State(float(due) if due else None, as_text(task) if task else None)
            for sid, (due, task) in zip(schedule_ids, replies, strict=True)}


def recent_runs(r, schedule_id: int) -> list[Run]:
    """Newest first, at most RECENT_RUNS."""
    raw = r.hgetall(keys.SCHEDULE_RUNS.format(schedule_id))
    runs = []
    for due, entry in raw.items():
        data = json.loads(entry)
        runs.append(Run(float(due), data.get("task_id"), data.get("skipped"), bool(data.get("manual"))))
    runs.sort(key=lambda run: run.due, reverse=True)
    return runs[:RECENT_RUNS]


def forget(r, schedule_id: int) -> None:
    """A deleted schedule's keys (one slot: a multi-key DEL is allowed)."""
    r.delete(keys.SCHEDULE_STATE.format(schedule_id), keys.SCHEDULE_RUNS.format(schedule_id))

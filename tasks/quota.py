"""Per-user quota of pending tasks: submitted through the API and not yet finished.

Each owner has a sorted set `vokaflow:pending:<owner>` of task ids, scored by the moment the
entry stops counting: when the task is due (now, or its eta) plus VOKAFLOW_RESULT_TTL. An
enqueue adds its tasks in one Lua script that first drops expired entries and refuses the whole
batch when it would go over VOKAFLOW_USER_PENDING_QUOTA, so concurrent submissions can never
overshoot; a finished task's result store removes its id no later than the task's
acknowledgement: in the consuming worker process the next fetch script carries the removal
before the acknowledgements (vokaflow.hotpath), elsewhere (a prefork child, the API) it is
written at once (tasks.counters.finished).

Drift: removal is by id, so a task finishing twice (a redelivery) is removed once; a worker
killed after storing a result but before its next fetch leaves the task unacknowledged, so it
is redelivered and its place removed when it finishes again. Should a removal still be missed
(Redis refused it), the entry stops counting when it expires: the count is never too high for
longer than the result TTL.
"""

from __future__ import annotations

import math
import time

from django.conf import settings

from tasks.validation import TaskRequest
from vokaflow.core import keys
from vokaflow.core.errors import TooManyRequests

# KEYS: the owner's set. ARGV: now, quota, then score, id pairs.
# Returns -1 when added, else the number of tasks the owner has pending.
_RESERVE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local pending = redis.call('ZCARD', KEYS[1])
if pending + (#ARGV - 2) / 2 > tonumber(ARGV[2]) then return pending end
redis.call('ZADD', KEYS[1], unpack(ARGV, 3))
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')[2]
redis.call('EXPIREAT', KEYS[1], math.ceil(tonumber(last)))
return -1
"""


class QuotaExceeded(TooManyRequests):
    """The owner has VOKAFLOW_USER_PENDING_QUOTA tasks pending already; nothing was enqueued."""


def reserve_pending(r, owner: int | None, requests: list[TaskRequest]) -> bool:
    """Count `requests` against `owner`'s quota, or raise QuotaExceeded; False when no quota applies."""
    quota = settings.VOKAFLOW_USER_PENDING_QUOTA
    if not owner or quota <= 0 or not requests:
        return False
    now = time.time()
    ttl = settings.VOKAFLOW_RESULT_TTL
    pairs = []
    for req in requests:
        due = max(now, req.eta.timestamp()) if req.eta else now
        pairs += [math.ceil(due + ttl), req.task_id]
    pending = r.eval(_RESERVE, 1, keys.PENDING.format(owner), now, quota, *pairs)
    if pending >= 0:
        raise QuotaExceeded(
            f"{pending} of your tasks are pending (submitted, not finished); the limit is {quota} "
            f"(VOKAFLOW_USER_PENDING_QUOTA) and {len(requests)} more would exceed it. Nothing was enqueued; "
            "retry when some have finished.", pending=pending, quota=quota)
    return True


def release_pending(r, owner: int | None, task_ids: list[str]) -> None:
    """Give back the places of tasks that were not enqueued after all, or have finished."""
    if owner and task_ids:
        r.zrem(keys.PENDING.format(owner), *task_ids)


def pending_count(r, owner: int) -> int:
    return r.zcount(keys.PENDING.format(owner), time.time(), "+inf")

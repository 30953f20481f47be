"""Stopping a running task on a thread pool, where a thread cannot be killed: it is asked to.

`DELETE tasks/{id}/` on a task running in a thread sets `vokaflow:cancel:<id>` in Redis. A task
that can be stopped checks it between steps:

    from tasks.cancellation import check_cancelled

    for row in rows:
        check_cancelled()      # raises TaskCancelled once a stop was asked for
        handle(row)

`check_cancelled()` and `is_cancelled()` ask Redis at most once every POLL_SECONDS per task
(a cached answer in between costs nothing), so they may be called in a tight loop. A task that
raises TaskCancelled ends REVOKED (PlatformTask.__call__): not FAILURE, no dead letter, no retry.
A task that never checks runs to its end and keeps the state it ends with.

The same flag tells a task on a thread pool that it ran past its soft time limit (the worker's
watchdog, workers.watchdog, sets it with the reason TIME_LIMIT): the check then raises Celery's
SoftTimeLimitExceeded, and the task fails (and is dead-lettered) as on a prefork pool.
"""

from __future__ import annotations

import threading
import time

import redis
from celery.exceptions import SoftTimeLimitExceeded

from vokaflow.core import keys
from vokaflow.redis import get_redis
from vokaflow.redis_connect import as_text

POLL_SECONDS = 0.2  # how stale a "not cancelled" answer may be: the stop takes at most this long to be seen


REVOKED, TIME_LIMIT = "revoked", "soft_time_limit"  # why a task is asked to stop: the flag's value


class TaskCancelled(Exception):
    """Raised inside a task that was asked to stop; the platform records the task as REVOKED."""


def request_cancel(task_id: str, ttl: float, reason: str = REVOKED) -> None:
    """Ask a running task to stop (the flag outlives it by `ttl` seconds at most)."""
    get_redis().set(keys.task_key(keys.CANCEL, task_id), reason, ex=max(1, int(ttl)))


def cancel_requested(task_id: str) -> bool:
    """Whether a stop was asked for (one Redis call, no cache): for the API, not for loops."""
    return bool(get_redis().exists(keys.task_key(keys.CANCEL, task_id)))


class _Seen(threading.local):
    task_id: str | None = None
    checked_at: float = 0.0
    reason: str | None = None


_seen = _Seen()


def is_cancelled(task_id: str | None = None) -> bool:
    """Whether the running task (or `task_id`) was asked to stop; Redis is asked at most every
    POLL_SECONDS per thread, and a yes is remembered."""
    return _stop_reason(task_id) is not None


def check_cancelled(task_id: str | None = None) -> None:
    """Raise TaskCancelled if the running task (or `task_id`) was asked to stop, or
    SoftTimeLimitExceeded if it ran past its soft time limit on a thread pool."""
    reason = _stop_reason(task_id)
    if reason == TIME_LIMIT:
        raise SoftTimeLimitExceeded(f"task {task_id or _current_task_id()} ran past its soft time limit")
    if reason is not None:
        raise TaskCancelled(f"task {task_id or _current_task_id()} was asked to stop")


def _stop_reason(task_id: str | None) -> str | None:
    task_id = task_id or _current_task_id()
    if task_id is None:
        return None
    now = time.monotonic()
    if _seen.task_id != task_id:
        _seen.task_id, _seen.checked_at, _seen.reason = task_id, 0.0, None
    if _seen.reason is None and now - _seen.checked_at >= POLL_SECONDS:
        try:
            raw = get_redis().get(keys.task_key(keys.CANCEL, task_id))
        except redis.RedisError:
            # Redis is away (restarting, unreachable): a stop that cannot be read is not a stop.
            # The task carries on and asks again at its next check; a task that did nothing wrong
            # does not fail of the platform's own question.
            raw = None
        _seen.reason, _seen.checked_at = (as_text(raw) if raw is not None else None), now
    return _seen.reason


def sleep(seconds: float, task_id: str | None = None) -> None:
    """time.sleep() that ends early with TaskCancelled when the task is asked to stop."""
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        check_cancelled(task_id)
        time.sleep(min(remaining, POLL_SECONDS))


def _current_task_id() -> str | None:
    from celery import current_task

    return getattr(getattr(current_task, "request", None), "id", None)

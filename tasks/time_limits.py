"""Time limits every task runs under, and how a task on a thread pool is told it is over them.

Every task type has a soft and a hard limit: its own (`platform_task(soft_time_limit=...,
time_limit=...)`), else its worker type's default from settings (VOKAFLOW_TIME_LIMITS). The
prefork pool enforces both itself (SoftTimeLimitExceeded inside the task, then the process is
killed). A thread cannot be interrupted, so on thread pools a watchdog in the worker
(workers.watchdog) sets `vokaflow:cancel:<task id>` at the soft limit; a task that checks it
(`check_stop()`, or `sleep()` below) raises SoftTimeLimitExceeded, and one still running at its
hard limit is reported as a stuck slot in the worker's heartbeat.
"""

from __future__ import annotations

import threading
import time

from celery.exceptions import SoftTimeLimitExceeded

from vokaflow.core import keys

POLL_SECONDS = 0.2  # a task asks Redis at most this often: the stop is seen this late at worst
TIME_LIMIT_REASON = "soft_time_limit"  # the value of the cancel key when a limit set it


def default_limits(worker_type_short: str | None) -> tuple[float, float]:
    """(soft, hard) seconds for tasks of a worker type that declare none."""
    from django.conf import settings

    return settings.VOKAFLOW_TIME_LIMITS.get(
        worker_type_short, (settings.VOKAFLOW_SOFT_TIME_LIMIT, settings.VOKAFLOW_TIME_LIMIT))


def effective_limits(declared: tuple[float | None, float | None], default: tuple[float | None, float | None]
                     ) -> tuple[float | None, float | None]:
    """(soft, hard): what the task or its message declares, else the default; soft never above hard."""
    soft = declared[0] or default[0]
    hard = declared[1] or default[1]
    if soft and hard:
        soft = min(soft, hard)
    return soft, hard


def request_stop(r, task_id: str, ttl: float) -> None:
    r.set(keys.CANCEL.format(task_id), TIME_LIMIT_REASON, ex=max(1, int(ttl)))


class _Checked(threading.local):
    task_id: str | None = None
    at: float = 0.0


_checked = _Checked()


def check_stop(task_id: str | None = None) -> None:
    """Raise SoftTimeLimitExceeded if the running task was told to stop (Redis asked every POLL_SECONDS)."""
    from celery import current_task

    from vokaflow.redis import get_redis

    task_id = task_id or getattr(getattr(current_task, "request", None), "id", None)
    if task_id is None:
        return
    now = time.monotonic()
    if _checked.task_id == task_id and now - _checked.at < POLL_SECONDS:
        return
    _checked.task_id, _checked.at = task_id, now
    if get_redis().exists(keys.CANCEL.format(task_id)):
        raise SoftTimeLimitExceeded(f"task {task_id} ran past its soft time limit and was told to stop")


def sleep(seconds: float) -> None:
    """time.sleep() that ends with SoftTimeLimitExceeded when the task is told to stop."""
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        check_stop()
        time.sleep(min(remaining, POLL_SECONDS))

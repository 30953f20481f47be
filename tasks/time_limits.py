"""Time limits every task runs under, and how a task on a thread pool is told it is over them.

Every task type has a soft and a hard limit: its own (`platform_task(soft_time_limit=...,
time_limit=...)`), else its worker type's default from settings (VOKAFLOW_TIME_LIMITS). The
prefork pool enforces both itself (SoftTimeLimitExceeded inside the task, then the process is
killed). A thread cannot be interrupted, so on thread pools a watchdog in the worker
(workers.watchdog) asks the task to stop at the soft limit (tasks.cancellation, reason
TIME_LIMIT); a task that checks (`check_cancelled()`, `tasks.cancellation.sleep()`) raises
SoftTimeLimitExceeded, and one still running at its hard limit is reported as a stuck slot in
the worker's heartbeat.
"""

from __future__ import annotations


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

"""PlatformTask: the base class every VokaFlow task runs through, and its declaring decorator."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

from celery import Task, shared_task, states
from celery.exceptions import Ignore

from tasks.priorities import DEFAULT_PRIORITY, Priority
from workers.profiles import DEFAULT_WORKER_TYPE, WorkerType

logger = logging.getLogger(__name__)


class PlatformTask(Task):
    """A Celery task that knows its routing defaults and its retry policy.

    Attributes set by :func:`platform_task`: ``worker_type``, ``default_priority`` and
    ``submittable`` (may be run by name through the API). Retries use Celery's
    ``autoretry_for`` with exponential back-off and full jitter. ``track_started`` records
    the STARTED state (one Redis write per task; tasks that finish in microseconds skip it).
    """

    abstract = True
    worker_type: WorkerType = DEFAULT_WORKER_TYPE
    default_priority: Priority = DEFAULT_PRIORITY
    submittable: bool = False
    description: str = ""
    acks_late = True
    reject_on_worker_lost = True
    retry_backoff = 1
    retry_backoff_max = 600
    retry_jitter = True
    track_started = True

    def __call__(self, *args, **kwargs):
        spec = getattr(self.request, "vokaflow_lock", None)
        if not spec or self.request.is_eager:
            return super().__call__(*args, **kwargs)
        return self._call_under_lock(spec, args, kwargs)

    def _call_under_lock(self, spec: dict, args, kwargs):
        """Run while holding the submission's lock; a task that finds it taken is put back in
        its queue with a short countdown (its worker slot is freed) or dropped if asked to."""
        from tasks.submit import requeue_running
        from vokaflow import locks
        from vokaflow.redis import get_redis

        lock = locks.RedisLock(spec["key"], spec["timeout"], owner=f"{self.name}[{self.request.id}]",
                               watchdog=True, client=get_redis())
        try:
            lock.acquire()
        except locks.LockNotAcquired as exc:
            if spec.get("skip_if_locked"):
                self.backend.mark_as_revoked(self.request.id, reason=f"skipped: {exc}", request=self.request)
                raise Ignore() from None
            requeue_running(self, delay=random.uniform(0.05, 0.5))
            self.update_state(state=states.PENDING, meta=None)
            raise Ignore() from None
        try:
            return super().__call__(*args, **kwargs)
        finally:
            try:
                lock.release()
            except locks.LockLost as exc:
                logger.warning("task %s ran past its lock: %s", self.request.id, exc)


def platform_task(name: str, *, worker_type: WorkerType | str = DEFAULT_WORKER_TYPE,
                  priority: Priority | str = DEFAULT_PRIORITY, submittable: bool = False,
                  max_retries: int = 3, retry_for: tuple[type[BaseException], ...] = (),
                  soft_time_limit: float | None = None, time_limit: float | None = None,
                  **options) -> Callable[[Callable], PlatformTask]:
    """Declare a task with its default worker type, priority, retry policy and time limits.

    ``retry_for`` lists the exceptions that are retried (with back-off); any other exception
    fails the task at once. ``submittable=True`` puts it on the allow-list the API runs by name.
    """
    def decorate(fun: Callable) -> PlatformTask:
        return shared_task(
            base=PlatformTask, name=name, bind=options.pop("bind", False),
            worker_type=WorkerType.parse(worker_type), default_priority=Priority.parse(priority),
            submittable=submittable, description=(fun.__doc__ or "").strip().split("\n")[0],
            max_retries=max_retries, autoretry_for=tuple(retry_for),
            soft_time_limit=soft_time_limit, time_limit=time_limit, **options,
        )(fun)

    return decorate

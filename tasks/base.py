"""PlatformTask: the base class every VokaFlow task runs through, and its declaring decorator."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

from celery import Task, shared_task, states
from celery.exceptions import Ignore, SoftTimeLimitExceeded, TimeLimitExceeded
from django.conf import settings

from tasks.cancellation import TaskCancelled
from vokaflow import hotpath
from vokaflow.core import keys
from vokaflow.core.priorities import DEFAULT_PRIORITY, Priority
from vokaflow.core.workers import DEFAULT_WORKER_TYPE, WorkerType

logger = logging.getLogger(__name__)

SOFT_FRACTION = 0.9  # soft time limit of a task that declares only a hard one, as a fraction of it



class PoisonTask(Exception):
    """The task's message was delivered again and again because running it kills its worker."""


class PlatformTask(Task):
    """A Celery task that knows its routing defaults and its retry policy.

    Attributes set by :func:`platform_task`: ``worker_type``, ``default_priority`` and
    ``submittable`` (may be run by name through the API). Retries use Celery's
    ``autoretry_for`` with exponential back-off (1 s, 2 s, 4 s, … capped at 10 min) plus up to
    25 % jitter. A task that fails for good, hits its hard time limit, or kills its worker
    VOKAFLOW_POISON_DELIVERIES times is recorded as a DeadLetter (tasks.dlq).
    ``track_started`` records the STARTED state (one Redis write per task; tasks that finish
    in microseconds skip it).
    """

    abstract = True
    worker_type: WorkerType = DEFAULT_WORKER_TYPE
    default_priority: Priority = DEFAULT_PRIORITY
    submittable: bool = False
    description: str = ""
    argument_bounds: dict[str, tuple[float, float]] = {}  # argument name → (min, max), checked at submission
    acks_late = True
    reject_on_worker_lost = True
    retry_backoff = 1
    retry_backoff_max = 600
    retry_jitter = False  # our own, in retry()
    dont_autoretry_for = (TaskCancelled,)  # a stop that was asked for is not a failure to retry
    track_started = True
    vokaflow_limits: list[str] = []  # names of the fleet-wide limits its runs take places in (tasks.limits)
    Request = hotpath.REQUEST  # measures each run for the batch size of its type; takes handed-back results

    def retry(self, *args, countdown=None, **kwargs):
        # Back-off with a jitter of up to +25 %: spreads a burst of retries, yet each delay stays
        # longer than the one before (Celery's full jitter can pick any delay down to zero).
        if countdown:
            countdown *= random.uniform(1.0, 1.25)
        return super().retry(*args, countdown=countdown, **kwargs)

    def before_start(self, task_id, args, kwargs):
        # Only a redelivered message costs a Redis call: kombu marks those it puts back.
        if getattr(self.request, "redelivered", False):
            self._stop_poison(task_id)

    def _stop_poison(self, task_id: str) -> None:
        """Dead-letter a task whose deliveries crashed VOKAFLOW_POISON_DELIVERIES workers,
        instead of letting it loop forever through redeliveries."""
        from django.conf import settings

        from vokaflow.redis import get_redis

        key = keys.task_key(keys.REDELIVERIES, task_id)
        with get_redis().pipeline() as pipe:
            pipe.incr(key)
            pipe.expire(key, settings.VOKAFLOW_RESULT_TTL)  # forgotten with the task's result
            redeliveries, _ = pipe.execute()
        limit = settings.VOKAFLOW_POISON_DELIVERIES
        if redeliveries + 1 <= limit:
            return
        exc = PoisonTask(f"delivered {redeliveries + 1} times; the first {limit} deliveries ended with the worker "
                         "process gone (killed, crashed or out of memory)")
        self.backend.mark_as_failure(task_id, exc, request=self.request)
        self._dead_letter(exc, task_id, self.request.args, self.request.kwargs, "", reason="poison")
        raise Ignore()

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        if isinstance(exc, TimeLimitExceeded):
            reason = "time_limit"
            if self.request.id != task_id:  # reported in the pool's parent: task_postrun never ran
                from tasks.counters import counters

                counters.add(self._queue_of(task_id), "failed")
        elif isinstance(exc, SoftTimeLimitExceeded):
            reason = "time_limit"
        elif self.autoretry_for and isinstance(exc, tuple(self.autoretry_for)):
            reason = "retries_exhausted"
        else:
            reason = "not_retried"
        self._dead_letter(exc, task_id, args, kwargs, einfo.traceback if einfo else "", reason=reason)

    def on_success(self, retval, task_id, args, kwargs):
        retried_from = getattr(self.request, "vokaflow_retried_from", None)
        if retried_from:
            from tasks.dlq import dead_letter_resolve

            dead_letter_resolve(retried_from=retried_from)

    def _queue_of(self, task_id: str, record=None) -> str | None:
        """The queue the task came from: its message, or else its submission record."""
        if self.request.id == task_id:
            queue = (self.request.delivery_info or {}).get("routing_key")
            if queue:
                return queue
        from tasks.records import task_record

        record = record or task_record(task_id)
        return record.queue if record else None

    def _dead_letter(self, exc, task_id, args, kwargs, traceback, *, reason: str) -> None:
        from tasks.dlq import dead_letter_record
        from tasks.records import task_record

        # A hard time limit is reported in the pool's parent, where self.request is not this task.
        request = self.request if self.request.id == task_id else None
        record = task_record(task_id)
        queue = self._queue_of(task_id, record)
        if request:
            retries = request.retries or 0
        else:
            retries = self.backend.get_task_meta(task_id).get("retries") or 0
        try:
            dead_letter_record(
                task_id=task_id, task_name=self.name, args=args, kwargs=kwargs, queue=queue, reason=reason,
                exception_type=type(exc).__name__, error=f"{type(exc).__name__}: {exc}", traceback=traceback,
                total_retries=retries, worker=(request.hostname if request else "") or "",
                retried_from=getattr(request, "vokaflow_retried_from", "") if request else "",
                first_submitted_at=record.submitted_at if record else None, owner=record.owner if record else None,
                schedule=getattr(request, "vokaflow_schedule", None) if request else None)
        except Exception:
            # Database and Redis both failed: the log is the last place the record can go.
            logger.exception("could not record dead letter %s (%s) args=%r kwargs=%r", task_id, self.name,
                             args, kwargs)

    def __call__(self, *args, **kwargs):
        spec = getattr(self.request, "vokaflow_lock", None)
        if self.request.is_eager:
            return super().__call__(*args, **kwargs)
        try:
            if self.vokaflow_limits:
                return self._call_within_limits(spec, args, kwargs)
            if not spec:
                return super().__call__(*args, **kwargs)
            return self._call_under_lock(spec, args, kwargs)
        except TaskCancelled as exc:
            # Stopped on request (tasks.cancellation): REVOKED, not a failure; no dead letter, no retry.
            self.backend.mark_as_revoked(self.request.id, reason=f"stopped: {exc}", request=self.request)
            raise Ignore() from None

    def _call_within_limits(self, spec: dict | None, args, kwargs):
        """Run once every limit of the task has a place for it (tasks.limits); otherwise the task
        waits in a limit's waiting room, its slot free, and comes back when the limit lets it out."""
        from tasks import limits
        from tasks.submit import running_message
        from vokaflow.redis import get_redis

        r = get_redis()
        request = self.request
        instances = limits.instances_for(self, args, kwargs)
        taken: list[limits.Instance] = []
        message = running_message(self)[1] if instances else ""
        for instance in instances:
            try:
                why = limits.try_start(r, instance, request.id, message, limits.priority_of(request),
                                       float(getattr(request, "vokaflow_enqueued_at", None) or time.time()))
            except Exception:
                for earlier in taken:  # best effort: their leases run out otherwise
                    limits.give_back(r, earlier, request.id)
                raise
            if why is not None:
                for earlier in taken:
                    limits.give_back(r, earlier, request.id)
                r.set(keys.task_key(keys.HELD, request.id), f"{instance.limit.name} ({why})",
                      ex=settings.VOKAFLOW_RESULT_TTL)
                self.update_state(state=states.PENDING, meta=None)  # waiting, not started
                raise Ignore()
            taken.append(instance)
        if taken:
            r.delete(keys.task_key(keys.HELD, request.id))
        try:
            return self._call_under_lock(spec, args, kwargs) if spec else super().__call__(*args, **kwargs)
        finally:
            for instance in taken:
                try:
                    limits.give_back(r, instance, request.id)
                    limits.let_out_now(r, instance)
                except Exception as exc:  # the lease runs out by itself
                    logger.warning("could not give back %s's place in limit %s: %s", request.id,
                                   instance.limit.name, exc)

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
                  bounds: dict[str, tuple[float, float]] | None = None,
                  **options) -> Callable[[Callable], PlatformTask]:
    """Declare a task with its default worker type, priority, retry policy and time limits.

    ``retry_for`` lists the exceptions that are retried (with back-off); any other exception
    fails the task at once. ``submittable=True`` puts it on the allow-list the API runs by name.
    ``bounds={"seconds": (0, 60)}`` makes a submission whose numeric argument is outside its
    range a 400 naming it (tasks.arguments). Without time limits the worker type's defaults apply.
    """
    if time_limit and not soft_time_limit:
        # Otherwise the worker type's default soft limit would apply, and a soft limit later than
        # the hard one postpones the hard one in Celery's prefork pool.
        soft_time_limit = time_limit * SOFT_FRACTION

    from tasks.limits import with_task_limits

    # Fleet-wide limits, not Celery's per-worker rate_limit (which holds the task in the worker).
    limit_names, _ = with_task_limits(name, options)

    def decorate(fun: Callable) -> PlatformTask:
        return shared_task(
            vokaflow_limits=limit_names,
            base=PlatformTask, name=name, bind=options.pop("bind", False),
            worker_type=WorkerType.parse(worker_type), default_priority=Priority.parse(priority),
            submittable=submittable, description=(fun.__doc__ or "").strip().split("\n")[0],
            max_retries=max_retries, autoretry_for=tuple(retry_for),
            soft_time_limit=soft_time_limit, time_limit=time_limit, argument_bounds=dict(bounds or {}), **options,
        )(fun)

    return decorate

"""Time limits in the worker: defaults per worker type, and a watchdog for thread pools.

The defaults (tasks.time_limits.default_limits) become the worker's own `time_limit` and
`soft_time_limit`, which Celery's pool step reads when it creates the pool (the prefork pool
enforces them; every bootstep's __init__ runs before any pool is created).

Celery's thread and solo pools ignore time limits. Here a thread looks at the running requests
four times a second: one over its soft limit is told to stop (tasks.cancellation), one over its
hard limit is listed in the heartbeat's `stuck` slots until it ends. Uses Celery's
`worker.state.active_requests` and each Request's `time_start`, `time_limits` and `task`
(private API, checked in tests/test_contracts.py).
"""

from __future__ import annotations

import logging
import threading
import time

from tasks.cancellation import TIME_LIMIT, request_cancel
from tasks.time_limits import default_limits, effective_limits
from vokaflow.core.workers import WorkerType
from workers.polling import PollingStep

logger = logging.getLogger(__name__)

INTERVAL = 0.25  # seconds between looks: a limit is acted on at most this late


class TimeLimits(PollingStep):
    """Default limits for the worker's type; on thread pools, the watchdog."""

    thread_name = "vokaflow-time-limits"

    def __init__(self, worker, vokaflow_type=None, **kwargs):
        super().__init__(worker, **kwargs)
        self.worker = worker
        try:
            short = WorkerType.parse(vokaflow_type).short if vokaflow_type else None
        except ValueError:
            short = None  # ConsumeWorkerTypeQueues reports the bad type
        soft, hard = default_limits(short)
        if worker.soft_time_limit is None and worker.time_limit is None:  # --time-limit given: it wins
            worker.soft_time_limit, worker.time_limit = soft, hard
        self.told: set[str] = set()
        self.stuck: dict[str, dict] = {}
        self._stuck_lock = threading.Lock()  # the heartbeat thread reads `stuck`
        worker.vokaflow_time_limits = self

    def wanted(self, worker) -> bool:
        pool = worker.pool_cls if isinstance(worker.pool_cls, str) else worker.pool_cls.__module__
        return "prefork" not in pool  # billiard enforces limits itself

    def interval(self) -> float:
        return INTERVAL

    def tick(self) -> None:
        self.check(time.time())

    def check(self, now: float) -> None:
        from celery.worker import state


        running = {r.id: r for r in _snapshot(state.active_requests) if r.time_start}
        with self._stuck_lock:
            for task_id in [t for t in self.stuck if t not in running]:
                del self.stuck[task_id]
        self.told &= running.keys()
        for task_id, request in running.items():
            soft, hard = self.limits(request)
            elapsed = now - request.time_start
            if soft and elapsed >= soft and task_id not in self.told:
                request_cancel(task_id, ttl=max((hard or soft) - soft, 0) + 60, reason=TIME_LIMIT)
                self.told.add(task_id)
                logger.warning("task %s[%s] ran past its soft time limit of %s s and was told to stop",
                               request.name, task_id, soft)
            if hard and elapsed >= hard and task_id not in self.stuck:
                with self._stuck_lock:
                    self.stuck[task_id] = {"task_id": task_id, "task": request.name,
                                           "started_at": request.time_start, "time_limit": hard}
                logger.error("task %s[%s] is still running past its hard time limit of %s s; its slot is stuck",
                             request.name, task_id, hard)

    def limits(self, request) -> tuple[float | None, float | None]:
        hard, soft = request.time_limits or (None, None)
        task = request.task
        declared = (soft or getattr(task, "soft_time_limit", None), hard or getattr(task, "time_limit", None))
        return effective_limits(declared, (self.worker.soft_time_limit, self.worker.time_limit))

    def stuck_slots(self) -> list[dict]:
        with self._stuck_lock:
            return list(self.stuck.values())


def _snapshot(requests) -> list:
    """A copy of a set the pool's threads change while we read it."""
    for _ in range(10):
        try:
            return list(requests)
        except RuntimeError:  # changed size during iteration
            continue
    return []

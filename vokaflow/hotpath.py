"""The worker side of one Redis round trip per task: buffered results, measured durations.

* A SUCCESS result of an acks-late task run in the consuming process (solo and threads pools)
  is not written when the task returns: it waits in `pending_results` and the next fetch
  script of vokaflow.transport writes it, before the acknowledgements that script carries
  (acknowledged ⇒ result stored). Every other store (other states, prefork children, the API)
  is one script: write unless a final state is stored (vokaflow.result_store), in one round
  trip instead of Celery's GET then MULTI/SETEX/PUBLISH/EXEC.
* `durations` keeps an EWMA of each task type's run time, measured by the consuming process
  (`Request.acknowledge`); the fetch script takes at most as many messages of a type as fit
  into VOKAFLOW_PREFETCH_WAIT_MS (between 1 and MAX_BATCH).

Private Celery API relied on (checked by tests/test_contracts.py): `Request.acknowledge` and
`Request.time_start` (wall-clock start, set in `on_accepted`), the backend's `_store_result`
signature and `_get_result_meta`.
"""

from __future__ import annotations

import os
from collections import deque
from time import time

from celery.worker.request import Request as CeleryRequest
from typing_extensions import override

MAX_BATCH = 8
# A batch is paid for in units of BUDGET: a type of cap k (1..MAX_BATCH) costs BUDGET // k per
# message, so a fetch takes at most k messages of that type, and mixed types share the bound.
BUDGET = 840  # divisible by 1..8
EWMA_WEIGHT = 0.3

# (key, encoded meta, ttl seconds) of results waiting for the next fetch of this process.
pending_results: deque[tuple[str, bytes | str, int]] = deque()
_consumer_pid: int | None = None


def consume_here() -> None:
    """Called by the consuming channel before each fetch: results of this process may wait."""
    global _consumer_pid
    _consumer_pid = os.getpid()


def can_buffer(app, request) -> bool:
    """Whether a SUCCESS result may wait for the next fetch: run by this process's consumer,
    acknowledged after it (acks late, so the ack follows it into the same or a later script),
    and no chord waiting on it."""
    if _consumer_pid != os.getpid() or request is None or getattr(request, "is_eager", False):
        return False
    if not getattr(request, "delivery_info", None) or getattr(request, "chord", None):
        return False
    task = app.tasks.get(getattr(request, "task", None))
    return bool(task is not None and task.acks_late)


class TaskDurations:
    """EWMA of each task type's run time, and the batch cap it allows under the bound."""

    def __init__(self, bound: float = 0.02):
        self.bound = bound
        self.ewma: dict[str, float] = {}
        self.caps: dict[str, int] = {}  # only types allowed more than one per fetch
        self.version = 0

    def observe(self, name: str, seconds: float) -> None:
        old = self.ewma.get(name)
        value = seconds if old is None else old + EWMA_WEIGHT * (seconds - old)
        self.ewma[name] = value
        cap = self.cap_for(value)
        if self.caps.get(name, 1) != cap:
            if cap > 1:
                self.caps[name] = cap
            else:
                self.caps.pop(name, None)
            self.version += 1

    def cap_for(self, seconds: float) -> int:
        """k = clamp(bound / duration, 1, MAX_BATCH)."""
        if self.bound <= 0:
            return 1
        if seconds <= 0:
            return MAX_BATCH
        return max(1, min(MAX_BATCH, int(self.bound / seconds)))


durations = TaskDurations()


class Request(CeleryRequest):
    """Celery's Request, measuring each task's run time when it is acknowledged."""

    @override
    def acknowledge(self):
        if not self.acknowledged and self.time_start and self.task.acks_late:  # early acks: at start
            durations.observe(self.name, time() - self.time_start)
        super().acknowledge()

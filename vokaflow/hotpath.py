"""The worker side of one Redis round trip per task: buffered results, measured durations.

* A SUCCESS result of an acks-late task is not written when the task returns: it waits in the
  consuming process's `pending_results` and the next fetch script of vokaflow.transport writes
  it, before the acknowledgements that script carries (acknowledged ⇒ result stored). Solo and
  threads pools run tasks in the consuming process; a prefork child hands the result back to
  it with the task's outcome (`Handed`, through the pool's own result pipe), so the child
  spends no round trip on it. Every other store (other states, chords, the API) is one script:
  write unless a final state is stored (vokaflow.result_store), in one round trip instead of
  Celery's GET then MULTI/SETEX/PUBLISH/EXEC.
* `fetched_wait` keeps how long the first task of the last fetch had been ready to run (0 after a
  fetch that found nothing): the autoscaler's signal (vokaflow.core.autoscale), read off messages
  the fetch delivers anyway, so it costs no scan of the queues.
* `durations` keeps an EWMA of each task type's run time, measured by the consuming process
  (`Request.acknowledge`); the fetch script takes at most as many messages of a type as fit
  into VOKAFLOW_PREFETCH_WAIT_MS (between 1 and MAX_BATCH).

Private Celery API relied on (checked by tests/test_contracts.py): `Request.acknowledge` and
`Request.time_start` (wall-clock start, set in `on_accepted`), the backend's `_store_result`
signature and `_get_result_meta`; for prefork, a task's `__trace__` returning
(retval, info, runtime, retstr) with retstr sent to the parent as the success value, and the
per-task Request subclass Celery derives from ours (`create_request_cls`) defining
`on_success((failed, retval, runtime))`.
"""

from __future__ import annotations

import functools
import os
from collections import deque
from time import monotonic, time
from typing import NamedTuple

import billiard
from celery.worker.request import Request as CeleryRequest
from typing_extensions import override

from vokaflow.core.autoscale import ready_age

MAX_BATCH = 8
# A batch is paid for in units of BUDGET: a type of cap k (1..MAX_BATCH) costs BUDGET // k per
# message, so a fetch takes at most k messages of that type, and mixed types share the bound.
BUDGET = 840  # divisible by 1..8
EWMA_WEIGHT = 0.3

REQUEST = "vokaflow.hotpath:Request"  # PlatformTask.Request: the parent side of a handed result

Stored = tuple[str, bytes | str, int]  # (key, encoded meta, ttl seconds)
# Results waiting for the next fetch of this (consuming) process.
pending_results: deque[Stored] = deque()
# (pending quota key, task id) of tasks that finished in the consuming process: their owners'
# places are freed by the next fetch script, before the acknowledgements it carries, so a worker
# killed after an acknowledgement never leaves a place taken (tasks.quota).
pending_releases: deque[tuple[str, str]] = deque()
_consumer_pid: int | None = None
_in_pool_child = False
_handed: dict[str, Stored] = {}  # in a prefork child: task id → its SUCCESS, until the tracer returns


class Handed(NamedTuple):
    """What a prefork child returns in place of Celery's repr of a successful task's value: that
    repr and the result for the parent to write with its next fetch."""

    text: str
    stored: Stored


def consume_here() -> None:
    """Called by the consuming channel before each fetch: results of this process may wait."""
    global _consumer_pid
    _consumer_pid = os.getpid()


def release_with_fetch(pending_key: str, task_id: str) -> bool:
    """Queue a quota place to free with the next fetch; False outside the consuming process
    (a prefork child, the API), where the caller frees it at once."""
    if _consumer_pid != os.getpid():
        return False
    pending_releases.append((pending_key, task_id))
    return True


def can_buffer(app, request) -> bool:
    """Whether a SUCCESS result may wait for the next fetch: run by this process's consumer or by
    a prefork child of it whose tracer hands it back and whose parent's Request is ours (to take
    it), acknowledged after it (acks late, so the ack follows it into the same or a later
    script), and no chord waiting on it."""
    here = _consumer_pid == os.getpid()
    if not (here or _in_pool_child) or request is None or getattr(request, "is_eager", False):
        return False
    if not getattr(request, "delivery_info", None) or getattr(request, "chord", None):
        return False
    task = app.tasks.get(getattr(request, "task", None))
    if task is None or not task.acks_late:
        return False
    if here:
        return True
    return getattr(task.__trace__, "hands_back", False) and getattr(task, "Request", None) == REQUEST


def hold(task_id: str, stored: Stored) -> None:
    """Keep a SUCCESS result for the next fetch (can_buffer said it may wait)."""
    if _consumer_pid == os.getpid():
        pending_results.append(stored)
    else:
        _handed[task_id] = stored


def hand_results_back(app, store) -> None:
    """In a prefork child (worker_process_init): every task's tracer returns its held SUCCESS
    result with the outcome instead of writing it; `store(stored)` writes one the parent will
    not take (the task failed after all)."""
    global _in_pool_child
    if billiard.current_process().name == "MainProcess":
        raise RuntimeError("results are handed back only from a prefork pool's child process")
    _in_pool_child = True
    for task in app.tasks.values():
        if task.__trace__ is not None:
            task.__trace__ = _handing_back(task.__trace__, store)


def _handing_back(tracer, store):
    @functools.wraps(tracer)
    def trace(uuid, args, kwargs, request=None):
        out = tracer(uuid, args, kwargs, request)
        stored = _handed.pop(uuid, None)
        if stored is None:
            return out
        if out.info is not None:  # failed after the SUCCESS was held: written as the tracer would have
            store(stored)
            return out
        return out._replace(retstr=Handed(out.retstr, stored))
    trace.hands_back = True
    return trace


def _taking_handed(on_success):
    @functools.wraps(on_success)
    def taking(self, failed__retval__runtime, **kwargs):
        failed, retval, runtime = failed__retval__runtime
        if not failed and isinstance(retval, Handed):
            pending_results.append(retval.stored)  # before on_success acknowledges
            failed__retval__runtime = (failed, retval.text, runtime)
        return on_success(self, failed__retval__runtime, **kwargs)
    return taking


class FetchedWait:
    """The age (ready to run) of the task the last fetch of this process took first, growing with
    the clock until the next fetch (vokaflow.core.autoscale says why); 0 after a fetch that found
    nothing."""

    def __init__(self):
        self._age = 0.0
        self.at = 0.0  # monotonic time of the last fetch; 0: none yet
        self._found = False

    def took(self, headers: dict) -> None:
        age = ready_age(headers, time())
        if age is not None:
            self._age, self.at, self._found = age, monotonic(), True

    def found_none(self) -> None:
        self._age, self.at, self._found = 0.0, monotonic(), False

    @property
    def seconds(self) -> float:
        return self._age + (monotonic() - self.at) if self._found else 0.0


fetched_wait = FetchedWait()


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
    """Celery's Request, measuring each task's run time when it is acknowledged, and taking the
    results prefork children hand back."""

    def __init_subclass__(cls, **kwargs):
        # Celery derives a class per task type from this one (create_request_cls) and defines its
        # pool callback on_success there, without calling ours: wrap it where it is defined.
        super().__init_subclass__(**kwargs)
        if "on_success" in cls.__dict__:
            cls.on_success = _taking_handed(cls.__dict__["on_success"])

    @override
    def acknowledge(self):
        if not self.acknowledged and self.time_start and self.task.acks_late:  # early acks: at start
            durations.observe(self.name, time() - self.time_start)
        super().acknowledge()

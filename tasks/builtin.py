"""Built-in submittable tasks for demos, tests and benchmarks."""

import random
import time

from tasks import cancellation
from tasks.base import platform_task
from vokaflow.core.priorities import Priority
from vokaflow.core.workers import WorkerType

MAX_SLEEP_SECONDS = 60  # two sleep(90) once held a whole IO pool while an EMERGENCY task waited
MAX_CPU_N = 10**7  # about a second of CPU


class TaskFailed(Exception):
    """Raised by vokaflow.fail: a permanent failure that is never retried."""


class TransientFailure(Exception):
    """Raised by vokaflow.flaky: a failure worth retrying."""


@platform_task("vokaflow.noop", submittable=True, max_retries=0, track_started=False)
def noop():
    """Does nothing; measures the platform's own overhead."""


@platform_task("vokaflow.echo", submittable=True, max_retries=0, track_started=False)
def echo(*args, **kwargs):
    """Returns its arguments."""
    return {"args": list(args), "kwargs": kwargs}


@platform_task("vokaflow.sleep", worker_type=WorkerType.IO_INTENSIVE, submittable=True, max_retries=0,
               bounds={"seconds": (0, MAX_SLEEP_SECONDS)})
def sleep(seconds: float = 1.0):
    """Sleeps for `seconds` (a stand-in for waiting on I/O); returns when it ran (epoch seconds).
    Stops early when asked to (DELETE tasks/{id}/) or at its soft time limit."""
    started_at = time.time()
    cancellation.sleep(float(seconds))
    return {"slept": seconds, "started_at": started_at, "finished_at": time.time()}


@platform_task("vokaflow.cpu", worker_type=WorkerType.CPU_INTENSIVE, submittable=True, max_retries=0,
               bounds={"n": (0, MAX_CPU_N)})
def cpu(n: int = 100_000):
    """Sums the squares below n in pure Python (real CPU work)."""
    return sum(i * i for i in range(int(n)))


@platform_task("vokaflow.fail", submittable=True, max_retries=0)
def fail(message: str = "failed on purpose"):
    """Always raises; not retried."""
    raise TaskFailed(message)


@platform_task("vokaflow.flaky", bind=True, submittable=True, max_retries=3,
               retry_for=(TransientFailure,), priority=Priority.NORMAL, bounds={"failure_rate": (0, 1)})
def flaky(self, failure_rate: float = 0.5, seed: int | None = None):
    """Fails with probability failure_rate (retried with back-off); seed makes it repeatable."""
    rng = random.Random(f"{seed}:{self.request.retries}") if seed is not None else random
    if rng.random() < float(failure_rate):
        raise TransientFailure(f"flaky failure on attempt {self.request.retries + 1}")
    return self.request.retries


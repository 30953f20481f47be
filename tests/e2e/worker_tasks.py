"""Tasks only the test suite uses; workers load them with `celery worker --include`."""

import os
import time

from celery.exceptions import SoftTimeLimitExceeded

from tasks.base import platform_task
from tasks.cancellation import check_cancelled
from vokaflow.core.workers import WorkerType
from vokaflow.redis import get_redis


@platform_task("tests.crash", worker_type=WorkerType.CPU_INTENSIVE, max_retries=0)
def crash(counter_key: str):
    """Counts its run, then ends its worker process at once: a poison task."""
    get_redis().incr(counter_key)
    os._exit(1)


@platform_task("tests.hang", worker_type=WorkerType.CPU_INTENSIVE, max_retries=0, time_limit=1)
def hang(seconds: float = 30):
    """Runs past its hard time limit of 1 s: it ignores the soft one (and any request to stop)."""
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            time.sleep(remaining)
        except SoftTimeLimitExceeded:
            pass


@platform_task("tests.fail_once", max_retries=0)
def fail_once(key: str):
    """Fails the first time it runs for `key`, succeeds after."""
    if get_redis().incr(f"vokaflow:test:{key}") == 1:
        raise RuntimeError(f"first run for {key} fails")
    return "ok"


@platform_task("tests.record", bind=True, max_retries=0, track_started=False)
def record(self, seconds: float = 0.01):
    """An idempotent task that records its id (a set: running it twice counts once)."""
    time.sleep(seconds)
    get_redis().sadd("vokaflow:test:seen", self.request.id)


@platform_task("tests.sleep_then_mark", worker_type=WorkerType.CPU_INTENSIVE, max_retries=0)
def sleep_then_mark(seconds: float, key: str):
    """Waits without ever checking for a stop (like CPU-bound code), then records that it finished."""
    time.sleep(seconds)
    get_redis().set(f"vokaflow:test:{key}", "finished")
    return "finished"


@platform_task("tests.stoppable_retrying", worker_type=WorkerType.IO_INTENSIVE, max_retries=3,
               retry_for=(Exception,))
def stoppable_retrying(seconds: float):
    """Checks for a stop in a loop; retries every exception but a stop."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        check_cancelled()
        time.sleep(0.01)
    return "finished"


@platform_task("tests.stamp", max_retries=0, track_started=False)
def stamp(key: str):
    """Appends when it ran to a list: how many times, and when, a task ran."""
    get_redis().rpush(f"vokaflow:test:{key}", time.time())


@platform_task("tests.quiet", ignore_result=True, max_retries=0, track_started=False)
def quiet(key: str):
    """Ignores its result: counts its run and stores nothing in the result backend."""
    get_redis().incr(f"vokaflow:test:{key}")


@platform_task("tests.measure", max_retries=0, track_started=False)
def measure(text: str):
    """The length of its argument and its first and last characters: a large task's small result."""
    return [len(text), text[:1], text[-1:]]


@platform_task("tests.sleep_then_measure", max_retries=0)
def sleep_then_measure(seconds: float, text: str):
    """Sleeps (STARTED is recorded), then answers as tests.measure."""
    time.sleep(seconds)
    return [len(text), text[:1], text[-1:]]


# Limited tasks (tasks.limits): each appends "<task id> <start> <end> <key>" to a list the test reads.
LIMIT_LOG = "vokaflow:test:limit-log"


def _log_run(task_id: str, key: str, seconds: float) -> None:
    start = time.time()
    time.sleep(seconds)
    get_redis().rpush(LIMIT_LOG, f"{task_id} {start} {time.time()} {key}")


@platform_task("tests.rated", bind=True, max_retries=0, rate_limit="20/s", track_started=False)
def rated(self, n: int = 0):
    _log_run(self.request.id, "", 0)


@platform_task("tests.two_at_once", bind=True, max_retries=0, concurrency=2, track_started=False)
def two_at_once(self, seconds: float = 0.2):
    _log_run(self.request.id, "", seconds)


@platform_task("tests.two_per_customer", bind=True, max_retries=0, concurrency=2, limit_per="customer_id",
               track_started=False)
def two_per_customer(self, customer_id: str, seconds: float = 0.2):
    _log_run(self.request.id, customer_id, seconds)


@platform_task("tests.unlimited", bind=True, max_retries=0, track_started=False)
def unlimited(self):
    _log_run(self.request.id, "unlimited", 0)


LEDGER = "vokaflow:test:ledger"


@platform_task("tests.ledger", bind=True, max_retries=0, track_started=False, ignore_result=True)
def ledger(self, seconds: float = 0.02):
    """Appends "<id> <start> <end>" to a list once it has run (a list: a task run twice shows twice)."""
    start = time.time()
    time.sleep(seconds)
    get_redis().rpush(LEDGER, f"{self.request.id} {start} {time.time()}")

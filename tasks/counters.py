"""Task outcome tallies: counted in process memory, added to Redis once a second.

`counters.add(queue, outcome)` costs a dict update; a small thread per process (prefork children
included) adds the tally to Redis once a second in one pipeline: `vokaflow:stats:<type>:<priority>`
(hash of outcome → count), per-second completion buckets `vokaflow:done:<epoch second>` for the
60-second throughput, and per-minute and per-15-minute buckets
`vokaflow:history:<60|900>:<completed|failed>:<epoch // 60 or 900>` (kept 25 h) for the console's
charts of the last hour and day. No Redis call per task.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter

from vokaflow import hotpath
from vokaflow.core import keys
from vokaflow.core.queues import parse_queue

logger = logging.getLogger(__name__)

OUTCOMES = ("completed", "failed", "retried", "dead_lettered")
DONE_BUCKET_TTL = 120  # seconds a per-second completion bucket is kept (the window is 60 s)
HISTORY_BUCKETS = (60, 900)  # the hour's chart has minutes, the day's quarter-hours (96 keys, not 1,440)
HISTORY_TTL = 25 * 3600  # the console charts the last 24 h


class TaskCounters:
    """Per-process tally of task outcomes by queue, flushed to Redis by a background thread."""

    def __init__(self, interval: float = 1.0):
        self.interval = interval
        self._lock = threading.Lock()
        self._counts: Counter = Counter()
        self._finished: list[tuple[int, str]] = []  # (owner, task id): places to free in tasks.quota
        self._owner_pid: int | None = None
        # A prefork child forked while the flusher thread held the lock would inherit it held, and
        # its first count (a dead letter's) would wait for ever: the child starts with its own.
        os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._counts, self._finished = Counter(), []  # the parent's, which the parent flushes

    def add(self, queue: str | None, outcome: str) -> None:
        with self._lock:
            self._counts[(queue or "", outcome)] += 1
        if self._owner_pid != os.getpid():  # first count in this process (or after a fork)
            self._start_flusher()

    def finished(self, owner: int, task_id: str) -> None:
        """Free a finished task's place in its owner's pending quota no later than its
        acknowledgement: with the consuming process's next fetch script (vokaflow.hotpath), or
        at once (a prefork child, the API). A place freed by a later flush would stay taken for
        good when the worker is killed after acknowledging the task."""
        key = keys.PENDING.format(owner)
        if hotpath.release_with_fetch(key, task_id):
            return
        from vokaflow.redis import get_redis

        try:
            get_redis().zrem(key, task_id)
        except Exception as exc:  # Redis away: the background flush tries again
            logger.warning("could not free a quota place now: %s", exc)
            with self._lock:
                self._finished.append((owner, task_id))
            if self._owner_pid != os.getpid():
                self._start_flusher()

    def _start_flusher(self) -> None:
        with self._lock:
            if self._owner_pid == os.getpid():
                return
            self._owner_pid = os.getpid()
        threading.Thread(target=self._run, name="vokaflow-counters", daemon=True).start()

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            self.flush()

    def flush(self) -> None:
        with self._lock:
            counts, self._counts = self._counts, Counter()
            finished, self._finished = self._finished, []
        if not counts and not finished:
            return
        from vokaflow.redis import get_redis

        per_outcome: Counter = Counter()
        second = int(time.time())
        try:
            with get_redis().pipeline(transaction=False) as pipe:
                for (queue, outcome), n in counts.items():
                    route = parse_queue(queue)
                    key = keys.STATS.format(route.worker_type.value if route else "OTHER",
                                            route.priority.name if route else "NONE")
                    pipe.hincrby(key, outcome, n)
                    per_outcome[outcome] += n
                done = per_outcome["completed"] + per_outcome["failed"]
                if done:
                    pipe.incrby(keys.DONE.format(second), done)
                    pipe.expire(keys.DONE.format(second), DONE_BUCKET_TTL)
                for outcome in ("completed", "failed"):
                    for bucket in HISTORY_BUCKETS if per_outcome[outcome] else ():
                        key = keys.HISTORY.format(bucket, outcome, second // bucket)
                        pipe.incrby(key, per_outcome[outcome])
                        pipe.expire(key, HISTORY_TTL)
                for owner, task_id in finished:
                    pipe.zrem(keys.PENDING.format(owner), task_id)
                pipe.execute()
        except Exception as exc:  # Redis away: keep the counts for the next flush
            logger.warning("could not write task counters: %s", exc)
            with self._lock:
                self._counts.update(counts)
                self._finished.extend(finished)


counters = TaskCounters()

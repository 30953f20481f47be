"""Worker presence and task counters, written to Redis off the hot path.

* Heartbeat: a worker bootstep writes `vokaflow:worker:<name>` (JSON, with a TTL) every
  VOKAFLOW_HEARTBEAT_SECONDS and keeps `vokaflow:workers` (name → last seen). A worker that
  stops writing disappears from the fleet when its key expires.
* Counters: `task_postrun` adds each outcome to an in-process tally; a small thread per
  process (prefork children included) adds the tally to Redis once a second in one pipeline:
  `vokaflow:stats:<type>:<priority>` (hash of outcome → count) and per-second completion
  buckets `vokaflow:done:<epoch second>` for the 60-second throughput, and per-minute and
  per-15-minute buckets `vokaflow:history:<60|900>:<completed|failed>:<epoch // 60 or 900>`
  (kept 25 h) for the console's charts of the last hour and day.
  No Redis call per task.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections import Counter

from celery import bootsteps

from tasks.routing import parse_queue

logger = logging.getLogger(__name__)

WORKER_KEY = "vokaflow:worker:{}"
WORKERS_KEY = "vokaflow:workers"
STATS_KEY = "vokaflow:stats:{}:{}"
DONE_KEY = "vokaflow:done:{}"
HISTORY_KEY = "vokaflow:history:{}:{}:{}"  # bucket seconds, outcome (completed or failed), epoch // bucket
HISTORY_BUCKETS = (60, 900)  # the hour's chart has minutes, the day's quarter-hours (96 keys, not 1,440)
HISTORY_TTL = 25 * 3600  # the console charts the last 24 h
ACTIVE_LIMIT = 50  # running tasks listed per heartbeat
ARGS_LIMIT = 200  # characters of a running task's arguments in its heartbeat
OUTCOMES = ("completed", "failed", "retried", "dead_lettered")
_POOL_NAMES = {"prefork": "prefork", "thread": "threads", "solo": "solo", "eventlet": "eventlet", "gevent": "gevent"}
_POSTRUN_OUTCOMES = {"SUCCESS": "completed", "FAILURE": "failed", "RETRY": "retried"}


class TaskCounters:
    """Per-process tally of task outcomes by queue, flushed to Redis by a background thread."""

    def __init__(self, interval: float = 1.0):
        self.interval = interval
        self._lock = threading.Lock()
        self._counts: Counter = Counter()
        self._owner_pid: int | None = None

    def add(self, queue: str | None, outcome: str) -> None:
        with self._lock:
            self._counts[(queue or "", outcome)] += 1
        if self._owner_pid != os.getpid():  # first count in this process (or after a fork)
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
        if not counts:
            return
        from vokaflow.redis import get_redis

        per_outcome: Counter = Counter()
        second = int(time.time())
        try:
            with get_redis().pipeline(transaction=False) as pipe:
                for (queue, outcome), n in counts.items():
                    route = parse_queue(queue)
                    key = STATS_KEY.format(route.worker_type.value if route else "OTHER",
                                           route.priority.name if route else "NONE")
                    pipe.hincrby(key, outcome, n)
                    per_outcome[outcome] += n
                done = per_outcome["completed"] + per_outcome["failed"]
                if done:
                    pipe.incrby(DONE_KEY.format(second), done)
                    pipe.expire(DONE_KEY.format(second), 120)
                for outcome in ("completed", "failed"):
                    for bucket in HISTORY_BUCKETS if per_outcome[outcome] else ():
                        key = HISTORY_KEY.format(bucket, outcome, second // bucket)
                        pipe.incrby(key, per_outcome[outcome])
                        pipe.expire(key, HISTORY_TTL)
                pipe.execute()
        except Exception as exc:  # Redis away: keep the counts for the next flush
            logger.warning("could not write task counters: %s", exc)
            with self._lock:
                self._counts.update(counts)


counters = TaskCounters()


def on_task_postrun(sender=None, task=None, state=None, **kwargs) -> None:
    outcome = _POSTRUN_OUTCOMES.get(state)
    if outcome and task is not None and not task.request.is_eager:
        counters.add((task.request.delivery_info or {}).get("routing_key"), outcome)


def on_process_shutdown(**kwargs) -> None:
    counters.flush()  # a recycled prefork child hands in its last second of counts


class Heartbeat(bootsteps.StartStopStep):
    """Writes this worker's presence and load to Redis every few seconds."""

    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        self.worker = worker
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started_at = time.time()

    def start(self, worker):
        self._thread = threading.Thread(target=self._run, name="vokaflow-heartbeat", daemon=True)
        self._thread.start()

    def stop(self, worker):
        self._stop.set()
        if self._thread:
            self._thread.join(5)
        try:
            from vokaflow.redis import get_redis

            with get_redis().pipeline() as pipe:
                pipe.delete(WORKER_KEY.format(worker.hostname)).zrem(WORKERS_KEY, worker.hostname).execute()
        except Exception as exc:
            logger.warning("could not remove the heartbeat of %s: %s", worker.hostname, exc)

    def _run(self):
        from django.conf import settings

        while not self._stop.is_set():
            try:
                self.beat(settings.VOKAFLOW_HEARTBEAT_TTL)
            except Exception as exc:  # the next beat tries again; the key's TTL tells the rest
                logger.warning("heartbeat failed: %s", exc)
            self._stop.wait(settings.VOKAFLOW_HEARTBEAT_SECONDS)

    def beat(self, ttl: float) -> None:
        from celery.worker import state

        from vokaflow.redis import get_redis

        worker = self.worker
        # The queues the worker was started for, paused ones included (vokaflow.celery sets them),
        # so a worker whose every level is paused still shows under its type.
        queues = getattr(worker, "vokaflow_queues", None) or worker.app.amqp.queues.consume_from or {}
        routes = [r for r in map(parse_queue, queues) if r]
        pool = worker.pool_cls if isinstance(worker.pool_cls, str) else worker.pool_cls.__module__
        now = time.time()
        info = {
            "name": worker.hostname, "host": socket.gethostname(), "pid": os.getpid(),
            "worker_types": sorted({r.worker_type.value for r in routes}),
            "partitions": sorted({r.partition for r in routes}),
            "pool": _POOL_NAMES.get(pool.rsplit(".", 1)[-1].split(":")[0], pool), "concurrency": worker.concurrency,
            "busy": len(state.active_requests), "processed": sum(state.total_count.values()),
            "active": running_tasks(state.active_requests),
            "started_at": self.started_at, "last_seen": now,
        }
        from workers.queues import PAUSED_KEY

        with get_redis().pipeline(transaction=False) as pipe:
            pipe.set(WORKER_KEY.format(worker.hostname), json.dumps(info), px=int(ttl * 1000))
            pipe.zadd(WORKERS_KEY, {worker.hostname: now})
            pipe.zremrangebyscore(WORKERS_KEY, "-inf", now - 24 * 3600)  # forget long-gone names
            pipe.smembers(PAUSED_KEY)
            *_, paused = pipe.execute()
        self.follow_paused_levels({level.decode() for level in paused})

    def follow_paused_levels(self, paused: set[str]) -> None:
        """Consume exactly the unpaused queues of this worker's type. workers.queues tells live
        workers at once (remote control); this catches a worker that was starting when a pause
        or resume was broadcast, or missed it (Redis pub/sub keeps nothing for the absent).
        The changes run in the consumer's own loop (Consumer.call_soon, as Celery's
        add_consumer/cancel_consumer commands do; checked by tests/test_contracts.py)."""
        queues = getattr(self.worker, "vokaflow_queues", None)
        consumer = getattr(self.worker, "consumer", None)
        if not queues or consumer is None or getattr(consumer, "task_consumer", None) is None:
            return
        consuming = set(self.worker.app.amqp.queues.consume_from or ())
        for queue in queues:
            route = parse_queue(queue)
            is_paused = f"{route.worker_type.value}:{route.priority.name}" in paused
            if is_paused and queue in consuming:
                consumer.call_soon(consumer.cancel_task_queue, queue)
            elif not is_paused and queue not in consuming:
                consumer.call_soon(consumer.add_task_queue, queue)


def running_tasks(requests) -> list[dict]:
    """What the console's Running page shows of each request a worker is running.
    Reads Celery's Request attributes (id, name, time_start, argsrepr, kwargsrepr, delivery_info;
    checked by tests/test_contracts.py)."""
    running = []
    for request in list(requests)[:ACTIVE_LIMIT]:  # a copy: the pool adds and removes as we read
        arguments = f"{request.argsrepr or ''} {request.kwargsrepr or ''}".strip()
        running.append({
            "id": request.id, "name": request.name, "started_at": request.time_start,
            "queue": (request.delivery_info or {}).get("routing_key"),
            "args": arguments[:ARGS_LIMIT] + ("…" if len(arguments) > ARGS_LIMIT else ""),
        })
    return running

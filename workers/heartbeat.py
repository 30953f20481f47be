"""Worker presence and task outcomes, written to Redis off the hot path.

* Heartbeat: a worker bootstep writes `vokaflow:worker:<name>` (JSON, with a TTL) every
  VOKAFLOW_HEARTBEAT_SECONDS and keeps `vokaflow:workers` (name → last seen). A worker that
  stops writing disappears from the fleet when its key expires.
* Outcomes: `task_postrun` adds each outcome to the process's tally (tasks.counters), which a
  background thread adds to Redis once a second.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

from celery import bootsteps, signals

from tasks.counters import counters
from vokaflow.core import keys
from vokaflow.core.queues import parse_queue
from vokaflow.redis_connect import as_text
from workers.autoscale import heartbeat_report

logger = logging.getLogger(__name__)

ACTIVE_LIMIT = 50  # running tasks listed per heartbeat
ARGS_LIMIT = 200  # characters of a running task's arguments in its heartbeat
_POOL_NAMES = {"prefork": "prefork", "thread": "threads", "solo": "solo", "eventlet": "eventlet", "gevent": "gevent",
               "pools": "threads"}  # workers.pools.ThreadPool: Celery's thread pool, resizable (autoscaling)
_POSTRUN_OUTCOMES = {"SUCCESS": "completed", "FAILURE": "failed", "RETRY": "retried"}


def on_task_postrun(sender=None, task=None, state=None, **kwargs) -> None:
    outcome = _POSTRUN_OUTCOMES.get(state)
    if outcome and task is not None and not task.request.is_eager:
        counters.add((task.request.delivery_info or {}).get("routing_key"), outcome)


def on_process_shutdown(**kwargs) -> None:
    counters.flush()  # a recycled prefork child hands in its last second of counts


class Heartbeat(bootsteps.StartStopStep):
    """Writes this worker's presence and load to Redis every few seconds."""

    requires = ("celery.worker.components:Pool",)

    def include_if(self, worker) -> bool:
        from django.conf import settings

        return settings.VOKAFLOW_FLEET_REPORTING  # off only to measure what it costs

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        self.worker = worker
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self.started_at = time.time()
        # The first beat waits for the worker to consume: a heartbeat means "takes tasks", which
        # is what the fleet views, health and the launcher's ready block rely on.
        signals.worker_ready.connect(self._on_ready, weak=False)

    def _on_ready(self, **kwargs) -> None:
        self._ready.set()

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
                pipe.delete(keys.WORKER.format(worker.hostname))  # not chained: a cluster pipeline returns None
                pipe.zrem(keys.WORKERS, worker.hostname)
                pipe.execute()
        except Exception as exc:
            logger.warning("could not remove the heartbeat of %s: %s", worker.hostname, exc)

    def _run(self):
        from django.conf import settings

        self._ready.wait(60)
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
            # slots whose task runs past its hard time limit (thread pools: workers.watchdog)
            "stuck": limits.stuck_slots() if (limits := getattr(worker, "vokaflow_time_limits", None)) else [],
        }
        scaling = heartbeat_report(worker)
        if scaling is not None:  # slots now and decided, range, last decisions (workers.autoscale)
            info["autoscale"] = scaling
            info["concurrency"] = scaling.get("slots", info["concurrency"])

        with get_redis().pipeline(transaction=False) as pipe:
            pipe.set(keys.WORKER.format(worker.hostname), json.dumps(info), px=int(ttl * 1000))
            pipe.zadd(keys.WORKERS, {worker.hostname: now})
            pipe.zremrangebyscore(keys.WORKERS, "-inf", now - 24 * 3600)  # forget long-gone names
            pipe.smembers(keys.PAUSED)
            *_, paused = pipe.execute()
        self.follow_paused_levels({as_text(level) for level in paused})

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
            if route is None:
                continue
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

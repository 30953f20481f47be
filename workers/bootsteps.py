"""The worker's own bootsteps: which queues it consumes, the signal handlers it runs, the revokes it
must honour from the start. vokaflow.celery adds them to every `celery -A vokaflow worker` by name."""

from __future__ import annotations

import logging

import click
from celery import bootsteps, signals
from celery.app.trace import LOG_RECEIVED, LOG_SUCCESS
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.worker.state import merge_revoked
from django.conf import settings
from django.db import close_old_connections
from redis import RedisError

from tasks.state import revoked_task_ids
from vokaflow import hotpath
from vokaflow.core.queues import parse_partitions, queues_for
from vokaflow.core.workers import WorkerType
from workers.heartbeat import on_process_shutdown, on_task_postrun
from workers.queues import paused_queue_names

logger = logging.getLogger(__name__)


class ConsumeWorkerTypeQueues(bootsteps.Step):
    """Turns `--type` / `--partitions` into the worker's queue list, highest priority first."""

    def __init__(self, worker, vokaflow_type=None, vokaflow_partitions=None, **kwargs):
        super().__init__(worker, **kwargs)
        if vokaflow_type is None:
            if vokaflow_partitions:
                raise click.UsageError("--partitions needs --type")
            return
        try:
            worker_type = WorkerType.parse(vokaflow_type)
            partitions = parse_partitions(vokaflow_partitions, settings.VOKAFLOW_PARTITIONS)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        queues = queues_for(worker_type, settings.VOKAFLOW_PARTITIONS, partitions)
        worker.vokaflow_queues = queues  # every queue of its type, paused or not (the heartbeat reports them)
        worker.setup_queues(queues, exclude=_paused_queues(queues))
        # One line instead of Celery's banner (`--quiet`), which lists every queue.
        logger.info("%s consumes %d %s queues, partitions %s, highest priority first: %s ... %s", worker.hostname,
                    len(queues), worker_type.value, vokaflow_partitions or "all", queues[0], queues[-1])


def _paused_queues(queues: list[str]) -> list[str]:
    """The queues among `queues` whose level an operator paused (workers.queues); none when Redis
    does not answer (the worker starts consuming, and a pause sent later reaches it)."""
    try:
        paused = paused_queue_names()
    except RedisError as exc:
        logger.warning("could not read the paused queues: %s", exc)
        return []
    return [q for q in queues if q in paused]


class WorkerSignals(bootsteps.Step):
    """Connects the per-task handlers in the worker's main process (prefork children inherit them)."""

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        _per_task_lines_at_debug()
        signals.task_postrun.connect(_close_old_db_connections, weak=False)
        if issubclass(worker.pool_cls, PreforkPool):  # the solo pool sends worker_process_init too
            signals.worker_process_init.connect(_fresh_redis_pool_locks, weak=False)
            signals.worker_process_init.connect(_hand_results_back, weak=False)
        if settings.VOKAFLOW_FLEET_REPORTING:
            signals.task_postrun.connect(on_task_postrun, weak=False)
            signals.worker_process_shutdown.connect(on_process_shutdown, weak=False)


def _fresh_redis_pool_locks(**kwargs) -> None:
    """A prefork child is forked from a main process whose threads (heartbeat, pollers) use Redis:
    a connection pool's lock held by one of them at that instant is copied held, and redis-py's
    first use in the child (its pid check resets the pool, taking that lock) waits for ever. Every
    pool the child inherited gets new locks before any task runs (tests/test_contracts.py guards
    the two attributes)."""
    import gc
    import threading

    from redis.connection import ConnectionPool

    for pool in gc.get_objects():
        if isinstance(pool, ConnectionPool):
            pool._lock, pool._fork_lock = threading.RLock(), threading.RLock()


# Celery logs two INFO lines per task (received, succeeded): 140-180 µs of a no-op's ~670 µs
# (measured). Fleet metrics, the console and Flower show the same facts, so a worker keeps them
# only at `-l DEBUG`. A filter drops just these two messages: retries, revoked tasks and failures
# are still logged. The messages are Celery's own constants (tests/test_contracts.py).
PER_TASK_LINES = {"celery.worker.strategy": LOG_RECEIVED, "celery.app.trace": LOG_SUCCESS}


class _DropLine(logging.Filter):
    def __init__(self, message: str):
        super().__init__()
        self.message = message

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg is not self.message


def _per_task_lines_at_debug() -> None:
    for name, message in PER_TASK_LINES.items():
        log = logging.getLogger(name)
        if not log.isEnabledFor(logging.DEBUG):
            log.addFilter(_DropLine(message))


def _hand_results_back(**kwargs) -> None:
    # A prefork child: its SUCCESS results go back to the consuming parent with the task's outcome
    # and ride the parent's next fetch script, instead of a round trip of their own per task.
    from vokaflow.celery import app

    hotpath.hand_results_back(app, app.backend.write_held)


def _close_old_db_connections(**kwargs) -> None:
    # Celery's Django fix-up would close every connection after every task (CELERY_DB_REUSE_MAX
    # turns that off); like Django per request, drop only the broken or expired ones.
    close_old_connections()


class LoadRevoked(bootsteps.Step):
    """Revokes broadcast while this worker was not running still apply to it."""

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        try:
            merge_revoked(revoked_task_ids())
        except RedisError as exc:
            logger.warning("could not load revoked task ids: %s", exc)

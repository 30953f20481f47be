"""The Celery app: reliability settings, and one queue per (worker type, priority, partition).

`celery -A vokaflow worker --type cpu --partitions 0-3` consumes the CPU queues of
partitions 0-3, highest priority first (see tasks.routing.PriorityFairCycle).
"""

import logging
import os

import click
from celery import Celery, bootsteps, signals, states
from celery.app.trace import LOG_RECEIVED, LOG_SUCCESS
from celery.backends.redis import RedisBackend
from celery.exceptions import BackendStoreError
from kombu import Exchange, Queue
from kombu.utils.encoding import bytes_to_str
from typing_extensions import override

from vokaflow import hotpath

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vokaflow.settings")

app = Celery("vokaflow")


class SubmitOnlyRedisBackend(RedisBackend):
    """Redis result backend that does not subscribe to a task's result when it is sent.

    Celery's Redis backend SUBSCRIBEs to every task's result channel as it is published, in
    case the caller waits on it: one extra round trip per task, which breaks pipelined batch
    submission and piles up subscriptions in the API. `AsyncResult.get()` still subscribes
    when someone actually waits (celery.backends.asynchronous.add_pending_result).
    """

    def on_task_call(self, producer, task_id):
        pass

    @override
    def _store_result(self, task_id, result, state, traceback=None, request=None, **kwargs):
        """One round trip instead of Celery's GET then MULTI: a script writes the meta unless a
        ready state is stored. A SUCCESS of an acks-late task run by the consuming process
        waits for the worker's next fetch script instead (vokaflow.hotpath)."""
        meta = self._get_result_meta(result=result, state=state, traceback=traceback, request=request)
        meta["task_id"] = bytes_to_str(task_id)
        value = self.encode(meta)
        if isinstance(value, str) and len(value) > self._MAX_STR_VALUE_SIZE:
            raise BackendStoreError("value too large for Redis backend", state=state, task_id=task_id)
        key = bytes_to_str(self.get_key_for_task(task_id))
        ttl = self.failure_expires if state == states.FAILURE else self.expires
        if state == states.SUCCESS and hotpath.can_buffer(self.app, request):
            hotpath.pending_results.append((key, value, ttl))
        else:
            self.ensure(hotpath.store_unless_ready, (self.client, key, value, ttl))
        return result


def _plain_redis(redis_url: str) -> bool:
    return redis_url.split("://", 1)[0] in ("redis", "rediss")


def result_backend_url(redis_url: str) -> str:
    """Our backend for redis:// URLs; sentinel:// keeps Celery's own."""
    return f"vokaflow.celery:SubmitOnlyRedisBackend+{redis_url}" if _plain_redis(redis_url) else redis_url


def _transport_for(redis_url: str) -> str | None:
    """Our Redis transport (a fetch that cannot lose a message), directly or through Sentinel."""
    if _plain_redis(redis_url):
        return "vokaflow.transport:Transport"
    if redis_url.startswith("sentinel://"):
        return "vokaflow.transport:SentinelTransport"
    return None


def _sentinel_options(settings) -> dict:
    """kombu and Celery find the primary through Sentinel by its name."""
    if not settings.REDIS_URL.startswith("sentinel://"):
        return {}
    return {"master_name": settings.VOKAFLOW_REDIS_SENTINEL_MASTER}


def celery_config(settings) -> dict:
    """Celery settings derived from Django settings (read once, at app configuration)."""
    from tasks.routing import all_queues

    timeout = settings.VOKAFLOW_BROKER_TIMEOUT
    queues = all_queues(settings.VOKAFLOW_PARTITIONS)
    default_exchange = Exchange("", type="direct")  # the anonymous exchange: no binding lookups
    return {
        "broker_url": settings.REDIS_URL,
        "broker_transport": _transport_for(settings.REDIS_URL),
        "result_backend": result_backend_url(settings.REDIS_URL),
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": timeout,
        "broker_transport_options": {
            "visibility_timeout": settings.VOKAFLOW_VISIBILITY_TIMEOUT,
            "unacked_restore_interval": settings.VOKAFLOW_RESTORE_INTERVAL,
            "unacked_restore_throttle": 1,
            # The restore scan runs under a Redis mutex. kombu keeps it 5 minutes: a worker that
            # vanishes while holding it would hold up every redelivery that long.
            "unacked_mutex_expire": 30,
            "queue_order_strategy": "tasks.routing:PriorityFairCycle",
            # One Redis list per queue, named exactly like the queue.
            "priority_steps": [0],
            "prefetch_wait_ms": settings.VOKAFLOW_PREFETCH_WAIT_MS,
            "socket_connect_timeout": timeout,
            "socket_timeout": max(timeout, 10),
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
            **_sentinel_options(settings),
        },
        "result_backend_transport_options": {"retry_policy": {"timeout": timeout},
                                             **_sentinel_options(settings)},
        "redis_socket_connect_timeout": timeout,
        "redis_socket_timeout": max(timeout, 10),
        "redis_backend_health_check_interval": 30,
        "result_expires": settings.VOKAFLOW_RESULT_TTL,
        "result_extended": True,
        # Publishing gives up quickly when the broker is gone, so the API can answer 503.
        "task_publish_retry_policy": {"max_retries": 2, "interval_start": 0,
                                      "interval_step": 0.2, "interval_max": 0.5},
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        # A task is acknowledged after it finished, so a killed worker's task comes back;
        # prefetch one, or a worker hoards low-priority tasks ahead of urgent ones.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_track_started": True,
        "task_queues": [Queue(q, default_exchange, routing_key=q) for q in queues],
        "task_default_queue": "general.normal.p0",
        "task_default_exchange": "",
        "task_create_missing_queues": False,
        "task_routes": ("tasks.submit.route_task",),
        "worker_hijack_root_logger": False,
        "worker_max_tasks_per_child": 10000,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "beat_schedule": {
            "dlq-flush": {"task": "vokaflow.dlq_flush", "schedule": settings.VOKAFLOW_DLQ_FLUSH_SECONDS},
            "dlq-prune": {"task": "vokaflow.dlq_prune", "schedule": settings.VOKAFLOW_DLQ_PRUNE_SECONDS},
        },
        "beat_schedule_filename": str(settings.BASE_DIR / ".run" / "celerybeat-schedule"),
        # Celery's Django fix-up closes every database connection after every task unless this is
        # set: a new connection per task (several ms on PostgreSQL). Connections are kept, and
        # _close_old_db_connections below drops the broken or expired ones, as Django does per request.
        "CELERY_DB_REUSE_MAX": 1 << 30,
        "timezone": "UTC",
        "enable_utc": True,
    }


@app.on_configure.connect
def _configure(sender, **kwargs):
    from django.conf import settings

    sender.conf.update(celery_config(settings))


app.autodiscover_tasks(["tasks"], related_name="builtin")

app.user_options["worker"].add(click.Option(
    ["--type", "vokaflow_type"], default=None,
    help="VokaFlow worker type (cpu, io, memory, network, general): consume only its queues."))
app.user_options["worker"].add(click.Option(
    ["--partitions", "vokaflow_partitions"], default=None,
    help="Partitions to consume, e.g. 0-3,6 (default: all)."))


class ConsumeWorkerTypeQueues(bootsteps.Step):
    """Turns `--type` / `--partitions` into the worker's queue list, highest priority first."""

    def __init__(self, worker, vokaflow_type=None, vokaflow_partitions=None, **kwargs):
        super().__init__(worker, **kwargs)
        if vokaflow_type is None:
            if vokaflow_partitions:
                raise click.UsageError("--partitions needs --type")
            return
        from django.conf import settings

        from tasks.routing import parse_partitions, queues_for
        from workers.profiles import WorkerType

        try:
            worker_type = WorkerType.parse(vokaflow_type)
            partitions = parse_partitions(vokaflow_partitions, settings.VOKAFLOW_PARTITIONS)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        worker.setup_queues(queues_for(worker_type, settings.VOKAFLOW_PARTITIONS, partitions))


app.steps["worker"].add(ConsumeWorkerTypeQueues)


def _install_fleet_reporting() -> None:
    from workers.heartbeat import Heartbeat, on_process_shutdown, on_task_postrun

    app.steps["worker"].add(Heartbeat)
    signals.task_postrun.connect(on_task_postrun, weak=False)
    signals.worker_process_shutdown.connect(on_process_shutdown, weak=False)


if os.environ.get("VOKAFLOW_FLEET_REPORTING", "1") != "0":  # 0 only to measure what it costs
    _install_fleet_reporting()


@signals.worker_init.connect
def _load_revoked(**kwargs):
    """Revokes broadcast while this worker was not running still apply to it."""
    from celery.worker.state import merge_revoked
    from redis import RedisError

    from tasks.state import revoked_task_ids

    try:
        merge_revoked(revoked_task_ids())
    except RedisError as exc:
        logging.getLogger(__name__).warning("could not load revoked task ids: %s", exc)


# Celery logs two INFO lines per task (received, succeeded): 140-180 µs of a no-op's ~670 µs
# (measured). Fleet metrics and Flower show the same facts, so a worker keeps them only at
# `-l DEBUG`. A filter drops just these two messages: retries, revoked tasks and failures are
# still logged as before.
PER_TASK_LINES = {"celery.worker.strategy": LOG_RECEIVED, "celery.app.trace": LOG_SUCCESS}


class _DropLine(logging.Filter):
    def __init__(self, message: str):
        super().__init__()
        self.message = message

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg is not self.message


@signals.worker_init.connect
def _per_task_lines_at_debug(**kwargs):
    for name, message in PER_TASK_LINES.items():
        logger = logging.getLogger(name)
        if not logger.isEnabledFor(logging.DEBUG):
            logger.addFilter(_DropLine(message))


@signals.task_postrun.connect
def _close_old_db_connections(**kwargs):
    from django.db import close_old_connections

    close_old_connections()

"""The Celery app: reliability settings, and one queue per (worker type, priority, partition).

`celery -A vokaflow worker --type cpu --partitions 0-3` consumes the CPU queues of
partitions 0-3, highest priority first (see vokaflow.core.queues.PriorityFairCycle).
"""

import os
import sys

import click
from celery import Celery
from kombu import Exchange, Queue
from kombu import connection as kombu_connection

from vokaflow.redis_connect import is_cluster, kombu_url

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vokaflow.settings")
# Celery's Django fix-up runs Django's system checks in every worker, which imports the URL
# configuration and with it the whole API, admin and schema (22 MB per process, measured). The
# checks belong to deployment (`manage.py check`), not to each worker start.
os.environ.setdefault("CELERY_SKIP_CHECKS", "1")

app = Celery("vokaflow")


def _plain_redis(redis_url: str) -> bool:
    return redis_url.split("://", 1)[0] in ("redis", "rediss")


def result_backend_url(redis_url: str) -> str:
    """Our backends (tasks.backends, named by string: they use the task services): redis:// and
    rediss:// directly, sentinel:// through Celery's Sentinel backend."""
    if _plain_redis(redis_url):
        return f"tasks.backends:SubmitOnlyRedisBackend+{redis_url}"
    if redis_url.startswith("sentinel://"):
        return f"tasks.backends:BoundedSentinelBackend+{redis_url}"
    if is_cluster(redis_url):
        return "tasks.backends:ClusterResultBackend"  # it takes REDIS_URL itself
    return redis_url


def _transport_for(redis_url: str) -> str | None:
    """Our Redis transport (a fetch that cannot lose a message), directly, through Sentinel, or
    over a Redis Cluster."""
    if _plain_redis(redis_url):
        return "vokaflow.transport:Transport"
    if redis_url.startswith("sentinel://"):
        return "vokaflow.transport:SentinelTransport"
    if is_cluster(redis_url):
        return "vokaflow.cluster_transport:ClusterTransport"
    return None


# Flower picks its broker client (the Broker tab, /api/queues/length) from the scheme of
# Connection.as_uri(), which kombu spells with the transport's name: "vokaflow.transport:Transport://…",
# which Flower does not know ("'redis' broker is not supported"). kombu's resolve_aliases names a
# transport in URIs (it shows pyamqp as amqp); ours are Redis lists, so they read redis:// and
# sentinel://. Only the displayed URI changes: kombu's clone() and pools ignore these aliases.
# Private kombu API: tests/test_contracts.py checks it.
kombu_connection.resolve_aliases.update({
    "vokaflow.transport:Transport": "redis",
    "vokaflow.transport:SentinelTransport": "sentinel",
    # Flower's Broker tab reads a cluster's queue lengths with a cluster client (vokaflow.flower_broker).
    "vokaflow.cluster_transport:ClusterTransport": "rediscluster",
})
if "flower.utils.broker" in sys.modules:  # `celery -A vokaflow flower`: its CLI imported Flower first
    from vokaflow.flower_broker import teach

    teach()


def _sentinel_options(settings) -> dict:
    """kombu and Celery find the primary through Sentinel by its name."""
    if not settings.REDIS_URL.startswith("sentinel://"):
        return {}
    return {"master_name": settings.VOKAFLOW_REDIS_SENTINEL_MASTER}


def celery_config(settings) -> dict:
    """Celery settings derived from Django settings (read once, at app configuration)."""
    from vokaflow.core.priorities import Priority
    from vokaflow.core.queues import all_queues, queue_name
    from vokaflow.core.workers import WorkerType

    timeout = settings.VOKAFLOW_BROKER_TIMEOUT
    queues = all_queues(settings.VOKAFLOW_PARTITIONS)
    default_exchange = Exchange("", type="direct")  # the anonymous exchange: no binding lookups
    return {
        "broker_url": kombu_url(settings.REDIS_URL) if is_cluster(settings.REDIS_URL) else settings.REDIS_URL,
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
            "queue_order_strategy": "vokaflow.core.queues:PriorityFairCycle",
            # One Redis list per queue, named exactly like the queue.
            "priority_steps": [0],
            "prefetch_wait_ms": settings.VOKAFLOW_PREFETCH_WAIT_MS,
            "prefetch_max_bytes": settings.VOKAFLOW_PREFETCH_MAX_BYTES,
            "socket_connect_timeout": timeout,
            "socket_timeout": max(timeout, 10),
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
            **_sentinel_options(settings),
            **({"cluster_url": settings.REDIS_URL} if is_cluster(settings.REDIS_URL) else {}),
        },
        "result_backend_transport_options": {"retry_policy": {"timeout": timeout},
                                             **_sentinel_options(settings)},
        "redis_socket_connect_timeout": timeout,
        "redis_socket_timeout": max(timeout, 10),
        "redis_backend_health_check_interval": 30,
        "result_expires": settings.VOKAFLOW_RESULT_TTL,
        # name, worker, retries and queue for the API; the arguments are left out (tasks.backends).
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
        "task_default_queue": queue_name(WorkerType.GENERAL_PURPOSE, Priority.NORMAL, 0),
        "task_default_exchange": "",
        "task_create_missing_queues": False,
        "task_routes": ("tasks.submit.route_task",),
        "worker_hijack_root_logger": False,
        "worker_max_tasks_per_child": 10000,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # Beat runs the Schedule table (the platform's own periodic tasks are rows in it too), each
        # occurrence enqueued once however many beats run (tasks.schedules.beat).
        "beat_scheduler": "tasks.schedules.beat:ScheduleScheduler",
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


# The worker's own steps live in the workers app; named by string, so the app imports nothing
# above it (workers.bootsteps imports Django settings and the task services).
app.steps["worker"].update({
    "workers.bootsteps:ConsumeWorkerTypeQueues",
    "workers.bootsteps:WorkerSignals",
    "workers.bootsteps:LoadRevoked",
    "workers.watchdog:TimeLimits",
    "workers.scheduler:ScheduledPoller",
    "workers.limits:LimitPoller",
    "workers.heartbeat:Heartbeat",
    "workers.autoscale:Autoscale",
})

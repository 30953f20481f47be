"""Django settings: everything from the environment, with defaults that run on one machine."""

import sys
from datetime import timedelta
from pathlib import Path

import environ

from vokaflow.core.slots import use_layout
from vokaflow.redis_connect import is_cluster

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
if (BASE_DIR / ".env").exists():
    environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DEBUG", default=False)
# No default secret: `make run` writes a random one into .env on first start.
SECRET_KEY = env("SECRET_KEY", default="")
if not SECRET_KEY:
    raise environ.ImproperlyConfigured("Set SECRET_KEY in the environment or in .env (make run writes one).")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
VOKAFLOW_BEHIND_PROXY = env.bool("VOKAFLOW_BEHIND_PROXY", default=False)
if VOKAFLOW_BEHIND_PROXY:
    # nginx (deploy/nginx.conf) says which scheme and host the client used.
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    USE_X_FORWARDED_HOST = True


def _started_by_celery() -> bool:
    """`celery ...` or `python -m celery ...`: a worker, beat or Flower process."""
    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    return program.name == "celery" or program.parent.name == "celery"


# Processes that run tasks (celery worker, beat, Flower) load only the apps the tasks need, not the
# API, admin, schema or DRF: with Django's system checks skipped too (CELERY_SKIP_CHECKS, set in
# vokaflow.celery), a worker process takes 58 MB instead of 85 (bench/memory.py).
VOKAFLOW_TASK_PROCESS = env.bool("VOKAFLOW_TASK_PROCESS", default=_started_by_celery())

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "corsheaders",
    "rest_framework",
    "rest_framework_simplejwt",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI and ReDoc served from our static files: the docs work offline
    "tasks",
    "workers",
    "console",
]
if VOKAFLOW_TASK_PROCESS:
    INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "tasks", "workers"]

MIDDLEWARE = [
    "vokaflow.middleware.RequestSizeLimitMiddleware",
    "vokaflow.login_limit.LoginLimitMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "corsheaders.middleware.CorsMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "vokaflow.urls"
WSGI_APPLICATION = "vokaflow.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("DATABASE_CONN_MAX_AGE", default=60))
if DATABASES["default"]["ENGINE"].endswith("postgresql"):
    # Fail fast instead of hanging when the database is unreachable.
    DATABASES["default"].setdefault("OPTIONS", {}).setdefault("connect_timeout", 3)
elif DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # Several worker processes write dead letters: WAL lets readers and one writer work at once,
    # IMMEDIATE takes the write lock up front instead of failing with "database is locked".
    DATABASES["default"].setdefault("OPTIONS", {}).update({
        "timeout": 20, "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    })
    # Workers in other processes share the test database, so tests use a file, not memory.
    DATABASES["default"]["TEST"] = {"NAME": str(BASE_DIR / "test-db.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# The login limit refuses before the model backend hashes a password (vokaflow/login_limit.py).
AUTHENTICATION_BACKENDS = [
    "vokaflow.login_limit.LoginLimitBackend",
    "django.contrib.auth.backends.ModelBackend",
]
# Failed logins per user name and per client address within VOKAFLOW_LOGIN_WINDOW seconds before
# further attempts are answered 429 (0 turns a limit off); checked before any password is hashed.
VOKAFLOW_LOGIN_LIMIT_PER_USER = env.int("VOKAFLOW_LOGIN_LIMIT_PER_USER", default=10)
VOKAFLOW_LOGIN_LIMIT_PER_ADDRESS = env.int("VOKAFLOW_LOGIN_LIMIT_PER_ADDRESS", default=10)
VOKAFLOW_LOGIN_WINDOW = env.float("VOKAFLOW_LOGIN_WINDOW", default=60)
# Logins that check a password at once in one web process; others are answered 429 at once.
VOKAFLOW_LOGIN_CONCURRENCY = env.int("VOKAFLOW_LOGIN_CONCURRENCY", default=1)
# Where passwords are posted: answered 429 there while a limit holds.
VOKAFLOW_LOGIN_PATHS = env.list("VOKAFLOW_LOGIN_PATHS",
                                default=["/api/auth/token/", "/admin/login/", "/api-auth/login/"])

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = env("STATIC_ROOT", default=str(BASE_DIR / "staticfiles"))

# --- Redis, Celery, routing -------------------------------------------------------------
REDIS_URL = env("REDIS_URL", default="redis://127.0.0.1:6379/0")
# With REDIS_URL=sentinel://host1:26379;sentinel://host2:26379/0: the name of the monitored primary.
VOKAFLOW_REDIS_SENTINEL_MASTER = env("VOKAFLOW_REDIS_SENTINEL_MASTER", default="") or None
VOKAFLOW_PARTITIONS = env.int("VOKAFLOW_PARTITIONS", default=8)
# On a Redis Cluster, queue and task keys carry their partition's hash tag (vokaflow.core.slots).
use_layout(cluster=is_cluster(REDIS_URL), partitions=VOKAFLOW_PARTITIONS)
# Seconds before a task taken by a worker that vanished is handed to another worker. Must
# exceed the longest task and the longest countdown/ETA, or those run twice.
VOKAFLOW_VISIBILITY_TIMEOUT = env.int("VOKAFLOW_VISIBILITY_TIMEOUT", default=3600)
# How often a worker looks for such abandoned tasks (seconds).
VOKAFLOW_RESTORE_INTERVAL = env.float("VOKAFLOW_RESTORE_INTERVAL", default=10)
# An EMERGENCY task submitted while a worker holds a batch waits at most this long behind it
# (ms): a worker takes several short tasks per fetch only as many as their measured duration
# fits into this bound (at most 8); longer tasks come one per fetch.
VOKAFLOW_PREFETCH_WAIT_MS = env.float("VOKAFLOW_PREFETCH_WAIT_MS", default=20)
# And at most this many bytes of messages per fetch (the first message always comes): one fetch
# script copies what it takes, and every Redis client waits while it runs.
VOKAFLOW_PREFETCH_MAX_BYTES = env.int("VOKAFLOW_PREFETCH_MAX_BYTES", default=256 * 1024)
# A message larger than this waits in its queue without its body, which waits in a key of its own
# until the task is acknowledged (vokaflow.transport.outline): no script ever copies it.
VOKAFLOW_INLINE_BODY_BYTES = env.int("VOKAFLOW_INLINE_BODY_BYTES", default=16 * 1024)
VOKAFLOW_BROKER_TIMEOUT = env.float("VOKAFLOW_BROKER_TIMEOUT", default=2.0)
# Replicas that must have a submission's writes before the API answers 202 (Redis WAIT; 0: do not
# wait, replication stays asynchronous), and how long to wait for them (ms): past it the task is
# enqueued all the same and the answer says "replicated": false (tasks.submit).
VOKAFLOW_REDIS_REPLICAS_ACK = env.int("VOKAFLOW_REDIS_REPLICAS_ACK", default=0)
VOKAFLOW_REDIS_REPLICAS_ACK_TIMEOUT_MS = env.int("VOKAFLOW_REDIS_REPLICAS_ACK_TIMEOUT_MS", default=500)
VOKAFLOW_IDEMPOTENCY_TTL = env.int("VOKAFLOW_IDEMPOTENCY_TTL", default=24 * 3600)
VOKAFLOW_RESULT_TTL = env.int("VOKAFLOW_RESULT_TTL", default=24 * 3600)
VOKAFLOW_MAX_BODY_BYTES = env.int("VOKAFLOW_MAX_BODY_BYTES", default=2 * 1024 * 1024)
VOKAFLOW_BATCH_LIMIT = 1000
# Deliveries that each ended with the worker process gone before a task is dead-lettered.
VOKAFLOW_POISON_DELIVERIES = env.int("VOKAFLOW_POISON_DELIVERIES", default=3)
# Dead letters kept per worker type; older ones are removed by the periodic prune.
VOKAFLOW_DLQ_RETENTION = env.int("VOKAFLOW_DLQ_RETENTION", default=1000)
# A worker writes its presence every VOKAFLOW_HEARTBEAT_SECONDS; it is gone from the fleet
# VOKAFLOW_HEARTBEAT_TTL seconds after its last write.
VOKAFLOW_HEARTBEAT_SECONDS = env.float("VOKAFLOW_HEARTBEAT_SECONDS", default=2)
VOKAFLOW_HEARTBEAT_TTL = env.float("VOKAFLOW_HEARTBEAT_TTL", default=6)
# Autoscaling (vokaflow.core.autoscale): per type VOKAFLOW_AUTOSCALE_<TYPE>=MIN:MAX and
# VOKAFLOW_TARGET_WAIT_<TYPE>, read by each worker at start; here the seconds of spare slots
# before a worker shrinks.
VOKAFLOW_AUTOSCALE_IDLE = env.float("VOKAFLOW_AUTOSCALE_IDLE", default=30)
# Bearer token Prometheus scrapes /metrics with (empty: JWT or session only).
VOKAFLOW_METRICS_TOKEN = env("VOKAFLOW_METRICS_TOKEN", default="")
# Heartbeats and task counters (0 only to measure what they cost).
VOKAFLOW_FLEET_REPORTING = env.bool("VOKAFLOW_FLEET_REPORTING", default=True)
VOKAFLOW_DLQ_FLUSH_SECONDS = env.float("VOKAFLOW_DLQ_FLUSH_SECONDS", default=30)
VOKAFLOW_DLQ_PRUNE_SECONDS = env.float("VOKAFLOW_DLQ_PRUNE_SECONDS", default=3600)
# Limits (tasks.limits): seconds a concurrency place outlives its worker (renewed every second).
VOKAFLOW_LIMIT_LEASE = env.float("VOKAFLOW_LIMIT_LEASE", default=15)
# Schedules (tasks.schedules): an occurrence due longer ago than this was missed (no beat ran then).
VOKAFLOW_SCHEDULE_GRACE = env.float("VOKAFLOW_SCHEDULE_GRACE", default=60)
DATA_UPLOAD_MAX_MEMORY_SIZE = VOKAFLOW_MAX_BODY_BYTES
# Deepest nesting of a JSON body and of a task's args/kwargs (deeper is a 400): a document
# ~900 deep reaches Python's recursion limit wherever it is read or rendered later.
VOKAFLOW_MAX_JSON_DEPTH = env.int("VOKAFLOW_MAX_JSON_DEPTH", default=64)

# --- Limits (README "Limits") -------------------------------------------------------------
# Tasks one API user may have submitted and not yet finished (0: no quota); 429 above it.
VOKAFLOW_USER_PENDING_QUOTA = env.int("VOKAFLOW_USER_PENDING_QUOTA", default=10_000)
# Default time limits (seconds) of every task that declares none, per worker type:
# VOKAFLOW_SOFT_TIME_LIMIT_<TYPE> / VOKAFLOW_TIME_LIMIT_<TYPE> (CPU, IO, MEMORY, NETWORK, GENERAL),
# else VOKAFLOW_SOFT_TIME_LIMIT / VOKAFLOW_TIME_LIMIT. At the soft limit a task is told to stop
# (SoftTimeLimitExceeded); at the hard one a process is killed, a thread reported stuck.
VOKAFLOW_SOFT_TIME_LIMIT = env.float("VOKAFLOW_SOFT_TIME_LIMIT", default=300)
VOKAFLOW_TIME_LIMIT = env.float("VOKAFLOW_TIME_LIMIT", default=360)
VOKAFLOW_TIME_LIMITS = {
    short: (env.float(f"VOKAFLOW_SOFT_TIME_LIMIT_{short.upper()}", default=VOKAFLOW_SOFT_TIME_LIMIT),
            env.float(f"VOKAFLOW_TIME_LIMIT_{short.upper()}", default=VOKAFLOW_TIME_LIMIT))
    for short in ("cpu", "io", "memory", "network", "general")
}
# Longest countdown/eta accepted (seconds; 400 beyond). Delayed tasks wait in vokaflow:scheduled:<type>.
VOKAFLOW_MAX_DELAY = env.int("VOKAFLOW_MAX_DELAY", default=10 * 365 * 24 * 3600)
# Largest stored result (JSON bytes); a larger one is replaced by a notice (tasks.backends).
VOKAFLOW_MAX_RESULT_BYTES = env.int("VOKAFLOW_MAX_RESULT_BYTES", default=1024 * 1024)
# VOKAFLOW_FENCE_TTL (seconds a lock's fencing counter outlives its last use) is read by
# vokaflow.locks itself, which needs no Django.
# Acquires over HTTP that wait for a taken lock at once in one web process (each holds one of its
# threads while it waits); another one is answered 429 with Retry-After at once (tasks.api.locks).
VOKAFLOW_LOCK_WAITERS = env.int("VOKAFLOW_LOCK_WAITERS", default=1)

CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "vokaflow:cache",
        "OPTIONS": {
            # Throttle counters go through the same client as everything else (Sentinel included).
            "CONNECTION_FACTORY": "vokaflow.cache.CacheConnectionFactory",
            # Throttling must not take the API down with Redis: the broker check answers 503.
            "IGNORE_EXCEPTIONS": True,
        },
    }
}
DJANGO_REDIS_IGNORE_EXCEPTIONS = True
DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS = True

# --- API ------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework_simplejwt.authentication.JWTAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["vokaflow.json_input.BoundedJSONParser"],
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_THROTTLE_CLASSES": ["rest_framework.throttling.UserRateThrottle"],
    "DEFAULT_THROTTLE_RATES": {"user": env("VOKAFLOW_THROTTLE_RATE", default="20000/min")},
    "DEFAULT_SCHEMA_CLASS": "vokaflow.schema.VokaFlowAutoSchema",
    "EXCEPTION_HANDLER": "vokaflow.api_errors.exception_handler",
}
SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=env.int("JWT_ACCESS_MINUTES", default=60)),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=env.int("JWT_REFRESH_DAYS", default=1)),
}
SPECTACULAR_SETTINGS = {
    "TITLE": "VokaFlow API",
    "DESCRIPTION": "Submit Celery tasks by priority and worker type, follow them, retry failures.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    # validatorUrl off: Swagger UI would otherwise load a badge from validator.swagger.io.
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # The schema and its docs are open: they describe the API (as this repository does) and hold no data.
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "ENUM_NAME_OVERRIDES": {"DeadLetterStatusEnum": "tasks.models.DeadLetter.Status"},
}

# CORS is closed unless origins are configured.
CORS_ALLOWED_ORIGINS = env.list("CORS_ALLOWED_ORIGINS", default=[])

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", default="INFO")},
    "loggers": {"django.server": {"level": "WARNING"}},
}

# --- Processes on one host (manage.py launch) -----------------------------------------
VOKAFLOW_HOST = env("VOKAFLOW_HOST", default="127.0.0.1")
VOKAFLOW_PORT = env.int("VOKAFLOW_PORT", default=8000)
FLOWER_PORT = env.int("FLOWER_PORT", default=5555)
FLOWER_BASIC_AUTH = env("FLOWER_BASIC_AUTH", default="")
VOKAFLOW_WEB_WORKERS = env.int("VOKAFLOW_WEB_WORKERS", default=2)
# `make run` creates or updates this staff superuser when a password is given.
VOKAFLOW_ADMIN_USER = env("VOKAFLOW_ADMIN_USER", default="admin")
VOKAFLOW_ADMIN_PASSWORD = env("VOKAFLOW_ADMIN_PASSWORD", default="")

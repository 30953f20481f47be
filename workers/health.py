"""Health checks, each bounded in time: database, broker, at least one live worker.

Health is open to anonymous callers (load balancers, probes), so its answer names no host,
address or exception text: a failing check says what failed in our own words, and the full
error goes to the web server's log.
"""

from __future__ import annotations

import logging
import time

from django.db import connection

from vokaflow.core.errors import Unavailable

logger = logging.getLogger(__name__)


class HealthProblem(Unavailable):
    """A failing check whose message is safe to show anyone."""


def _timed(check) -> dict:
    started = time.perf_counter()
    try:
        value = check()
        result: dict[str, object] = {"ok": True} if value is None else {"ok": True, "count": value}
    except HealthProblem as exc:
        result = {"ok": False, "error": str(exc)}
    except Exception as exc:  # any failure is the answer, not an error of the endpoint
        logger.warning("health check %s failed: %s: %s", check.__name__.strip("_"), type(exc).__name__, exc)
        result = {"ok": False, "error": f"{type(exc).__name__} (details in the web server's log)"}
    result["ms"] = round((time.perf_counter() - started) * 1000, 1)
    return result


def _database():
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _broker():
    from vokaflow.redis import get_redis

    get_redis().ping()


def _workers():
    from workers.status import live_workers

    alive = live_workers()
    if not alive:
        raise HealthProblem("no worker has sent a heartbeat recently; start one: python manage.py worker general")
    return len(alive)


def _launchers():
    from workers.status import given_up_processes

    given_up = given_up_processes()
    if given_up:  # process names only: which host is for the log and the launcher's own output
        names = sorted({name for names in given_up.values() for name in names})
        raise HealthProblem(f"the launcher gave up on: {', '.join(names)} (on {len(given_up)} host(s))")


def health() -> dict:
    """{"status": "ok"|"failing", "checks": {name: {"ok", "ms", "error"?}}}."""
    checks = {"database": _timed(_database), "broker": _timed(_broker)}
    if checks["broker"]["ok"]:
        checks["workers"] = _timed(_workers)
        checks["processes"] = _timed(_launchers)
    else:
        checks["workers"] = checks["processes"] = {"ok": False, "error": "broker unreachable"}
    return {"status": "ok" if all(c["ok"] for c in checks.values()) else "failing", "checks": checks}

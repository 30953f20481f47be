"""Health checks, each bounded in time: database, broker, at least one live worker."""

from __future__ import annotations

import time

from django.db import connection


def _timed(check) -> dict:
    started = time.perf_counter()
    try:
        value = check()
        result: dict[str, object] = {"ok": True} if value is None else {"ok": True, "count": value}
    except Exception as exc:  # any failure is the answer, not an error of the endpoint
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
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
        raise RuntimeError("no worker has sent a heartbeat recently; start one: python manage.py worker general")
    return len(alive)


def _launchers():
    from workers.status import given_up_processes

    given_up = given_up_processes()
    if given_up:
        raise RuntimeError("the launcher gave up on: " + "; ".join(f"{host}: {', '.join(names)}"
                                                                 for host, names in given_up.items()))


def health() -> dict:
    """{"status": "ok"|"failing", "checks": {name: {"ok", "ms", "error"?}}}."""
    checks = {"database": _timed(_database), "broker": _timed(_broker)}
    if checks["broker"]["ok"]:
        checks["workers"] = _timed(_workers)
        checks["processes"] = _timed(_launchers)
    else:
        checks["workers"] = checks["processes"] = {"ok": False, "error": "broker unreachable"}
    return {"status": "ok" if all(c["ok"] for c in checks.values()) else "failing", "checks": checks}

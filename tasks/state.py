"""Reading and revoking submitted tasks: state from the result backend, route from our record."""

from __future__ import annotations

import time

from celery import states

from tasks.ownership import may_see
from tasks.records import task_record
from vokaflow.celery import app
from vokaflow.core import keys
from vokaflow.core.errors import Conflict, NotFound
from vokaflow.redis import get_redis
from vokaflow.redis_connect import as_text

DEAD = "DEAD"  # failed for good and recorded in the dead-letter table
FINISHED_STATES = states.READY_STATES | {DEAD}

# task id → expiry (epoch seconds): revokes that a worker started later must still honour.


class TaskNotFound(NotFound):
    def __init__(self, task_id: str):
        super().__init__(f"no task with id {task_id}")


class TaskAlreadyFinished(Conflict):
    pass


def task_status(task_id: str, *, user=None) -> dict:
    """State, result or error, retries, route and timestamps of one task. With a `user`, a task
    that user may not see (tasks.ownership) answers exactly like an unknown id."""
    record = task_record(task_id)
    if not may_see(user, record):
        raise TaskNotFound(task_id)  # the same answer as an unknown id: ids cannot be probed
    meta = app.backend.get_task_meta(task_id)
    state = meta.get("status", states.PENDING)
    if record is None and state == states.PENDING:
        raise TaskNotFound(task_id)
    if state == states.FAILURE and _dead_lettered(task_id):
        state = DEAD
    failed = state in (*states.PROPAGATE_STATES, DEAD)
    result = meta.get("result")
    info = record.public() if record else {"task_id": task_id, "task": meta.get("name")}
    info.pop("duplicate", None)
    info.update({
        "state": state,
        "result": None if failed or state != states.SUCCESS else result,
        "error": _error_text(result) if failed else None,
        "traceback": meta.get("traceback") if failed else None,
        "retries": meta.get("retries") or 0,
        "worker": meta.get("worker"),
        "finished_at": _iso(meta.get("date_done")) if state in FINISHED_STATES else None,
    })
    if state == states.RETRY:
        info["error"] = _error_text(result)
    if record is None:
        info["queue"] = meta.get("queue")
    return info


def revoke_task(task_id: str, *, user=None) -> dict:
    """Stop a task that has not finished: broadcast to live workers and remember it in Redis
    for workers that start later (they load it at start, so running tasks pay nothing).
    A task already running is left to finish (no termination). With a `user`, only a task
    that user may see (tasks.ownership)."""
    status = task_status(task_id, user=user)
    if status["state"] in FINISHED_STATES:
        raise TaskAlreadyFinished(f"task {task_id} already finished with state {status['state']}")
    from django.conf import settings

    get_redis().zadd(keys.REVOKED, {task_id: time.time() + settings.VOKAFLOW_RESULT_TTL})
    app.control.revoke(task_id)
    app.backend.mark_as_revoked(task_id, reason="revoked through the API")
    return task_status(task_id)


def _dead_lettered(task_id: str) -> bool:
    from tasks.models import DeadLetter

    return DeadLetter.objects.filter(task_id=task_id).exists()


def revoked_task_ids() -> list[str]:
    """Ids revoked within the result TTL; a starting worker merges them into its revoked set."""
    r = get_redis()
    r.zremrangebyscore(keys.REVOKED, "-inf", time.time())
    return [as_text(task_id) for task_id in r.zrange(keys.REVOKED, 0, -1)]


def _error_text(result) -> str | None:
    if result is None:
        return None
    if isinstance(result, BaseException):
        return f"{type(result).__name__}: {result}"
    if isinstance(result, dict) and "exc_type" in result:
        return f"{result['exc_type']}: {result.get('exc_message')}"
    return str(result)


def _iso(value) -> str | None:
    if value is None:
        return None
    return value.isoformat() if hasattr(value, "isoformat") else str(value)

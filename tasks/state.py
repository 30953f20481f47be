"""Reading and revoking submitted tasks: state from the result backend, route from our record."""

from __future__ import annotations

import json
import time
from datetime import datetime

from celery import states

from tasks.backends import NOTICE
from tasks.cancellation import cancel_requested, request_cancel
from tasks.ownership import may_see
from tasks.quota import release_pending
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
    dropped = meta.get(NOTICE)
    if dropped and state == states.SUCCESS:
        info["error"] = (f"the result ({dropped['bytes']} bytes) was over the limit of {dropped['limit']} bytes "
                         "(VOKAFLOW_MAX_RESULT_BYTES) and was not stored")
    if record is None:
        info["queue"] = meta.get("queue")
    info["stopping"] = state == states.STARTED and cancel_requested(task_id)
    info["held_by"] = _held_by(task_id) if state == states.PENDING else None
    return info


def _held_by(task_id: str) -> str | None:
    """The fleet-wide limit a task waits for (tasks.limits), e.g. "stripe (rate)"."""
    held = get_redis().get(keys.task_key(keys.HELD, task_id))
    return as_text(held) if held else None


def revoke_task(task_id: str, *, user=None) -> dict:
    """Stop a task that has not finished; the answer's `stopping` is True while it is being stopped.

    Every revoked id is broadcast to live workers and kept in Redis for workers that start
    later (they load it at start), so a delivery that has not run yet never runs.
    A task running in a prefork child is terminated with SIGTERM: billiard turns it into
    SystemExit inside the task, so its `finally` blocks run (a lock it holds is released;
    SIGKILL would leave it held until its TTL), and Celery records a terminated job as
    REVOKED and acknowledges it (no failure handler: no dead letter, no retry). A thread
    cannot be killed: the task is asked to stop (tasks.cancellation) and becomes REVOKED when
    it does. The result backend never overwrites a final state (vokaflow.result_store), so a
    late SUCCESS cannot undo the revoke, nor a late revoke a SUCCESS. A task whose REVOKED is
    stored here gives its place in its owner's pending quota back at once (a delayed one would
    otherwise hold it until its eta). With a `user`, only a task that user may see (tasks.ownership).
    """
    from django.conf import settings

    status = task_status(task_id, user=user)
    _raise_if_finished(status)
    ttl = settings.VOKAFLOW_RESULT_TTL
    # A task still waiting for its eta (tasks.scheduled) must find its revoke when it comes due.
    due = datetime.fromisoformat(status["eta"]).timestamp() if status.get("eta") else 0
    get_redis().zadd(keys.REVOKED, {task_id: max(time.time(), due) + ttl})
    worker, pool = status["worker"], _running_pool(status)
    if pool is not None and pool != "prefork":
        request_cancel(task_id, ttl)
    else:
        app.backend.mark_as_revoked(task_id, reason="revoked through the API")
    status = task_status(task_id)
    _raise_if_finished(status, unless=states.REVOKED)  # it finished before the revoke was stored
    if status["state"] == states.REVOKED:  # a thread asked to stop frees its place when it stops
        _free_quota_place(task_id)
    if pool == "prefork":
        app.control.revoke(task_id, terminate=True, signal="SIGTERM", destination=[worker])
    else:
        app.control.revoke(task_id)
    return status


def _free_quota_place(task_id: str) -> None:
    """The revoked task's place in its owner's pending quota (tasks.quota) is free now, not when a
    worker would have met it: a delayed task is met only at its eta."""
    record = task_record(task_id)
    if record is not None and record.owner is not None:
        release_pending(get_redis(), record.owner, [task_id])


def _running_pool(status: dict) -> str | None:
    """The pool of the live worker running the task ("prefork", "threads", …), from its
    heartbeat; None when the task is not running or its worker is gone (then a redelivery
    will find it revoked)."""
    if status["state"] != states.STARTED or not status.get("worker"):
        return None
    raw = get_redis().get(keys.WORKER.format(status["worker"]))  # its heartbeat, gone with the worker
    return json.loads(raw)["pool"] if raw else None


def _raise_if_finished(status: dict, unless: str | None = None) -> None:
    if status["state"] in FINISHED_STATES and status["state"] != unless:
        raise TaskAlreadyFinished(f"task {status['task_id']} already finished with state {status['state']}")


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

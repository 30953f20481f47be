"""Checking a submission: every argument of submit_task and every field of a REST body, one place.

`prepare` turns arguments into a TaskRequest (task, JSON-encoded arguments, route, delay, lock,
idempotency key) or raises SubmissionError naming the field; nothing is enqueued here.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from celery import Task
from django.conf import settings
from django.utils.dateparse import parse_datetime

from tasks import catalog
from tasks.arguments import check_arguments
from tasks.limits import check_submission as check_limit_arguments
from tasks.messages import encode_json
from vokaflow.celery import app
from vokaflow.core.errors import BadRequest
from vokaflow.core.priorities import Priority
from vokaflow.core.queues import Route, partition_for
from vokaflow.core.slots import LAYOUT, new_task_id
from vokaflow.core.workers import WorkerType
from vokaflow.json_input import valid_unicode, value_problem

MAX_KEY_LENGTH = 200
NOT_UNICODE = "not valid Unicode (it holds a lone surrogate such as \\ud800)"


class SubmissionError(BadRequest, ValueError):
    """Bad input: names the field and the reason; nothing was enqueued."""

    def __init__(self, field: str, message: str, index: int | None = None, **extra: Any):
        self.field, self.message, self.index = field, message, index
        name = field if index is None else f"tasks[{index}].{field}"
        super().__init__(f"{name}: {message}; nothing was enqueued", errors={name: [message]}, **extra)


@dataclass
class TaskRequest:
    """One validated submission, ready to publish."""

    task: Task
    args_json: str
    kwargs_json: str
    route: Route
    eta: datetime | None = None
    idempotency_key: str | None = None
    lock: dict | None = None
    retried_from: str | None = None
    owner: int | None = None  # set by a dead letter's retry: the task is its first submitter's again
    schedule: int | None = None  # the schedule whose occurrence this is (tasks.schedules)
    task_id: str = field(default_factory=lambda: str(uuid.uuid4()))


PAYLOAD_FIELDS = ("task", "args", "kwargs", "priority", "worker_type", "partition_key", "countdown",
                  "eta", "lock", "idempotency_key")


def prepare_payload(payload, index: int | None = None) -> TaskRequest:
    """Validate one JSON request body (untrusted: submittable tasks only)."""
    if not isinstance(payload, dict):
        raise SubmissionError("task" if index is None else "", "each task must be a JSON object", index=index)
    unknown = sorted(set(payload) - set(PAYLOAD_FIELDS))
    if unknown:
        raise SubmissionError(unknown[0], f"unknown field; accepted fields: {', '.join(PAYLOAD_FIELDS)}",
                              index=index)
    return prepare(payload.get("task"), **{k: payload.get(k) for k in PAYLOAD_FIELDS[1:]},
                   trusted=False, index=index)


def prepare(task_or_name, *, args=(), kwargs=None, priority=None, worker_type=None,
            partition_key=None, countdown=None, eta=None, lock=None, idempotency_key=None,
            trusted: bool = True, index: int | None = None, partition: int | None = None,
            retried_from: str | None = None, owner: int | None = None, schedule: int | None = None) -> TaskRequest:
    """Check every argument and pick the route. `trusted=False` (the API) allows only
    submittable task names; Python callers may pass any registered task or task object, an
    explicit `partition`, `retried_from` (the dead letter a retry comes from) and `owner` (whose
    task it is, when not the caller's: a retry gives the task back to its first submitter)."""
    def error(name, message, **extra):
        return SubmissionError(name, message, index=index, **extra)

    task = _resolve_task(task_or_name, trusted, error)
    if args is None:
        args = []
    if not isinstance(args, (list, tuple)):
        raise error("args", f"must be a list, got {type(args).__name__}")
    kwargs = {} if kwargs is None else kwargs
    if not isinstance(kwargs, dict):
        raise error("kwargs", f"must be an object, got {type(kwargs).__name__}")
    if not all(isinstance(k, str) for k in kwargs):
        raise error("kwargs", "keys must be strings")
    check_arguments(task, args, kwargs, error)
    check_limit_arguments(task, args, kwargs, error)
    try:
        args_json = encode_json(list(args))
    except (TypeError, ValueError) as exc:
        raise error("args", f"not JSON-serialisable: {exc}") from None
    except RecursionError:
        raise error("args", f"nested deeper than {settings.VOKAFLOW_MAX_JSON_DEPTH} levels") from None
    try:
        kwargs_json = encode_json(kwargs)
    except (TypeError, ValueError) as exc:
        raise error("kwargs", f"not JSON-serialisable: {exc}") from None
    except RecursionError:
        raise error("kwargs", f"nested deeper than {settings.VOKAFLOW_MAX_JSON_DEPTH} levels") from None
    for name, value, encoded in (("args", args, args_json), ("kwargs", kwargs, kwargs_json)):
        problem = value_problem(value, encoded)
        if problem:
            raise error(name, problem)
    try:
        chosen_priority = task.default_priority if priority is None else Priority.parse(priority, strict=not trusted)
    except ValueError as exc:
        raise error("priority", str(exc)) from None
    try:
        chosen_type = WorkerType.parse(worker_type, strict=not trusted) if worker_type is not None else task.worker_type
    except ValueError as exc:
        raise error("worker_type", str(exc)) from None
    if partition_key is not None and (not isinstance(partition_key, str) or len(partition_key) > MAX_KEY_LENGTH):
        raise error("partition_key", f"must be a string of at most {MAX_KEY_LENGTH} characters")
    if partition_key is not None and not valid_unicode(partition_key):
        raise error("partition_key", NOT_UNICODE)
    if countdown is not None and eta is not None:
        raise error("countdown", "give countdown or eta, not both")
    countdown = _check_countdown(countdown, error)
    eta = _check_eta(eta, error)
    max_delay = settings.VOKAFLOW_MAX_DELAY
    if countdown:
        eta = datetime.now(UTC) + timedelta(seconds=countdown)
    elif eta is not None and eta.timestamp() > time.time() + max_delay:
        raise error("eta", f"at most {max_delay} seconds from now (VOKAFLOW_MAX_DELAY, "
                           f"{max_delay / 86400 / 365:g} years)")
    lock = _check_lock(lock, error)
    if idempotency_key is not None and (not isinstance(idempotency_key, str) or not idempotency_key
                                        or len(idempotency_key) > MAX_KEY_LENGTH):
        raise error("idempotency_key", f"must be a non-empty string of at most {MAX_KEY_LENGTH} characters")
    if idempotency_key is not None and not valid_unicode(idempotency_key):
        raise error("idempotency_key", NOT_UNICODE)
    partitions = settings.VOKAFLOW_PARTITIONS
    if partition is None or not 0 <= partition < partitions:  # a partition beyond a shrunk range is rehashed
        # On a cluster a keyed task's key lives in its partition's slot: a repeat must land there too.
        placed_by = idempotency_key if partition_key is None and LAYOUT.cluster else partition_key
        partition = partition_for(placed_by, partitions)
    route = Route(chosen_type, chosen_priority, partition)
    return TaskRequest(task=task, args_json=args_json, kwargs_json=kwargs_json, route=route, eta=eta,
                       idempotency_key=idempotency_key, lock=lock, retried_from=retried_from, owner=owner,
                       schedule=schedule,
                       task_id=new_task_id(partition))


def _resolve_task(task_or_name, trusted, error) -> Task:
    if isinstance(task_or_name, Task):
        if not trusted and not getattr(task_or_name, "submittable", False):
            raise error("task", "not submittable", allowed=catalog.submittable_names())
        return task_or_name
    if not isinstance(task_or_name, str) or not task_or_name:
        raise error("task", "required: the name of a submittable task", allowed=catalog.submittable_names())
    try:
        return catalog.resolve(task_or_name)
    except catalog.UnknownTask:
        registered = app.tasks.get(task_or_name)
        if trusted and registered is not None:
            return registered
        raise error("task", f"unknown task {task_or_name!r}", allowed=catalog.submittable_names()) from None


LOCK_FIELDS = {"key", "timeout", "skip_if_locked"}
LOCK_KEY_PATTERN = r"^[A-Za-z0-9_.:-]{1,200}$"
LOCK_TIMEOUT_DEFAULT = 60.0
LOCK_TIMEOUT_MIN, LOCK_TIMEOUT_MAX = 0.001, 86400.0


def _check_lock(lock, error) -> dict | None:
    """{"key": str, "timeout": seconds, "skip_if_locked": bool}: run one at a time per key."""
    if lock is None:
        return None
    if not isinstance(lock, dict) or set(lock) - LOCK_FIELDS or "key" not in lock:
        raise error("lock", 'must be an object {"key": ..., "timeout": seconds, "skip_if_locked": false}')
    key, timeout = lock["key"], lock.get("timeout", LOCK_TIMEOUT_DEFAULT)
    skip = lock.get("skip_if_locked", False)
    if not isinstance(key, str) or not re.fullmatch(LOCK_KEY_PATTERN, key):
        raise error("lock.key", "must be 1-200 characters of letters, digits and _.:-")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
            or not LOCK_TIMEOUT_MIN <= timeout <= LOCK_TIMEOUT_MAX:
        raise error("lock.timeout", f"must be a number of seconds from {LOCK_TIMEOUT_MIN:g} to {LOCK_TIMEOUT_MAX:g}")
    if not isinstance(skip, bool):
        raise error("lock.skip_if_locked", "must be true or false (a JSON boolean)")
    return {"key": key, "timeout": float(timeout), "skip_if_locked": skip}


def _check_countdown(countdown, error) -> float | None:
    if countdown is None:
        return None
    if isinstance(countdown, bool) or not isinstance(countdown, (int, float)) or countdown < 0:
        raise error("countdown", "must be a number of seconds, 0 or more")
    try:
        seconds = float(countdown)
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds):
        raise error("countdown", "must be a finite number of seconds")
    if seconds > settings.VOKAFLOW_MAX_DELAY:
        max_delay = settings.VOKAFLOW_MAX_DELAY
        raise error("countdown", f"at most {max_delay} seconds (VOKAFLOW_MAX_DELAY, {max_delay / 86400 / 365:g} years)")
    return seconds


def _check_eta(eta, error) -> datetime | None:
    if eta is None:
        return None
    if isinstance(eta, str):
        try:
            parsed = parse_datetime(eta)
        except ValueError as exc:  # well formed but impossible: Feb 30, 25:00, offset +25:00
            raise error("eta", f"not a valid date-time: {eta!r} ({exc})") from None
        if parsed is None:
            raise error("eta", f"not an ISO-8601 date-time: {eta!r}")
        eta = parsed
    if not isinstance(eta, datetime):
        raise error("eta", "must be an ISO-8601 date-time")
    try:
        return eta.astimezone(UTC) if eta.tzinfo else eta.replace(tzinfo=UTC)
    except OverflowError:
        if eta.year == 1:  # e.g. 0001-01-01T00:00:00+05:00: before the first UTC date, long past: run now
            return datetime.min.replace(tzinfo=UTC)
        raise error("eta", f"{eta.isoformat()} is after the last date there is in UTC (year 9999)") from None



"""Schedules: check, create, change, delete, run now, and read with their next and recent runs.

Every write announces the schedule's id on a Redis stream that each beat reads about once a
second, so a change takes effect within 2 s and a beat reloads only that schedule. Schedules the
platform declares (CODE_SCHEDULES, `source: code`) are kept in step with the code at migrate and
beat start, and are read-only to people.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone as django_timezone

from tasks.models import Schedule
from tasks.schedules import runs as run_store
from tasks.schedules.spec import spec_of
from tasks.validation import SubmissionError, prepare
from vokaflow.core import keys
from vokaflow.core.errors import BadRequest, Conflict, NotFound
from vokaflow.core.recurrence import HORIZON_DAYS, RecurrenceError, next_cron, parse_cron, zone
from vokaflow.redis import get_redis

logger = logging.getLogger(__name__)

EARLIEST, LATEST = datetime(1970, 1, 1, tzinfo=UTC), datetime(9000, 1, 1, tzinfo=UTC)  # start_at, end_at
CHANGES_KEPT = 10_000  # entries of the change stream; a beat further behind reloads everything
TIMING_FIELDS = ("every", "cron", "timezone", "start_at", "end_at")
FIELDS = ("name", "task", "args", "kwargs", "priority", "worker_type", "partition_key", *TIMING_FIELDS,
          "enabled", "overlap", "missed")


@dataclass(frozen=True)
class CodeSchedule:
    name: str
    task: str
    every_setting: str  # the setting that holds its interval in seconds


# The platform's own periodic tasks, run by the same beats as everyone's schedules.
CODE_SCHEDULES = (
    CodeSchedule("vokaflow.dlq_flush", "vokaflow.dlq_flush", "VOKAFLOW_DLQ_FLUSH_SECONDS"),
    CodeSchedule("vokaflow.dlq_prune", "vokaflow.dlq_prune", "VOKAFLOW_DLQ_PRUNE_SECONDS"),
)


class ScheduleInvalid(BadRequest):
    """Bad input: names the field and the reason; nothing was saved."""

    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}", errors={field: [message]})


class ScheduleNotFound(NotFound):
    def __init__(self, schedule_id: Any):
        super().__init__(f"no schedule with id {schedule_id}")


class ScheduleReadOnly(Conflict):
    def __init__(self, schedule: Schedule):
        super().__init__(f"schedule {schedule.name!r} is declared by the platform (source: code) and cannot be "
                         "changed here; set its interval with its setting")


def _now() -> datetime:
    return django_timezone.now()


def schedule_get(*, schedule_id: int) -> Schedule:
    schedule = Schedule.objects.filter(pk=schedule_id).first()
    if schedule is None:
        raise ScheduleNotFound(schedule_id)
    return schedule


def schedule_create(*, owner: int | None, **data: Any) -> Schedule:
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ScheduleInvalid(unknown[0], f"unknown field; accepted fields: {', '.join(FIELDS)}")
    schedule = Schedule(owner_id=owner, active_since=_now())
    schedule_apply(schedule, data, creating=True)
    _save(schedule)
    announce(schedule.pk)
    return schedule


def _save(schedule: Schedule) -> None:
    """Save; a name another schedule has (checked, or taken by a concurrent save) names the field."""
    taken = ScheduleInvalid("name", f"a schedule named {schedule.name!r} exists already")
    if Schedule.objects.filter(name=schedule.name).exclude(pk=schedule.pk).exists():
        raise taken
    try:
        with transaction.atomic():
            schedule.save()
    except IntegrityError:
        raise taken from None


def schedule_update(*, schedule_id: int, **data: Any) -> Schedule:
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise ScheduleInvalid(unknown[0], f"unknown field; accepted fields: {', '.join(FIELDS)}")
    schedule = schedule_get(schedule_id=schedule_id)
    if schedule.source == Schedule.Source.CODE:
        raise ScheduleReadOnly(schedule)
    was_enabled = schedule.enabled
    before = tuple(getattr(schedule, f) for f in TIMING_FIELDS)
    # Turning a schedule off never needs its task to be submittable still (it may have left the
    # allow-list: that is when it must be turned off).
    switching_off = set(data) == {"enabled"} and data["enabled"] is False
    schedule_apply(schedule, data, creating=False, submission=not switching_off)
    if (schedule.enabled and not was_enabled) or tuple(getattr(schedule, f) for f in TIMING_FIELDS) != before:
        schedule.active_since = _now()  # what fell due while off or on the old timing never runs
    _save(schedule)
    announce(schedule.pk)
    return schedule


def schedule_delete(*, schedule_id: int) -> None:
    schedule = schedule_get(schedule_id=schedule_id)
    if schedule.source == Schedule.Source.CODE:
        raise ScheduleReadOnly(schedule)
    schedule.delete()
    announce(schedule_id)
    try:
        run_store.forget(get_redis(), schedule_id)
    except redis.RedisError as exc:
        logger.warning("could not forget the runs of deleted schedule %s: %s", schedule_id, exc)


def schedule_run_now(*, schedule_id: int) -> str:
    """Enqueue one occurrence now, outside the schedule's timing; returns its task id."""
    from tasks.submit import enqueue

    schedule = schedule_get(schedule_id=schedule_id)
    request = occurrence_request(spec_of(schedule, trusted=schedule.source == Schedule.Source.CODE), None)
    submission = enqueue([request], owner=schedule.owner_id)[0]
    run_store.record_run(get_redis(), schedule.pk, run_store.Run(
        datetime.now(UTC).timestamp(), submission.task_id, manual=True))
    return submission.task_id


def occurrence_request(spec, due: datetime | None):
    """The submission of one occurrence: its idempotency key names the schedule and due time, so
    beats that enqueue the same occurrence at once enqueue it once (tasks.submit)."""
    return prepare(spec.task, args=spec.args, kwargs=spec.kwargs,
                   priority=spec.priority, worker_type=spec.worker_type, partition_key=spec.partition_key,
                   idempotency_key=None if due is None else f"schedule:{spec.id}:{run_store.due_text(due.timestamp())}",
                   trusted=spec.trusted, schedule=spec.id)


def schedule_details(schedule: Schedule, *, now: datetime | None = None, states: int = 20) -> dict:
    """next_run_at, last_run_at and recent_runs (newest first, with each task's state)."""
    from tasks.state import TaskNotFound, task_status

    now = now or datetime.now(UTC)
    spec = spec_of(schedule, trusted=True)
    try:
        r = get_redis()
        state = run_store.read_state(r, [schedule.pk])[schedule.pk]
        recent = run_store.recent_runs(r, schedule.pk)
    except redis.RedisError:
        state, recent = run_store.State(None, None), []
    after = spec.first_after
    if state.last_due is not None:
        after = max(after, datetime.fromtimestamp(state.last_due, UTC))
    # An occurrence the beats have not handled yet (due within the grace) still counts as next.
    upcoming = spec.next_due(max(after, now - timedelta(seconds=settings.VOKAFLOW_SCHEDULE_GRACE))) \
        if schedule.enabled else None
    rows = []
    for n, run in enumerate(recent):
        task_state = "SKIPPED" if run.skipped else None
        if run.task_id and n < states:  # a list shows no run's state: no read per run
            try:
                task_state = task_status(run.task_id)["state"]
            except TaskNotFound:
                task_state = "EXPIRED"
        rows.append({"due_at": datetime.fromtimestamp(run.due, UTC), "task_id": run.task_id, "state": task_state,
                     "skipped": run.skipped, "manual": run.manual})
    return {"next_run_at": upcoming, "last_run_at": rows[0]["due_at"] if rows else None, "recent_runs": rows}


def schedule_apply(schedule: Schedule, data: dict, *, creating: bool, submission: bool = True) -> None:
    """Check each given field and set it on `schedule` (not saved); then check the schedule as a
    whole (with `submission`, that its occurrence would be accepted). ScheduleInvalid names the
    first bad field."""
    for name in FIELDS:
        if name in data:
            setattr(schedule, name, _clean(name, data[name]))
    if creating:
        for name in ("name", "task"):
            if not getattr(schedule, name):
                raise ScheduleInvalid(name, "required")
    if schedule.every and schedule.cron:
        raise ScheduleInvalid("every", "give either every (seconds) or cron, not both")
    if not schedule.every and not schedule.cron:
        raise ScheduleInvalid("every", "required: every (seconds) or cron")
    if schedule.start_at and schedule.end_at and schedule.end_at <= schedule.start_at:
        raise ScheduleInvalid("end_at", "must be after start_at")
    if schedule.cron:
        cron, tz = parse_cron(schedule.cron), zone(schedule.timezone)
        if next_cron(cron, tz, schedule.start_at or datetime.now(UTC)) is None:
            raise ScheduleInvalid("cron", f"never fires (no matching day within {HORIZON_DAYS // 366} years)")
    spec = spec_of(_unsaved(schedule), trusted=False)
    if spec.next_due(spec.first_after) is None:
        raise ScheduleInvalid("end_at", "the schedule would never run again: its end_at is before its next due time")
    if not submission:
        return
    try:  # the same rules as a submission: allow-list, arguments, priority, worker type
        occurrence_request(spec, None)
    except SubmissionError as exc:
        raise ScheduleInvalid(exc.field, exc.message) from None


def _unsaved(schedule: Schedule) -> Schedule:
    now = _now()
    schedule.created_at = schedule.created_at or now
    schedule.updated_at = schedule.updated_at or now
    schedule.active_since = schedule.active_since or now
    return schedule


def _clean(name: str, value: Any) -> Any:
    """One field's value as stored; ScheduleInvalid names it."""
    from tasks.validation import MAX_KEY_LENGTH
    from vokaflow.json_input import valid_unicode

    def text(limit: int, *, blank: bool = False) -> str:
        if not isinstance(value, str) or (not blank and not value.strip()):
            raise ScheduleInvalid(name, "must be a non-empty string" if not blank else "must be a string")
        if len(value) > limit:
            raise ScheduleInvalid(name, f"at most {limit} characters")
        if not valid_unicode(value):
            raise ScheduleInvalid(name, "not valid Unicode (it holds a lone surrogate)")
        return value

    if name in ("name", "task"):
        return text(200)
    if name in ("args", "kwargs"):
        kind = list if name == "args" else dict
        if value is None:
            return kind()
        if not isinstance(value, kind):
            expected = "a list" if kind is list else "an object"
            raise ScheduleInvalid(name, f"must be {expected}, got {type(value).__name__}")
        try:
            if "\\u0000" in json.dumps(value):  # PostgreSQL's JSON cannot hold it
                raise ScheduleInvalid(name, "must not contain the NUL character (\\u0000)")
        except (TypeError, ValueError, RecursionError):
            raise ScheduleInvalid(name, "not JSON, or nested too deep") from None
        return value
    if name in ("priority", "worker_type"):
        return "" if value is None else text(32, blank=True)
    if name == "partition_key":
        return None if value is None else text(MAX_KEY_LENGTH, blank=True)
    if name == "every":
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10 * 366 * 86400:
            raise ScheduleInvalid(name, "a whole number of seconds from 1 to 316224000 (ten years)")
        return value
    if name == "cron":
        if value is None or value == "":
            return ""
        try:
            parse_cron(text(200))
        except RecurrenceError as exc:
            raise ScheduleInvalid(name, str(exc)) from None
        return " ".join(value.split())
    if name == "timezone":
        try:
            zone(text(64))
        except RecurrenceError as exc:
            raise ScheduleInvalid(name, str(exc)) from None
        return value
    if name in ("start_at", "end_at"):
        if value is None:
            return None
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise ScheduleInvalid(name, "must be a date-time with a time zone (ISO 8601)")
        if not EARLIEST <= value <= LATEST:
            raise ScheduleInvalid(name, f"must be between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d}")
        return value
    if name == "enabled":
        if not isinstance(value, bool):
            raise ScheduleInvalid(name, "must be true or false")
        return value
    choices = {"overlap": Schedule.Overlap.values, "missed": Schedule.Missed.values}[name]
    if value not in choices:
        raise ScheduleInvalid(name, f"one of {', '.join(choices)}")
    return value


def announce(schedule_id: int) -> None:
    """Tell every beat that this schedule changed (or went away). Redis away: the beats' periodic
    full reload picks the change up instead."""
    try:
        get_redis().xadd(keys.SCHEDULE_CHANGES, {"id": str(schedule_id)}, maxlen=CHANGES_KEPT, approximate=True)
    except redis.RedisError as exc:
        logger.warning("could not announce the change of schedule %s: %s", schedule_id, exc)


def schedule_sync_code() -> None:
    """Create or update the platform's own schedules from the code and settings."""
    for code in CODE_SCHEDULES:
        every = max(1, round(float(getattr(settings, code.every_setting))))
        schedule = Schedule.objects.filter(name=code.name).first()
        if schedule is None:
            schedule = Schedule(name=code.name, active_since=_now())
        elif (schedule.task, schedule.every, schedule.source, schedule.enabled) == \
                (code.task, every, Schedule.Source.CODE, True):
            continue
        else:
            schedule.active_since = _now()
        schedule.task, schedule.every, schedule.cron, schedule.source = code.task, every, "", Schedule.Source.CODE
        schedule.enabled = True
        schedule.save()
        announce(schedule.pk)

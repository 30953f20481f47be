"""A schedule as a beat holds it (no database needed) and what is due of it at a given moment.

The rules, all pure functions of (schedule, last occurrence handled, now):
- due times are `anchor + n × every` (anchor: `start_at`, else when the schedule was made; the
  first run one interval after it was made) or the cron's firings in its time zone; none before
  `start_at`, none after `end_at`, none before `active_since` (when it was made, enabled again
  or re-timed);
- an occurrence due at most GRACE seconds ago is on time and runs; one due longer ago was missed
  (no beat ran then): `missed: run_once` runs the latest missed one once, unless an on-time one
  runs anyway, `missed: skip` runs none of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from vokaflow.core.recurrence import Cron, next_cron, next_every, parse_cron, zone

ON_TIME_LIMIT = 1000  # on-time occurrences of one schedule handled in one pass (more: the latest ones)


@dataclass(frozen=True)
class Spec:
    id: int
    name: str
    task: str
    args: list
    kwargs: dict
    priority: str | None
    worker_type: str | None
    partition_key: str | None
    owner: int | None
    every: int | None
    cron: Cron | None
    tz: ZoneInfo
    anchor: datetime
    first_after: datetime  # occurrences strictly after this one may run
    end_at: datetime | None
    enabled: bool
    overlap: str
    missed: str
    trusted: bool  # declared by the platform: any registered task, not only submittable ones
    version: str = field(default="", compare=False)

    def next_due(self, after: datetime) -> datetime | None:
        if self.every:
            due: datetime | None = next_every(self.every, self.anchor, after)
        else:
            assert self.cron is not None
            due = next_cron(self.cron, self.tz, after)
        if due is not None and self.end_at is not None and due > self.end_at:
            return None
        return due

    def latest_due(self, after: datetime, until: datetime) -> datetime | None:
        """The last due time in (after, until], or None."""
        if until <= after:
            return None
        if self.every:
            first = self.next_due(after)
            if first is None or first > until:
                return None
            steps = int((until - self.anchor).total_seconds() // self.every)
            latest = self.anchor + timedelta(seconds=steps * self.every)
            return latest if self.end_at is None or latest <= self.end_at else self._walk(after, self.end_at)
        # Cron: walk a window before `until` that is wide enough to hold a firing.
        for width in (timedelta(hours=1), timedelta(days=1), timedelta(days=32), timedelta(days=400)):
            start = max(after, until - width)
            found = self._walk(start, until)
            if found is not None or start == after:
                return found
        return self._walk(after, until)

    def _walk(self, after: datetime, until: datetime) -> datetime | None:
        last, current = None, self.next_due(after)
        while current is not None and current <= until:
            last, current = current, self.next_due(current)
        return last


@dataclass(frozen=True)
class Plan:
    run: list[datetime]  # occurrences to enqueue, oldest first
    missed: list[datetime]  # occurrences recorded as skipped (the latest missed one stands for the others)
    handled_until: datetime | None  # the latest due time this plan covers


def plan(spec: Spec, last_due: datetime | None, now: datetime, grace: float) -> Plan:
    """What to do with `spec` at `now`, given the latest occurrence already handled."""
    after = max(last_due, spec.first_after) if last_due else spec.first_after
    if not spec.enabled:
        return Plan([], [], None)
    on_time_from = max(after, now - timedelta(seconds=grace))
    run: list[datetime] = []
    due = spec.next_due(on_time_from)
    while due is not None and due <= now:
        run.append(due)
        due = spec.next_due(due)
    run = run[-ON_TIME_LIMIT:]
    first = spec.next_due(after)
    latest_missed = spec.latest_due(after, on_time_from) if first is not None and first <= on_time_from else None
    if latest_missed is None:
        return Plan(run, [], run[-1] if run else None)
    if spec.missed == "run_once" and not run:
        return Plan([latest_missed], [], latest_missed)
    return Plan(run, [latest_missed], run[-1] if run else latest_missed)


def spec_of(schedule, trusted: bool) -> Spec:
    """The beat's copy of a Schedule row."""
    # Whole seconds: due times are names (idempotency keys, the runs' fields) and must read back exactly.
    anchor = (schedule.start_at or schedule.created_at).replace(microsecond=0)
    if schedule.start_at is not None and schedule.start_at.microsecond:
        anchor += timedelta(seconds=1)  # never before start_at
    if schedule.start_at is not None:  # the first occurrence at start_at itself
        first_after = max(schedule.active_since, anchor - timedelta(microseconds=1))
    else:  # the first one interval after the schedule was made
        first_after = max(schedule.active_since, anchor)
    return Spec(
        id=schedule.pk, name=schedule.name, task=schedule.task, args=list(schedule.args or []),
        kwargs=dict(schedule.kwargs or {}), priority=schedule.priority or None,
        worker_type=schedule.worker_type or None, partition_key=schedule.partition_key,
        owner=schedule.owner_id, every=schedule.every, cron=parse_cron(schedule.cron) if schedule.cron else None,
        tz=zone(schedule.timezone or "UTC"), anchor=anchor.astimezone(UTC), first_after=first_after.astimezone(UTC),
        end_at=schedule.end_at.astimezone(UTC) if schedule.end_at else None, enabled=schedule.enabled,
        overlap=schedule.overlap, missed=schedule.missed, trusted=trusted, version=schedule.updated_at.isoformat())

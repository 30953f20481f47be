"""The scheduler of `celery -A vokaflow beat` (also `-S tasks.schedules.beat:ScheduleScheduler`).

Run one beat per host: every beat computes the same due times (tasks.schedules.spec) and
submits each occurrence with an idempotency key made of the schedule and its due time, so the
claim and the enqueue are one MULTI in Redis (tasks.submit): beats that submit the same
occurrence enqueue it once, and a beat that dies before its MULTI has claimed nothing, so
another beat (or itself, restarted) still enqueues it. What a beat needs to run lives in memory:
the schedules are loaded from the database at start, again every FULL_RELOAD seconds, and one
by one when the change stream (tasks.schedules.services.announce) names them; with the
database away it goes on with what it has.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import redis
from celery import beat
from django.conf import settings
from django.db import Error as DatabaseError
from django.db import close_old_connections

from tasks.models import Schedule
from tasks.schedules import runs as run_store
from tasks.schedules.services import occurrence_request, schedule_sync_code
from tasks.schedules.spec import Spec, plan, spec_of
from tasks.validation import SubmissionError
from vokaflow.core import keys
from vokaflow.core.errors import VokaFlowError
from vokaflow.redis import get_redis
from vokaflow.redis_connect import as_text

logger = logging.getLogger(__name__)

MAX_SLEEP = 1.0  # seconds: the change stream is read at least this often, so changes apply within 2 s
FULL_RELOAD = 60.0  # seconds between full reloads (a missed change, a stream trimmed past us)
SUBMIT_BATCH = 500  # occurrences of one owner per submission round trip


class ScheduleScheduler(beat.Scheduler):
    """Celery beat's scheduler interface over the Schedule table; Celery's own entries unused."""

    def __init__(self, *args: Any, clock: Any = None, **kwargs: Any) -> None:
        self.clock = clock or (lambda: datetime.now(UTC))
        self.specs: dict[int, Spec] = {}
        self.heap: list[tuple[float, int, str]] = []  # (when to look, schedule id, version)
        self.stream_id = "$"
        self.reloaded_at = -FULL_RELOAD
        super().__init__(*args, **kwargs)

    # Celery's interface

    def setup_schedule(self):
        try:
            schedule_sync_code()
        except DatabaseError as exc:
            logger.warning("could not write the platform's schedules: %s", exc)
        self.stream_id = self._stream_head()
        self._reload_all()

    def tick(self, *args, **kwargs) -> float:
        now = self.clock()
        self._read_changes()
        if time.monotonic() - self.reloaded_at > FULL_RELOAD:
            self._reload_all()
        due = []
        while self.heap and self.heap[0][0] <= now.timestamp():
            _, schedule_id, version = heapq.heappop(self.heap)
            spec = self.specs.get(schedule_id)
            if spec is not None and spec.version == version:
                due.append(spec)
        if due:
            try:
                self.run_due(due, now)
            except Exception:  # never the end of the beat: these schedules are looked at again soon
                logger.exception("schedules: a pass over %d due schedules failed; trying again", len(due))
                for spec in due:
                    self._push(spec, now.timestamp() + MAX_SLEEP)
        wait = self.heap[0][0] - self.clock().timestamp() if self.heap else MAX_SLEEP
        return max(0.0, min(MAX_SLEEP, wait))

    def should_sync(self) -> bool:
        return False

    def sync(self):
        pass

    @property
    def schedule(self):
        return {spec.name: spec for spec in self.specs.values()}

    @property
    def info(self):
        return "    . schedules -> the Schedule table, each occurrence enqueued once (tasks.schedules)"

    # The work

    def run_due(self, specs: list[Spec], now: datetime) -> None:
        """Plan, submit and record the occurrences of `specs` due at `now`; put each back in the
        heap at its next due time (or at once, to try again, when Redis did not answer)."""
        r = get_redis()
        grace = settings.VOKAFLOW_SCHEDULE_GRACE
        try:
            states = run_store.read_state(r, [s.id for s in specs])
        except redis.RedisError as exc:
            logger.warning("schedules wait: Redis did not answer: %s", exc)
            for spec in specs:
                self._push(spec, now.timestamp() + MAX_SLEEP)
            return
        work: dict[int | None, list[tuple[Spec, datetime]]] = defaultdict(list)
        skipped: list[tuple[Spec, run_store.Run]] = []
        for spec in specs:
            last = states[spec.id].last_due
            steps = plan(spec, datetime.fromtimestamp(last, UTC) if last is not None else None, now, grace)
            skipped += [(spec, run_store.Run(d.timestamp(), None, skipped="missed")) for d in steps.missed]
            runs = steps.run
            if runs and spec.overlap == Schedule.Overlap.SKIP and self._still_running(states[spec.id].last_task):
                skipped += [(spec, run_store.Run(d.timestamp(), None, skipped="overlap")) for d in runs]
                runs = []
            elif spec.overlap == Schedule.Overlap.SKIP:
                skipped += [(spec, run_store.Run(d.timestamp(), None, skipped="overlap")) for d in runs[:-1]]
                runs = runs[-1:]
            work[spec.owner] += [(spec, due) for due in runs]
        failed: set[int] = set()
        done: list[tuple[Spec, run_store.Run]] = []
        for owner, items in work.items():
            for start in range(0, len(items), SUBMIT_BATCH):
                batch = items[start:start + SUBMIT_BATCH]
                done_batch, failed_batch = self._submit(owner, batch)
                done += done_batch
                failed |= failed_batch
        recorded = [(spec.id, run) for spec, run in skipped + done if spec.id not in failed]
        for start in range(0, len(recorded), SUBMIT_BATCH):
            try:
                run_store.record_runs(r, recorded[start:start + SUBMIT_BATCH])
            except redis.RedisError as exc:  # the next pass records them (their submissions are idempotent)
                logger.warning("could not record %d runs of schedules: %s", len(recorded[start:start + SUBMIT_BATCH]),
                               exc)
        for spec in specs:
            self._push(spec, now.timestamp() + MAX_SLEEP if spec.id in failed else None, handled=now)

    def _submit(self, owner: int | None, batch: list[tuple[Spec, datetime]]):
        """Submit one owner's occurrences; (runs to record, ids of schedules to try again)."""
        from tasks.submit import BrokerUnavailable, enqueue

        done, requests, placed = [], [], []
        for spec, due in batch:
            try:
                requests.append(occurrence_request(spec, due))
                placed.append((spec, due))
            except SubmissionError as exc:  # the task left the allow-list, its arguments no longer fit
                done.append((spec, run_store.Run(due.timestamp(), None, skipped=f"refused: {exc.detail}")))
        if not requests:
            return done, set()
        try:
            answers = enqueue(requests, owner=owner)
        except BrokerUnavailable as exc:
            logger.warning("schedules wait: %s", exc)
            return [], {spec.id for spec, _ in placed}
        except VokaFlowError as exc:  # the owner's quota is full
            return done + [(spec, run_store.Run(due.timestamp(), None, skipped=f"refused: {exc.detail}"))
                           for spec, due in placed], set()
        return done + [(spec, run_store.Run(due.timestamp(), answer.task_id))
                       for (spec, due), answer in zip(placed, answers, strict=True)], set()

    def _still_running(self, task_id: str | None) -> bool:
        """Whether the last occurrence's task has not finished (Redis errors reach run_due's caller,
        which looks at the schedule again a second later)."""
        if not task_id:
            return False
        from celery import states

        meta = self.app.backend.get_task_meta(task_id)
        if meta.get("status", states.PENDING) in states.READY_STATES:
            return False
        from tasks.records import task_record

        return task_record(task_id) is not None  # PENDING with a record: waiting or running

    def _push(self, spec: Spec, at: float | None = None, handled: datetime | None = None) -> None:
        """Look at `spec` again at `at`, or at its next due time after what was handled."""
        if at is None:
            after = max(handled or spec.first_after, spec.first_after)
            due = spec.next_due(after) if spec.enabled else None
            if due is None:
                return
            at = due.timestamp()
        heapq.heappush(self.heap, (at, spec.id, spec.version))

    def _load(self, schedule: Schedule) -> None:
        try:
            spec = spec_of(schedule, trusted=schedule.source == Schedule.Source.CODE)
        except ValueError as exc:  # a row edited by hand into something unusable
            logger.warning("schedule %s is skipped: %s", schedule.name, exc)
            self.specs.pop(schedule.pk, None)
            return
        old = self.specs.get(spec.id)
        self.specs[spec.id] = spec
        if old is None or old.version != spec.version:
            self._push(spec, self.clock().timestamp())  # look now: the stored state says what is due

    def _reload_all(self) -> None:
        self.reloaded_at = time.monotonic()
        try:
            close_old_connections()
            rows = list(Schedule.objects.all())
        except DatabaseError as exc:
            logger.warning("schedules: database unavailable, running the %d schedules already loaded: %s",
                           len(self.specs), exc)
            return
        seen = set()
        for row in rows:
            seen.add(row.pk)
            self._load(row)
        for gone in set(self.specs) - seen:
            del self.specs[gone]

    def _read_changes(self) -> None:
        try:
            entries: Any = get_redis().xread({keys.SCHEDULE_CHANGES: self.stream_id}, count=10_000)
        except redis.RedisError as exc:
            logger.warning("schedules: could not read changes: %s", exc)
            return
        changed = set()
        for _stream, items in entries or []:
            for entry_id, fields in items:
                self.stream_id = as_text(entry_id)
                changed.add(int(as_text(fields.get(b"id") or fields.get("id") or 0)))
        if not changed:
            return
        try:
            close_old_connections()
            rows = {row.pk: row for row in Schedule.objects.filter(pk__in=changed)}
        except DatabaseError as exc:
            logger.warning("schedules: database unavailable, changes apply when it is back: %s", exc)
            self.reloaded_at = -FULL_RELOAD  # reload everything on the next tick that reaches it
            return
        for schedule_id in changed:
            if schedule_id in rows:
                self._load(rows[schedule_id])
            else:
                self.specs.pop(schedule_id, None)

    def _stream_head(self) -> str:
        try:
            last = get_redis().xrevrange(keys.SCHEDULE_CHANGES, count=1)
        except redis.RedisError:
            return "0-0"
        return as_text(last[0][0]) if last else "0-0"

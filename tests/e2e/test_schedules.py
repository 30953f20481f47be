"""Schedules run by real `celery -A vokaflow beat` processes (tasks.schedules.beat) and real workers.

The ledger: every occurrence a beat enqueues is a message in its queue that names its schedule
(header `vokaflow_schedule`), and its idempotency key `schedule:<id>:<due>` names the task. Three
beats run together (one is SIGKILLed half way): each schedule's due times from its first to the
end of the run are each enqueued by exactly one message."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta

import pytest

from tasks.models import DeadLetter, Schedule
from tasks.schedules import runs as run_store
from tasks.schedules.services import schedule_create, schedule_update
from tests.conftest import ROOT, wait_for, worker_env
from vokaflow.core.workers import WorkerType

pytestmark = pytest.mark.django_db(transaction=True)

SCHEDULES = 50
EVERY = 2  # seconds
RUN_SECONDS = 30


class Beat:
    def __init__(self, tmp_path, n: int, env: dict):
        self.log_path = tmp_path / f"beat-{n}.log"
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "vokaflow", "beat", "-l", "INFO",
                                      "-s", str(tmp_path / f"beat-{n}")], cwd=ROOT, env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self, kill: bool = False) -> None:
        if self.proc.poll() is None:
            (self.proc.kill if kill else self.proc.terminate)()
            self.proc.wait(15)
        self.log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def beats(tmp_path):
    started: list[Beat] = []

    def start(n: int, **env) -> list[Beat]:
        more = [Beat(tmp_path, len(started) + i, worker_env(DJANGO_SETTINGS_MODULE="vokaflow.settings", **env))
                for i in range(n)]
        started.extend(more)
        return more

    yield start
    for beat in started:
        beat.stop()


def queued_messages(redis_client) -> list[dict]:
    out = []
    for t in WorkerType:
        for key in redis_client.scan_iter(match=f"{t.short}.*", count=1000):
            if redis_client.type(key) == b"list":
                out += [json.loads(raw) for raw in redis_client.lrange(key, 0, -1)]
    return out


def claims(redis_client) -> dict[tuple[int, float], str]:
    """(schedule id, due) → task id, from the occurrences' idempotency keys."""
    found = {}
    for key in redis_client.scan_iter(match="*vokaflow:idem:system:schedule:*", count=1000):
        _, _, rest = key.decode().partition("schedule:")
        schedule_id, due = rest.split(":")
        found[(int(schedule_id), float(due))] = redis_client.get(key).decode()
    return found


@pytest.mark.slow
def test_three_beats_enqueue_every_occurrence_exactly_once_through_a_sigkill(beats, redis_client):
    made = [schedule_create(owner=None, name=f"every-{n}", task="vokaflow.noop", every=EVERY) for n in range(SCHEDULES)]
    first, second, third = beats(3)
    started = time.time()
    time.sleep(RUN_SECONDS / 2)
    first.stop(kill=True)  # SIGKILL mid-run: the other two go on
    time.sleep(RUN_SECONDS / 2)
    second.stop()
    third.stop()
    stopped = time.time()

    messages = queued_messages(redis_client)
    by_schedule = Counter(m["headers"].get("vokaflow_schedule") for m in messages)
    task_ids = Counter(m["headers"]["id"] for m in messages)
    assert max(task_ids.values()) == 1, "a task id was enqueued twice"
    ledger = claims(redis_client)
    for schedule in made:
        anchor = schedule.created_at.replace(microsecond=0)
        expected = set()
        due = anchor + timedelta(seconds=EVERY)
        while due.timestamp() <= stopped - 1.5:  # a beat looks at least once a second
            expected.add(due.timestamp())
            due += timedelta(seconds=EVERY)
        got = {d for (sid, d) in ledger if sid == schedule.pk}
        assert expected <= got, f"{schedule.name}: occurrences lost {sorted(expected - got)[:5]}"
        assert all(d <= stopped for d in got)
        assert by_schedule[schedule.pk] == len(got), f"{schedule.name}: {by_schedule[schedule.pk]} messages " \
                                                     f"for {len(got)} occurrences"
    assert set(task_ids) == set(ledger.values())
    assert sum(by_schedule[s.pk] for s in made) >= SCHEDULES * (RUN_SECONDS // EVERY - 2)
    assert stopped - started >= RUN_SECONDS


def test_a_change_over_the_api_reaches_running_beats_and_a_disabled_schedule_stops(beats, redis_client):
    schedule = schedule_create(owner=None, name="switch", task="vokaflow.noop", every=1)
    beats(2)

    def count() -> int:
        return sum(1 for m in queued_messages(redis_client) if m["headers"].get("vokaflow_schedule") == schedule.pk)

    wait_for(lambda: count() >= 2, 30, 0.2, "two occurrences")
    schedule_update(schedule_id=schedule.pk, enabled=False)
    time.sleep(2)  # a change applies within 2 s
    settled = count()
    time.sleep(3)
    assert count() == settled


def test_overlap_skip_and_a_failing_occurrence_dead_lettered_with_its_schedule(beats, start_worker, redis_client):
    start_worker("io", concurrency=2)
    start_worker("general")
    slow = schedule_create(owner=None, name="slow", task="vokaflow.sleep", args=[3], every=1, overlap="skip")
    failing = schedule_create(owner=None, name="failing", task="vokaflow.fail", args=["nightly export"], every=1)
    beats(1)
    letter = wait_for(lambda: DeadLetter.objects.filter(schedule_id=failing.pk).first(), 40, 0.2,
                      "a dead letter of the failing schedule")
    assert letter.task_name == "vokaflow.fail" and "nightly export" in letter.error
    schedule_update(schedule_id=failing.pk, enabled=False)

    def settled_runs():
        runs = run_store.recent_runs(redis_client, slow.pk)
        return runs if sum(1 for r in runs if r.task_id) >= 2 and any(r.skipped == "overlap" for r in runs) else None

    runs = wait_for(settled_runs, 40, 0.5, "two runs of the slow schedule and a skipped one")
    started_at = sorted(r.due for r in runs if r.task_id)
    # A 3 s task every second, skipped while the previous runs: runs at least 3 s apart.
    assert all(b - a >= 3 for a, b in zip(started_at, started_at[1:], strict=False)), started_at
    assert Schedule.objects.get(pk=slow.pk).enabled


def test_missed_occurrences_after_every_beat_was_down_run_once_or_not_at_all(beats, redis_client):
    grace = 1.0
    once = schedule_create(owner=None, name="missed-once", task="vokaflow.noop", every=2)
    skip = schedule_create(owner=None, name="missed-skip", task="vokaflow.noop", every=2, missed="skip")
    (first,) = beats(1, VOKAFLOW_SCHEDULE_GRACE=grace)
    wait_for(lambda: run_store.recent_runs(redis_client, skip.pk), 20, 0.2, "a first occurrence")
    first.stop(kill=True)
    down = time.time()
    time.sleep(7)  # three or four occurrences fall due with no beat running
    back = time.time()
    (second,) = beats(1, VOKAFLOW_SCHEDULE_GRACE=grace)
    wait_for(lambda: any(r.due > back for r in run_store.recent_runs(redis_client, skip.pk)), 20, 0.2,
             "the beat back, running on time again")
    second.stop()

    def gap(schedule) -> list[run_store.Run]:
        """What was recorded of the occurrences that fell due while no beat ran and were more than
        the grace old when the second beat started (after `back`): at least two of them."""
        return [r for r in run_store.recent_runs(redis_client, schedule.pk) if down + 0.5 < r.due < back - grace]

    # Only the latest missed occurrence is recorded: enqueued (run_once, when nothing ran on time)
    # or skipped as missed; the ones before it are neither. missed: skip never enqueues one.
    assert len(gap(once)) <= 1 and len(gap(skip)) <= 1, (gap(once), gap(skip))
    assert not any(r.task_id for r in gap(skip)), gap(skip)
    assert back - grace - (down + 0.5) > 2 * EVERY  # so the gap held at least two due times

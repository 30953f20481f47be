"""Schedules: due times (cron, intervals, daylight saving) on a clock the test sets, the plan a
beat makes of them, the API and its permissions, and the beat's scheduler run tick by tick
against the real Redis with a clock the test moves."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tasks.models import Schedule
from tasks.schedules import runs as run_store
from tasks.schedules.beat import ScheduleScheduler
from tasks.schedules.services import schedule_create, schedule_update
from tasks.schedules.spec import plan, spec_of
from tests.conftest import client_as, user_with_perms
from vokaflow.core.recurrence import RecurrenceError, next_cron, parse_cron, zone

BASE = "/api/high-scale-tasks"
NEW_YORK = zone("America/New_York")


def fires(cron: str, tz, start: datetime, n: int) -> list[datetime]:
    parsed, out, t = parse_cron(cron), [], start
    for _ in range(n):
        t = next_cron(parsed, tz, t)
        out.append(t)
    return out


# Due times, on instants the test names (no calendar of today's).


def test_a_local_time_skipped_by_spring_forward_fires_at_the_first_valid_instant_after_it():
    # 2026-03-08: New York's clocks jump from 02:00 to 03:00; 02:30 does not exist that night.
    got = fires("30 2 * * *", NEW_YORK, datetime(2026, 3, 7, 12, tzinfo=UTC), 3)
    assert [t.astimezone(NEW_YORK).strftime("%m-%d %H:%M %z") for t in got] == [
        "03-08 03:00 -0400", "03-09 02:30 -0400", "03-10 02:30 -0400"]


def test_a_local_time_that_happens_twice_fires_once():
    # 2026-11-01: clocks go back from 02:00 EDT to 01:00 EST; 01:30 happens twice.
    got = fires("30 1 * * *", NEW_YORK, datetime(2026, 10, 31, 12, tzinfo=UTC), 2)
    assert [t.isoformat() for t in got] == ["2026-11-01T05:30:00+00:00", "2026-11-02T06:30:00+00:00"]
    quarter = fires("*/30 * * * *", NEW_YORK, datetime(2026, 11, 1, 4, 50, tzinfo=UTC), 4)
    assert [t.astimezone(NEW_YORK).strftime("%H:%M %z") for t in quarter] == [
        "01:00 -0400", "01:30 -0400", "02:00 -0500", "02:30 -0500"]


def test_cron_fields_names_steps_and_either_day_rule():
    start = datetime(2026, 1, 1, tzinfo=UTC)  # a Thursday
    assert [t.isoformat() for t in fires("0 9 * * mon-fri", zone("UTC"), start, 2)] == [
        "2026-01-01T09:00:00+00:00", "2026-01-02T09:00:00+00:00"]
    # Day of month 15 or any Sunday: either matches when both are restricted.
    assert [t.day for t in fires("0 0 15 * sun", zone("UTC"), start, 3)] == [4, 11, 15]
    assert next_cron(parse_cron("0 0 29 2 *"), zone("UTC"), start).year == 2028
    assert next_cron(parse_cron("0 0 30 2 *"), zone("UTC"), start) is None


@pytest.mark.parametrize("bad", ["* * *", "60 * * * *", "5-1 * * * *", "*/0 * * * *", "x * * * *", "* * 0 * *"])
def test_a_cron_that_does_not_parse_names_why(bad):
    with pytest.raises(RecurrenceError):
        parse_cron(bad)


# The plan a beat makes: what runs, what was missed.


def spec(db_schedule=None, **fields):
    made = datetime(2026, 1, 1, tzinfo=UTC)
    row = Schedule(pk=1, name="s", task="vokaflow.noop", every=10, created_at=made, updated_at=made,
                   active_since=made, **fields)
    return spec_of(row, trusted=True)


def at(seconds: float) -> datetime:
    return datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)


def test_every_is_anchored_so_every_beat_computes_the_same_due_times():
    s = spec()
    assert plan(s, None, at(9), grace=60).run == []
    assert plan(s, None, at(25), grace=60).run == [at(10), at(20)]
    assert plan(s, at(20), at(25), grace=60).run == []
    assert spec(start_at=at(3)).next_due(at(0)) == at(3)


def test_missed_occurrences_run_once_or_are_skipped():
    once, skip = spec(), spec(missed="skip")
    # Last handled at 10 s, now 500 s, grace 60: 450..500 are on time, 20..440 were missed.
    run_once = plan(once, at(10), at(500), grace=60)
    assert run_once.run == [at(450), at(460), at(470), at(480), at(490), at(500)]
    assert run_once.missed == [at(440)]
    # Nothing on time (grace 5 s, now 503): one run stands for all the missed ones, or none.
    assert plan(once, at(10), at(503), grace=5).run == [at(500)]
    assert plan(once, at(10), at(509), grace=5).run == [at(500)]
    skipped = plan(skip, at(10), at(509), grace=5)
    assert skipped.run == [] and skipped.missed == [at(500)] and skipped.handled_until == at(500)


def test_nothing_runs_before_start_after_end_or_while_disabled():
    assert plan(spec(start_at=at(100)), None, at(99), grace=60).run == []
    assert plan(spec(end_at=at(30)), None, at(55), grace=60).run == [at(10), at(20), at(30)]
    assert plan(spec(enabled=False), None, at(55), grace=60).run == []


# The API: model permissions, 400s naming the field, read-only platform schedules.


@pytest.fixture
def admin_client(db):
    return client_as(user_with_perms("sched-admin", "tasks.view_schedule", "tasks.add_schedule",
                                     "tasks.change_schedule", "tasks.delete_schedule", is_staff=True))


def test_create_read_change_run_and_delete(admin_client, redis_client):
    made = admin_client.post(f"{BASE}/schedules/", {"name": "nightly", "task": "vokaflow.echo", "args": [1],
                                                    "cron": "0 3 * * *", "timezone": "Europe/Paris"}, format="json")
    assert made.status_code == 201, made.content
    body = made.json()
    assert body["owner"] is not None and body["source"] == "api" and body["recent_runs"] == []
    assert body["next_run_at"].endswith(("T02:00:00Z", "T01:00:00Z"))  # 03:00 in Paris, summer or winter
    sid = body["id"]
    changed = admin_client.patch(f"{BASE}/schedules/{sid}/", {"enabled": False}, format="json")
    assert changed.status_code == 200 and changed.json()["enabled"] is False and changed.json()["next_run_at"] is None
    run = admin_client.post(f"{BASE}/schedules/{sid}/run")
    assert run.status_code == 202
    detail = admin_client.get(f"{BASE}/schedules/{sid}").json()
    assert [r["task_id"] for r in detail["recent_runs"]] == [run.json()["task_id"]]
    assert detail["recent_runs"][0]["manual"] is True and detail["recent_runs"][0]["state"] == "PENDING"
    assert detail["last_run_at"] is not None
    listed = admin_client.get(f"{BASE}/schedules/").json()
    assert "nightly" in [s["name"] for s in listed["results"]]
    assert admin_client.delete(f"{BASE}/schedules/{sid}/").status_code == 204
    assert admin_client.get(f"{BASE}/schedules/{sid}/").status_code == 404
    assert not redis_client.exists(f"vokaflow:schedule:{{s{sid}}}:runs")


@pytest.mark.parametrize(("body", "field"), [
    ({"every": 5, "cron": "* * * * *"}, "every"),
    ({}, "every"),
    ({"every": 0}, "every"),
    ({"every": True}, "every"),
    ({"every": 5, "task": "os.system"}, "task"),
    ({"cron": "0 0 30 2 *"}, "cron"),
    ({"cron": "61 * * * *"}, "cron"),
    ({"cron": "* * * * *", "timezone": "Mars/Olympus"}, "timezone"),
    ({"every": 5, "start_at": "2030-01-02T00:00:00Z", "end_at": "2030-01-01T00:00:00Z"}, "end_at"),
    ({"every": 5, "args": ["x"] * 3, "task": "vokaflow.sleep"}, "args"),
    ({"every": 5, "priority": "URGENT"}, "priority"),
    ({"every": 5, "overlap": "queue"}, "overlap"),
    ({"every": 5, "surprise": 1}, "surprise"),
])
def test_bad_input_is_a_400_naming_the_field_and_nothing_is_saved(admin_client, body, field):
    payload = {"name": "bad", "task": "vokaflow.echo", **body}
    answer = admin_client.post(f"{BASE}/schedules/", payload, format="json")
    assert answer.status_code == 400, answer.content
    assert field in answer.json()["errors"], answer.json()
    assert not Schedule.objects.filter(name="bad").exists()


def test_null_arguments_are_arguments_and_every_error_is_one_level_deep(admin_client):
    """Found by schemathesis: a null kwarg answered 400 with a nested `errors` object, which the
    schema's `errors` (field → list of reasons) does not allow."""
    answer = admin_client.post(f"{BASE}/schedules/", {"name": "nulls", "task": "vokaflow.echo", "every": 5,
                                                      "args": [None], "kwargs": {"a": None}}, format="json")
    assert answer.status_code == 201, answer.content
    assert answer.json()["args"] == [None] and answer.json()["kwargs"] == {"a": None}
    answer = admin_client.post(f"{BASE}/schedules/", {"name": "n2", "task": "x" * 300, "every": 5,
                                                      "kwargs": {"a": None}}, format="json")
    errors = answer.json()["errors"]
    assert answer.status_code == 400 and all(isinstance(v, list) and all(isinstance(r, str) for r in v)
                                             for v in errors.values()), errors


def test_a_lone_surrogate_is_a_400_naming_the_field(admin_client):
    body = '{"name": "\\ud800", "task": "vokaflow.echo", "every": 5}'
    answer = admin_client.post(f"{BASE}/schedules/", body, content_type="application/json")
    assert answer.status_code == 400 and "name" in answer.json()["errors"], answer.content


def test_permissions_follow_the_model(db):
    from rest_framework.test import APIClient

    made = schedule_create(owner=None, name="perm", task="vokaflow.noop", every=60)
    assert APIClient().get(f"{BASE}/schedules/").status_code == 401
    viewer = client_as(user_with_perms("sched-viewer", "tasks.view_schedule"))
    nobody = client_as(user_with_perms("sched-nobody", is_staff=True))
    assert nobody.get(f"{BASE}/schedules/").status_code == 403
    assert viewer.get(f"{BASE}/schedules/{made.pk}/").status_code == 200
    assert viewer.patch(f"{BASE}/schedules/{made.pk}/", {"enabled": False}, format="json").status_code == 403
    assert viewer.post(f"{BASE}/schedules/{made.pk}/run").status_code == 403
    assert viewer.delete(f"{BASE}/schedules/{made.pk}/").status_code == 403
    assert viewer.post(f"{BASE}/schedules/", {"name": "x", "task": "vokaflow.noop", "every": 5},
                       format="json").status_code == 403


def test_the_platforms_own_schedules_are_listed_and_read_only(admin_client):
    code = {s["name"]: s for s in admin_client.get(f"{BASE}/schedules/").json()["results"] if s["source"] == "code"}
    assert set(code) == {"vokaflow.dlq_flush", "vokaflow.dlq_prune"}
    flush = code["vokaflow.dlq_flush"]["id"]
    assert admin_client.patch(f"{BASE}/schedules/{flush}/", {"every": 1}, format="json").status_code == 409
    assert admin_client.delete(f"{BASE}/schedules/{flush}/").status_code == 409


# The scheduler, tick by tick, with a clock the test moves; real Redis, real submissions.


class Clock:
    def __init__(self, start: datetime):
        self.now = start

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    # Only the test's schedules: the platform's own would be due at times of their own.
    monkeypatch.setattr("tasks.schedules.beat.schedule_sync_code", lambda: None)
    Schedule.objects.filter(source=Schedule.Source.CODE).delete()
    clock = Clock(datetime.now(UTC))
    monkeypatch.setattr("tasks.schedules.services._now", clock)  # when a schedule is enabled again
    return clock


def made_(clock, **fields) -> Schedule:
    """A schedule made now, with the test's clock set to that moment."""
    schedule = schedule_create(owner=None, task="vokaflow.noop", **fields)
    clock.now = schedule.created_at
    return schedule


def beat(clock) -> ScheduleScheduler:
    from vokaflow.celery import app

    return ScheduleScheduler(app=app, clock=clock)


def occurrences(redis_client, schedule_id: int) -> list[run_store.Run]:
    return sorted(run_store.recent_runs(redis_client, schedule_id), key=lambda r: r.due)


def three_schedulers_enqueue_each_occurrence_once(clock, client, primaries) -> None:
    made = made_(clock, name="tick", every=2)
    beats = [beat(clock) for _ in range(3)]
    for _ in range(10):
        clock.now += timedelta(seconds=1)
        for b in beats:
            b.tick()
    runs = occurrences(client, made.pk)
    assert len(runs) == 5 and len({r.task_id for r in runs}) == 5
    anchor = made.created_at.replace(microsecond=0)
    assert [r.due for r in runs] == [(anchor + timedelta(seconds=2 * n)).timestamp() for n in range(1, 6)]
    queued = sum(node.llen(k) for node in primaries for k in node.scan_iter(match="general.*"))
    assert queued == 5


@pytest.mark.django_db(transaction=True)
def test_three_schedulers_ticking_together_enqueue_each_occurrence_once(clock, redis_client):
    three_schedulers_enqueue_each_occurrence_once(clock, redis_client, [redis_client])


@pytest.mark.django_db(transaction=True)
def test_on_a_redis_cluster_too(clock, on_cluster):
    # The runs' keys share the schedule's tag, the occurrences go in their partitions' slots.
    three_schedulers_enqueue_each_occurrence_once(clock, on_cluster.client(), on_cluster.primaries())


@pytest.mark.django_db(transaction=True)
def test_a_change_applies_on_the_next_tick_and_disabling_stops_it(clock, redis_client):
    made = made_(clock, name="change", every=2)
    b = beat(clock)
    clock.now += timedelta(seconds=2)
    b.tick()
    assert len(occurrences(redis_client, made.pk)) == 1
    schedule_update(schedule_id=made.pk, enabled=False)
    for _ in range(5):
        clock.now += timedelta(seconds=2)
        b.tick()
    assert len(occurrences(redis_client, made.pk)) == 1
    schedule_update(schedule_id=made.pk, enabled=True)
    clock.now += timedelta(seconds=1)
    b.tick()
    clock.now += timedelta(seconds=2)
    b.tick()
    assert len(occurrences(redis_client, made.pk)) == 2  # what fell due while disabled never runs


@pytest.mark.django_db(transaction=True)
def test_a_beat_back_after_an_outage_runs_missed_occurrences_once_or_skips_them(clock, redis_client, settings):
    settings.VOKAFLOW_SCHEDULE_GRACE = 3
    skip = made_(clock, name="skip", every=2, missed="skip")
    once = made_(clock, name="once", every=2)  # made last: the clock starts at the later one
    clock.now += timedelta(seconds=2)
    beat(clock).tick()
    clock.now += timedelta(seconds=60)  # no beat ran for a minute
    beat(clock).tick()
    after_once = occurrences(redis_client, once.pk)
    after_skip = occurrences(redis_client, skip.pk)
    # On time (within 3 s): the occurrence at +62 s (and +60 s) runs for both; run_once also ran
    # nothing extra since on-time ones ran; the older ones were recorded as missed once.
    assert [r.task_id is not None for r in after_once] == [True, False, True, True]
    assert [r.skipped for r in after_skip] == [None, "missed", None, None]


@pytest.mark.django_db(transaction=True)
def test_overlap_skip_enqueues_nothing_while_the_previous_occurrence_waits(clock, redis_client):
    made = made_(clock, name="overlap", every=2, overlap="skip")
    b = beat(clock)
    for _ in range(3):
        clock.now += timedelta(seconds=2)
        b.tick()
    runs = occurrences(redis_client, made.pk)
    assert [r.skipped for r in runs] == [None, "overlap", "overlap"]  # no worker: the first still waits


@pytest.mark.django_db(transaction=True)
def test_a_beat_goes_on_with_what_it_has_while_the_database_is_away(clock, redis_client, monkeypatch):
    from django.db import OperationalError

    made = made_(clock, name="no-db", every=2)
    b = beat(clock)

    def away(*args, **kwargs):
        raise OperationalError("connection refused")

    monkeypatch.setattr(Schedule.objects, "all", away)
    monkeypatch.setattr(Schedule.objects, "filter", away)
    monkeypatch.setattr("tasks.schedules.beat.FULL_RELOAD", 0)  # it tries to reload on every tick
    for _ in range(3):
        clock.now += timedelta(seconds=2)
        b.tick()
    assert len(occurrences(redis_client, made.pk)) == 3


# What an attack on the API found, each once.


@pytest.mark.parametrize(("body", "field"), [
    ({"every": 5, "args": ["a\u0000b"]}, "args"),
    ({"every": 5, "kwargs": {"k\u0000": 1}}, "kwargs"),
    ({"cron": "\u00b2 * * * *"}, "cron"),
    ({"cron": "\u0661 * * * *"}, "cron"),
    ({"cron": "0 0 1 1 *", "start_at": "9999-12-31T23:00:00Z"}, "start_at"),
    ({"every": 5, "start_at": "0001-01-01T00:00:00Z"}, "start_at"),
    ({"every": 5, "start_at": "2026-01-01T00:00:00"}, "start_at"),
    ({"cron": "* * * * *", "timezone": "localtime"}, "timezone"),
    ({"cron": "* * * * *", "timezone": "posixrules"}, "timezone"),
    ({"every": 5, "end_at": "2020-01-01T00:00:00Z"}, "end_at"),
])
def test_inputs_an_attack_found_are_400s_naming_the_field(admin_client, body, field):
    answer = admin_client.post(f"{BASE}/schedules/", {"name": "attack", "task": "vokaflow.echo", **body}, format="json")
    assert answer.status_code == 400 and field in answer.json()["errors"], answer.content
    assert not Schedule.objects.filter(name="attack").exists()


def test_a_step_in_a_day_field_does_not_restrict_the_day_as_in_cron():
    got = fires("0 0 */2 * 1", zone("UTC"), datetime(2026, 6, 1, tzinfo=UTC), 3)  # Mondays only
    assert [t.strftime("%a") for t in got] == ["Mon", "Mon", "Mon"]


def test_a_start_at_between_seconds_never_runs_before_it():
    s = spec(start_at=at(0.5))
    assert s.next_due(at(0)) == at(1)


def test_a_schedule_whose_task_left_the_allow_list_can_still_be_disabled(admin_client, monkeypatch):
    made = schedule_create(owner=None, name="gone-task", task="vokaflow.echo", every=60)
    from vokaflow.celery import app

    monkeypatch.setattr(app.tasks["vokaflow.echo"], "submittable", False)
    answer = admin_client.patch(f"{BASE}/schedules/{made.pk}/", {"enabled": False}, format="json")
    assert answer.status_code == 200 and answer.json()["enabled"] is False


def test_a_users_schedules_go_with_the_user(db):
    user = user_with_perms("leaving")
    schedule_create(owner=user.pk, name="theirs", task="vokaflow.noop", every=60)
    user.delete()
    assert not Schedule.objects.filter(name="theirs").exists()


@pytest.mark.django_db(transaction=True)
def test_run_now_takes_no_due_occurrence_away(clock, redis_client):
    from tasks.schedules.services import schedule_run_now

    made = made_(clock, name="run-now", every=2)
    b = beat(clock)
    clock.now += timedelta(seconds=2)
    b.tick()
    clock.now += timedelta(seconds=2)  # due, not yet handled: the beat has not ticked
    schedule_run_now(schedule_id=made.pk)
    b.tick()
    runs = occurrences(redis_client, made.pk)
    assert [r.manual for r in runs].count(False) == 2 and [r.manual for r in runs].count(True) == 1


@pytest.mark.django_db(transaction=True)
def test_a_redis_error_in_a_pass_does_not_end_the_beat(clock, redis_client, monkeypatch):
    import redis as redis_lib

    made = made_(clock, name="overlap-error", every=2, overlap="skip")
    b = beat(clock)
    clock.now += timedelta(seconds=2)
    b.tick()

    def away(*args, **kwargs):
        raise redis_lib.ConnectionError("gone")

    with monkeypatch.context() as patched:
        patched.setattr(b, "_still_running", away)
        clock.now += timedelta(seconds=2)
        b.tick()  # no exception: the schedule is looked at again a second later
    clock.now += timedelta(seconds=1)
    b.tick()
    assert len(occurrences(redis_client, made.pk)) >= 2

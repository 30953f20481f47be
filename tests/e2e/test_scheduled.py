"""Long delays with real workers: held in Redis, run once and on time, revocable while they wait."""

import time

import pytest

import tests.e2e.worker_tasks  # noqa: F401  (registers tests.stamp here too, to submit it)
from tasks.scheduled import scheduled_count
from tasks.state import revoke_task
from tasks.submit import submit_task
from tests.conftest import task_meta, wait_for, worker_env

VISIBILITY = 2  # seconds; the countdown below is three times as long


def runs(redis_client, key: str) -> list[float]:
    return [float(t) for t in redis_client.lrange(f"vokaflow:test:{key}", 0, -1)]


@pytest.mark.slow
def test_a_countdown_beyond_the_visibility_timeout_runs_exactly_once_on_time(start_worker, redis_client):
    env = worker_env(VOKAFLOW_VISIBILITY_TIMEOUT=VISIBILITY)
    start_worker("general", concurrency=2, env=env)
    start_worker("general", concurrency=2, env=env)  # a second worker that could take it again
    due = time.time() + 3 * VISIBILITY
    submit_task("tests.stamp", args=["once"], countdown=3 * VISIBILITY)
    (ran_at,) = wait_for(lambda: runs(redis_client, "once"), timeout=20, message="the delayed task to run")
    assert abs(ran_at - due) <= 1.5, f"ran {ran_at - due:+.2f} s from its eta"
    time.sleep(3 * VISIBILITY)  # long enough for a redelivery to have happened
    assert len(runs(redis_client, "once")) == 1
    assert scheduled_count() == 0


@pytest.mark.slow
@pytest.mark.django_db
def test_a_scheduled_task_revoked_before_it_is_due_never_runs(start_worker, redis_client):
    start_worker("general")
    revoked = submit_task("tests.stamp", args=["revoked"], countdown=3)
    control = submit_task("tests.stamp", args=["control"], countdown=3)
    revoke_task(revoked)
    wait_for(lambda: runs(redis_client, "control"), timeout=20, message="the control task to run")
    time.sleep(1)
    assert runs(redis_client, "revoked") == []
    assert task_meta(revoked)["status"] == "REVOKED" and task_meta(control)["status"] == "SUCCESS"
    assert scheduled_count() == 0

"""Default time limits per worker type, enforced on thread pools too (a watchdog tells tasks to stop)."""

import json
import time

import pytest

import tests.e2e.worker_tasks  # noqa: F401  (registers tests.hang here too, to submit it)
from tasks.submit import submit_task
from tests.conftest import task_meta, wait_for, wait_for_state, worker_env

pytestmark = pytest.mark.django_db(transaction=True)  # dead letters are written by the workers

SOFT, HARD = 2, 4


def heartbeat(redis_client, worker) -> dict:
    raw = redis_client.get(f"vokaflow:worker:{worker.name}")
    return json.loads(raw) if raw else {}


@pytest.mark.slow
def test_two_long_sleeps_cannot_hold_the_io_pool_from_an_emergency_task_past_the_limit(start_worker):
    from tasks.models import DeadLetter

    start_worker("io", concurrency=2, env=worker_env(VOKAFLOW_SOFT_TIME_LIMIT_IO=SOFT, VOKAFLOW_TIME_LIMIT_IO=HARD))
    sleepers = [submit_task("vokaflow.sleep", args=[60]) for _ in range(2)]
    for task_id in sleepers:
        wait_for_state(task_id, ("STARTED",))
    submitted_at = time.time()
    emergency = submit_task("vokaflow.sleep", args=[0], priority="EMERGENCY")
    started_at = wait_for_state(emergency, timeout=30)["result"]["started_at"]
    assert started_at - submitted_at <= HARD, f"EMERGENCY waited {started_at - submitted_at:.1f} s"
    for task_id in sleepers:
        meta = wait_for_state(task_id, ("FAILURE",))
        assert type(meta["result"]).__name__ == "SoftTimeLimitExceeded"
    wait_for(lambda: DeadLetter.objects.filter(task_id__in=sleepers, reason="time_limit").count() == 2,
             message="the stopped sleeps to be dead-lettered as time_limit")


@pytest.mark.slow
def test_a_thread_task_that_ignores_the_stop_is_reported_stuck_until_it_ends(start_worker, redis_client):
    worker = start_worker("io", concurrency=2)
    # tests.hang declares time_limit=1 and sleeps without checking
    task_id = submit_task("tests.hang", args=[5], worker_type="io")
    wait_for(lambda: any(s["task_id"] == task_id for s in heartbeat(redis_client, worker).get("stuck", [])),
             timeout=10, message="the slot to be reported stuck")
    (stuck,) = heartbeat(redis_client, worker)["stuck"]
    assert stuck["task"] == "tests.hang" and stuck["time_limit"] == 1
    assert redis_client.get(f"vokaflow:cancel:{task_id}") == b"soft_time_limit"
    wait_for_state(task_id, timeout=15)
    wait_for(lambda: heartbeat(redis_client, worker).get("stuck") == [], timeout=10, message="the slot to be free")


def test_the_prefork_pool_applies_the_default_limits_of_its_type(start_worker):
    start_worker("cpu", pool="prefork", env=worker_env(VOKAFLOW_SOFT_TIME_LIMIT_CPU=1, VOKAFLOW_TIME_LIMIT_CPU=3))
    task_id = submit_task("vokaflow.sleep", args=[20], worker_type="cpu")
    meta = wait_for_state(task_id, ("FAILURE",), timeout=20)
    assert type(meta["result"]).__name__ == "SoftTimeLimitExceeded"
    assert task_meta(task_id)["status"] == "FAILURE"

"""DELETE tasks/{id}/ stops a running task for real: terminated on prefork, asked to stop on threads."""

import signal
import time

import pytest

import tests.e2e.worker_tasks  # noqa: F401  (registers the test tasks here too, to submit them)
from tasks.models import DeadLetter
from tasks.submit import submit_task
from tests.conftest import task_meta, wait_for, wait_for_state

BASE = "/api/high-scale-tasks"
pytestmark = pytest.mark.django_db(transaction=True)


def nothing_left_to_run(redis_client) -> bool:
    """Not queued again, not waiting for redelivery."""
    queued = [q for q in redis_client.scan_iter(match="cpu.*") if redis_client.llen(q)]
    queued += [q for q in redis_client.scan_iter(match="io.*") if redis_client.llen(q)]
    return not queued and not redis_client.hlen("unacked")


@pytest.mark.slow
def test_a_prefork_task_is_terminated_and_stays_revoked(start_worker, api, user, redis_client):
    worker = start_worker("cpu", pool="prefork", concurrency=1)
    task_id = submit_task("tests.sleep_then_mark", args=[4, "terminated"], lock={"key": "held", "timeout": 60},
                          owner=user.pk)
    wait_for_state(task_id, ("STARTED",))
    # STARTED is stored just before the task's body runs and takes its lock
    wait_for(lambda: redis_client.exists("vokaflow:lock:held"), 10, message="the task to hold its lock")
    started = time.monotonic()

    response = api.delete(f"{BASE}/tasks/{task_id}/")
    assert response.status_code == 200, response.json()
    assert response.json()["state"] == "REVOKED" and response.json()["stopping"] is False

    time.sleep(max(0.0, 4 + 2 - (time.monotonic() - started)))  # past the moment it would have finished
    assert redis_client.get("vokaflow:test:terminated") is None, "the task ran to its end"
    assert task_meta(task_id)["status"] == "REVOKED"
    assert not DeadLetter.objects.filter(task_id=task_id).exists()
    assert nothing_left_to_run(redis_client)
    assert f"Terminating {task_id} ({int(signal.SIGTERM)})" in worker.output()
    # SIGTERM, not SIGKILL: the task's finally blocks ran, so its lock was released, not left to expire.
    assert not redis_client.exists("vokaflow:lock:held")
    # The pool replaced its child: the worker runs the next task.
    wait_for_state(submit_task("vokaflow.echo", args=["next"], worker_type="cpu"))


@pytest.mark.slow
@pytest.mark.parametrize("task", ["vokaflow.sleep", "tests.stoppable_retrying"])
def test_a_thread_pool_task_is_asked_to_stop_and_ends_revoked(start_worker, api, user, redis_client, task):
    start_worker("io", pool="threads", concurrency=2)
    task_id = submit_task(task, args=[5], worker_type="io", owner=user.pk)
    wait_for_state(task_id, ("STARTED",))
    started = time.monotonic()

    response = api.delete(f"{BASE}/tasks/{task_id}/")
    assert response.status_code == 202, response.json()
    assert response.json()["state"] == "STARTED" and response.json()["stopping"] is True

    wait_for_state(task_id, ("REVOKED",), timeout=5)
    assert api.get(f"{BASE}/tasks/{task_id}/").json()["stopping"] is False
    time.sleep(max(0.0, 5 + 1 - (time.monotonic() - started)))  # past the moment it would have finished
    meta = task_meta(task_id)
    assert meta["status"] == "REVOKED" and not meta.get("retries")
    assert api.delete(f"{BASE}/tasks/{task_id}/").status_code == 409
    assert not DeadLetter.objects.filter(task_id=task_id).exists()
    assert nothing_left_to_run(redis_client)


def test_a_late_revoke_of_a_finished_task_is_409_and_changes_nothing(start_worker, api, user):
    start_worker("general")
    task_id = submit_task("vokaflow.echo", args=["kept"], owner=user.pk)
    before = wait_for_state(task_id)
    response = api.delete(f"{BASE}/tasks/{task_id}/")
    assert response.status_code == 409 and "SUCCESS" in response.json()["detail"]
    after = task_meta(task_id)
    assert (after["status"], after["result"], after["date_done"]) == ("SUCCESS", before["result"], before["date_done"])

"""What an accepted task costs in Redis: arguments stored once, results bounded, everything expiring."""

import json

import pytest

from tasks.state import task_status
from tasks.submit import submit_task
from tests.conftest import wait_for_state, worker_env

BASE = "/api/high-scale-tasks"
MiB = 1024 * 1024

pytestmark = pytest.mark.django_db(transaction=True)  # task_status() looks for dead letters


def stored_meta(redis_client, task_id: str) -> tuple[dict, int]:
    raw = redis_client.get(f"celery-task-meta-{task_id}")
    return json.loads(raw), len(raw)


def memory(redis_client, pattern: str) -> int:
    return sum(redis_client.memory_usage(key) or 0 for key in redis_client.scan_iter(match=pattern, count=1000))


def test_a_result_keeps_name_worker_and_retries_but_not_the_arguments(start_worker, redis_client):
    start_worker("general")
    task_id = submit_task("vokaflow.noop", kwargs={}, args=[])
    other = submit_task("vokaflow.fail", args=["secret-argument"])
    wait_for_state(task_id)
    wait_for_state(other, ("FAILURE",))
    for tid in (task_id, other):
        meta, _ = stored_meta(redis_client, tid)
        assert "args" not in meta and "kwargs" not in meta
        assert meta["name"] and meta["worker"] and meta["retries"] == 0 and meta["queue"]
        assert 0 < redis_client.ttl(f"celery-task-meta-{tid}") <= 24 * 3600
    status = task_status(task_id)
    assert status["worker"] and status["task"] == "vokaflow.noop"


def test_a_result_over_the_limit_is_stored_as_a_notice(start_worker, redis_client):
    limit = 20_000
    start_worker("general", env=worker_env(VOKAFLOW_MAX_RESULT_BYTES=limit))
    big = submit_task("vokaflow.echo", args=["x" * 50_000])
    failed = submit_task("vokaflow.fail", args=["y" * 50_000])
    small = submit_task("vokaflow.echo", args=["fits"])
    wait_for_state(big)
    wait_for_state(failed, ("FAILURE",))
    wait_for_state(small)

    meta, size = stored_meta(redis_client, big)
    assert size <= limit and meta["status"] == "SUCCESS" and meta["result"] is None
    assert meta["result_dropped"]["limit"] == limit and meta["result_dropped"]["bytes"] > 50_000
    status = task_status(big)
    assert status["state"] == "SUCCESS" and status["result"] is None
    assert "VOKAFLOW_MAX_RESULT_BYTES" in status["error"]

    meta, size = stored_meta(redis_client, failed)
    assert size <= limit and meta["status"] == "FAILURE"
    assert meta["result"]["exc_type"] == "TaskFailed" and "left out" in meta["result"]["exc_message"][0]
    assert task_status(failed)["error"].startswith("TaskFailed: ")

    assert task_status(small)["result"] == {"args": ["fits"], "kwargs": {}}


def test_worst_case_redis_memory_of_a_max_size_task(start_worker, api, redis_client):
    """A body just under the 2 MiB limit: what it holds while queued and after it ran (MEMORY USAGE)."""
    arg = "x" * (2 * MiB - 300)
    response = api.post(f"{BASE}/tasks/", {"task": "vokaflow.echo", "args": [arg], "idempotency_key": "k" * 200},
                        format="json")
    assert response.status_code == 202, response.content
    task_id = response.json()["task_id"]
    queued = memory(redis_client, "general.*") + memory(redis_client, "vokaflow:*")
    # the message carries the arguments base64-encoded (4/3), plus headers of a few KiB; the
    # allocator rounds a 2.7 MiB string up to its next size class
    assert 2 * MiB < queued < 3.2 * MiB, queued

    start_worker("general")
    wait_for_state(task_id)
    after = memory(redis_client, "general.*") + memory(redis_client, "vokaflow:task:*") \
        + memory(redis_client, "vokaflow:idem:*") + memory(redis_client, "celery-task-meta-*")
    # the result (over VOKAFLOW_MAX_RESULT_BYTES, 1 MiB) is a notice; the record and key are small
    assert after < 4096, after
    for pattern in ("vokaflow:task:*", "vokaflow:idem:*", "celery-task-meta-*"):
        for key in redis_client.scan_iter(match=pattern):
            assert redis_client.ttl(key) > 0, key

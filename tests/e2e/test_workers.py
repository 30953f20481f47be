"""Workers started per test: partitions, strict priority, acks late, revoke before start."""

import json
from datetime import datetime

import pytest

from tasks.submit import submit_task
from tests.conftest import task_meta, wait_for_state, worker_env
from vokaflow.core.queues import partition_for


def done_at(meta: dict) -> datetime:
    value = meta["date_done"]
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def key_for_partition(partition: int, partitions: int = 8) -> str:
    return next(f"key-{i}" for i in range(10_000) if partition_for(f"key-{i}", partitions) == partition)


def test_a_revoke_reaches_a_worker_started_later(start_worker):
    key = "same-queue"
    revoked = submit_task("vokaflow.echo", args=["no"], partition_key=key)
    from tasks.state import revoke_task

    revoke_task(revoked)
    after = submit_task("vokaflow.echo", args=["yes"], partition_key=key)
    start_worker("general")
    wait_for_state(after)
    assert task_meta(revoked)["status"] == "REVOKED"


def test_a_worker_serves_only_its_partitions(start_worker, redis_client):
    inside, outside = key_for_partition(1), key_for_partition(5)
    start_worker("io", partitions="0-3")
    far = submit_task("vokaflow.echo", args=["far"], worker_type="io", partition_key=outside)
    near = [submit_task("vokaflow.echo", worker_type="io", partition_key=inside) for _ in range(10)]
    for task_id in near:
        wait_for_state(task_id)
    assert task_meta(far)["status"] == "PENDING"
    assert redis_client.llen("io.normal.p5") == 1


def completion_order(task_ids: list[str]) -> list[str]:
    metas = {t: wait_for_state(t, timeout=60) for t in task_ids}
    return sorted(task_ids, key=lambda t: done_at(metas[t]))


def test_an_emergency_task_overtakes_a_backlog_of_low_ones(start_worker):
    start_worker("io", concurrency=1)
    low = [submit_task("vokaflow.sleep", args=[0.05], priority="LOW") for _ in range(40)]
    emergency = submit_task("vokaflow.sleep", args=[0.05], priority="EMERGENCY")
    order = completion_order(low + [emergency])
    assert order.index(emergency) <= 5, f"EMERGENCY finished after {order.index(emergency)} LOW tasks"


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_a_mixed_backlog_drains_in_strict_priority_order(start_worker, pool):
    from vokaflow.core.priorities import Priority

    # Lowest level first, spread over partitions, before any worker runs.
    submitted = []
    for priority in reversed(Priority):
        for i in range(4):
            submitted.append((priority, submit_task("vokaflow.echo", args=[priority.name], worker_type="cpu",
                                                    priority=priority, partition_key=f"{priority.name}-{i}")))
    start_worker("cpu", concurrency=1, pool=pool)
    order = completion_order([task_id for _, task_id in submitted])
    priority_of = {task_id: priority for priority, task_id in submitted}
    finished = [int(priority_of[t]) for t in order]
    assert finished == sorted(finished), f"completion order by priority: {finished}"


@pytest.mark.slow
def test_a_task_of_a_killed_worker_is_run_by_another_after_the_visibility_timeout(start_worker):
    env = worker_env(VOKAFLOW_VISIBILITY_TIMEOUT=3)
    first = start_worker("io", env=env)
    task_id = submit_task("vokaflow.sleep", args=[5])
    wait_for_state(task_id, ("STARTED",))
    first.kill()
    second = start_worker("io", env=env)
    meta = wait_for_state(task_id, timeout=40)
    assert meta["worker"] == second.name and meta["result"]["slept"] == 5


def test_messages_are_json_never_pickle(redis_client):
    submit_task("vokaflow.echo", args=["x"], partition_key="a")
    raw = json.loads(redis_client.lindex(f"general.normal.p{partition_for('a', 8)}", 0))
    assert raw["content-type"] == "application/json"


def test_lock_keyed_tasks_never_overlap_and_both_finish(start_worker):
    start_worker("io", concurrency=2)
    lock = {"key": "nightly-report", "timeout": 10}
    ids = [submit_task("vokaflow.sleep", args=[0.5], lock=lock) for _ in range(2)]
    runs = sorted((wait_for_state(t, timeout=30)["result"] for t in ids), key=lambda r: r["started_at"])
    assert runs[0]["finished_at"] <= runs[1]["started_at"], f"the two runs overlapped: {runs}"


def test_skip_if_locked_drops_a_task_whose_lock_is_taken(start_worker):
    start_worker("io", concurrency=2)
    first = submit_task("vokaflow.sleep", args=[1.5], lock={"key": "sync", "timeout": 10})
    wait_for_state(first, ("STARTED",))
    skipped = submit_task("vokaflow.sleep", args=[0], lock={"key": "sync", "timeout": 10, "skip_if_locked": True})
    meta = wait_for_state(skipped, ("REVOKED",))
    assert "skipped: lock 'sync' is held" in str(meta["result"])
    assert wait_for_state(first)["result"]["slept"] == 1.5

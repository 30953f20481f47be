"""The worker hot path on real workers: batches, strict priority, at-least-once, exact states.

A worker takes several short tasks per fetch (as many as their measured duration fits into
VOKAFLOW_PREFETCH_WAIT_MS, at most 8), all from one priority level and all recorded as
unacknowledged in the same script; acknowledgements and results ride the next fetch.
"""

import json
import time

import pytest

from tasks.submit import enqueue, prepare, submit_task
from tests.conftest import task_meta, wait_for, wait_for_state, worker_env
from tests.e2e import worker_tasks  # noqa: F401  (registers the tests.* tasks here too)
from vokaflow.core.priorities import Priority
from vokaflow.hotpath import MAX_BATCH

SEEN = "vokaflow:test:seen"


def submit_many(name: str, n: int, **options) -> list[str]:
    ids = []
    for start in range(0, n, 1000):
        ids += [s.task_id for s in enqueue([prepare(name, **options) for _ in range(min(1000, n - start))])]
    return ids


def metas(redis_client, task_ids: list[str]) -> list[dict | None]:
    from vokaflow.celery import app

    out = []
    for start in range(0, len(task_ids), 1000):
        chunk = task_ids[start:start + 1000]
        raws = redis_client.mget([app.backend.get_key_for_task(t) for t in chunk])
        out += [app.backend.decode_result(raw) if raw else None for raw in raws]
    return out


def most_unacked_while(redis_client, condition) -> int:
    """The largest `unacked` count sampled while condition() holds."""
    most = 0
    while condition():
        most = max(most, redis_client.hlen("unacked"))
        time.sleep(0.001)
    return most


def started(meta: dict) -> float:
    return meta["result"]["started_at"]


@pytest.mark.parametrize("pool", ["threads", "solo", "prefork"])
def test_a_reversed_eight_level_backlog_drains_in_order_with_batches(start_worker, redis_client, pool):
    submitted = []
    for priority in reversed(Priority):
        submitted += [(int(priority), t) for t in submit_many("vokaflow.sleep", 24, args=[0.001],
                                                               priority=priority, worker_type="cpu")]
    ids = [t for _, t in submitted]
    # A bound well above the tasks' duration, so batches form even on a loaded machine.
    start_worker("cpu", concurrency=1, pool=pool, env=worker_env(VOKAFLOW_PREFETCH_WAIT_MS=200))
    # The first task submitted is of the lowest level: it runs last.
    most = most_unacked_while(redis_client, lambda: task_meta(ids[0])["status"] != "SUCCESS")
    results = {t: wait_for_state(t, timeout=60) for t in ids}
    level = dict((t, p) for p, t in submitted)
    by_start = sorted(ids, key=lambda t: started(results[t]))
    assert [level[t] for t in by_start] == sorted(level[t] for t in by_start)
    assert 1 < most <= MAX_BATCH + 1, f"held at most {most} tasks"  # batches, and never above 8


def test_long_tasks_come_one_per_fetch(start_worker, redis_client):
    ids = submit_many("vokaflow.sleep", 12, args=[0.05])
    start_worker("io", concurrency=1)
    most = most_unacked_while(redis_client, lambda: task_meta(ids[-1])["status"] != "SUCCESS")
    assert most == 1, f"a worker with one slot held {most} tasks of 50 ms (bound 20 ms)"


def test_an_emergency_task_submitted_mid_drain_waits_only_for_the_held_batch(start_worker, redis_client):
    low = submit_many("vokaflow.sleep", 600, args=[0.002], priority="LOW")
    start_worker("io", concurrency=1)
    wait_for(lambda: redis_client.llen("io.low.p0") + sum(redis_client.llen(f"io.low.p{p}") for p in range(1, 8))
             < 450, 60, 0.01, "the drain to be under way")
    submitted_at = time.time()
    emergency = submit_task("vokaflow.sleep", args=[0], priority="EMERGENCY")
    urgent = wait_for_state(emergency, timeout=60)
    lows = metas(redis_client, low)
    overtaking = [m for m in lows if m and m["status"] == "SUCCESS" and submitted_at < started(m) < started(urgent)]
    # Only what the worker held when the urgent task arrived: one batch and its running task.
    assert len(overtaking) <= MAX_BATCH + 1, f"{len(overtaking)} LOW tasks started ahead of EMERGENCY"


def test_two_workers_share_a_backlog_of_long_tasks(start_worker, redis_client):
    first, second = start_worker("io", concurrency=1), start_worker("io", concurrency=1)
    ids = submit_many("vokaflow.sleep", 40, args=[0.05])
    most = most_unacked_while(redis_client, lambda: task_meta(ids[-1])["status"] != "SUCCESS")
    ran_on = [wait_for_state(t)["worker"] for t in ids]
    assert most <= 2, f"two one-slot workers held {most} tasks of 50 ms"
    assert ran_on.count(first.name) > 5 and ran_on.count(second.name) > 5, ran_on


@pytest.mark.slow
@pytest.mark.parametrize("pool", ["threads", "solo", "prefork"])
def test_sigkill_mid_batch_loses_nothing_and_runs_each_task_at_least_once(start_worker, redis_client, pool):
    # prefork: results the children handed back and the parent had not written yet die with it
    env = worker_env(VOKAFLOW_VISIBILITY_TIMEOUT=3)
    ids = submit_many("tests.record", 3000, kwargs={"seconds": 0.0005})
    worker = start_worker("general", concurrency=1 if pool == "solo" else 2, pool=pool, env=env)
    wait_for(lambda: redis_client.scard(SEEN) > 600, 60, 0.005, "the drain to be under way")
    wait_for(lambda: redis_client.hlen("unacked") > 1, 30, 0, "the worker to hold a batch")
    worker.kill()
    start_worker("general", concurrency=2, env=env)
    wait_for(lambda: redis_client.scard(SEEN) == len(ids), 90, 0.2, "every task to run")
    # A task whose result died in the killed worker has run (it is in SEEN) but is still
    # unacknowledged: it runs again once its visibility timeout passes, and only then has a state.
    wait_for(lambda: all(m and m["status"] == "SUCCESS" for m in metas(redis_client, ids)), 60, 0.2,
             "every task to have its SUCCESS state")
    wait_for(lambda: redis_client.hlen("unacked") == 0, 10, 0.05, "nothing left unacknowledged")


@pytest.mark.parametrize("pool", ["threads", "solo", "prefork"])
def test_a_clean_stop_leaves_nothing_unacknowledged_and_no_state_lost(start_worker, redis_client, pool):
    ids = submit_many("tests.record", 2000, kwargs={"seconds": 0.0005})
    worker = start_worker("general", concurrency=2 if pool != "solo" else 1, pool=pool)
    wait_for(lambda: redis_client.scard(SEEN) > 300, 60, 0.005, "the drain to be under way")
    worker.stop()  # warm shutdown, mid-drain
    assert redis_client.hlen("unacked") == 0
    ran = {m.decode() for m in redis_client.smembers(SEEN)}
    finished = {t for t, m in zip(ids, metas(redis_client, ids), strict=True) if m and m["status"] == "SUCCESS"}
    messages = [json.loads(raw) for p in range(8) for raw in redis_client.lrange(f"general.normal.p{p}", 0, -1)]
    queued = {m["headers"]["id"] for m in messages}
    # A prefork child stopped by the group's SIGTERM mid-task puts its task back: it runs again.
    assert ran <= finished | queued, f"{len(ran - finished - queued)} tasks ran and lost their state"
    assert finished | queued == set(ids), "tasks were lost"
    # The held batch was handed back unstarted: no redelivery, nothing counted towards the poison
    # limit. Only a task stopped mid-run (a prefork child's, by that SIGTERM) comes back marked.
    marked = [m for m in messages if m["headers"].get("redelivered")]
    assert len(marked) <= (2 if pool == "prefork" else 0), marked


def test_an_idle_worker_holds_nothing_unacknowledged(start_worker, redis_client):
    start_worker("general", concurrency=2)
    ids = submit_many("vokaflow.echo", 300, args=[1])
    wait_for_state(ids[-1])
    wait_for(lambda: redis_client.hlen("unacked") == 0, 5, 0.01, "the idle worker to flush its acknowledgements")
    assert all(m["status"] == "SUCCESS" for m in metas(redis_client, ids))


@pytest.mark.slow
@pytest.mark.parametrize("pool", ["threads", "prefork"])  # prefork: results handed back by the children
def test_states_and_results_are_exact_for_ten_thousand_tasks(start_worker, redis_client, pool):
    requests = [prepare("vokaflow.echo", args=[i]) if i % 100 else prepare("vokaflow.fail", args=[f"no {i}"])
                for i in range(10_000)]
    ids = []
    for start in range(0, len(requests), 1000):
        ids += [s.task_id for s in enqueue(requests[start:start + 1000])]
    start_worker("general", concurrency=2, pool=pool)
    wait_for(lambda: all(m and m["status"] in ("SUCCESS", "FAILURE") for m in metas(redis_client, ids)), 300, 0.5,
             "every state")
    for i, meta in enumerate(metas(redis_client, ids)):
        if i % 100:
            assert (meta["status"], meta["result"]) == ("SUCCESS", {"args": [i], "kwargs": {}}), (i, meta)
        else:
            assert meta["status"] == "FAILURE" and f"no {i}" in str(meta["result"]), (i, meta)


def test_a_task_that_ignores_its_result_stores_none(start_worker, redis_client):
    start_worker("general")
    ids = submit_many("tests.quiet", 20, args=["quiet"])
    wait_for(lambda: redis_client.get("vokaflow:test:quiet") == b"20", 20, 0.02, "the tasks to run")
    assert metas(redis_client, ids) == [None] * 20

"""Fleet-wide limits in real workers (tasks.limits): what the runs' own start and end times show.

Every limited test task (tests/e2e/worker_tasks.py) appends its task id, start, end and key to
one Redis list as it finishes; the assertions read those recorded facts, never how fast things went.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict

import pytest

import tests.e2e.worker_tasks  # noqa: F401  (registers the test tasks here too, to submit them)
from tasks import limits
from tasks.submit import enqueue, prepare
from tests.conftest import wait_for, worker_env
from tests.e2e.worker_tasks import LIMIT_LOG
from vokaflow.core import keys

pytestmark = pytest.mark.django_db(transaction=True)


def submit(task: str, n: int, **options) -> list[str]:
    ids = []
    for start in range(0, n, 500):
        ids += [s.task_id for s in enqueue([prepare(task, **options) for _ in range(start, min(n, start + 500))])]
    return ids


def runs(redis_client) -> list[tuple[str, float, float, str]]:
    out = []
    for raw in redis_client.lrange(LIMIT_LOG, 0, -1):
        task_id, start, end, key = raw.decode().split(" ", 3)
        out.append((task_id, float(start), float(end), key))
    return out


def wait_for_runs(redis_client, ids: list[str], timeout: float = 90) -> list[tuple[str, float, float, str]]:
    wait_for(lambda: {r[0] for r in runs(redis_client)} >= set(ids), timeout, 0.2,
             f"{len(ids)} runs (have {len(runs(redis_client))})")
    return [r for r in runs(redis_client) if r[0] in set(ids)]


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda ev: (ev[0], ev[1]))
    now = most = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def most_in_a_second(starts: list[float]) -> int:
    starts = sorted(starts)
    return max(sum(1 for t in starts[i:] if t < s + 1.0) for i, s in enumerate(starts))


def test_a_rate_holds_across_two_workers(start_worker, redis_client):
    env = worker_env()
    for _ in range(2):
        start_worker("general", concurrency=4, env=env)
    ids = submit("tests.rated", 200, args=[0])
    done = wait_for_runs(redis_client, ids)
    assert Counter(r[0] for r in done) == Counter(ids), "a task ran twice or not at all"
    assert most_in_a_second([r[1] for r in done]) <= 21  # 20/s: at most rate x 1 s + 1 in any second


def test_concurrency_two_across_three_workers_and_per_customer(start_worker, redis_client):
    for _ in range(3):
        start_worker("general", concurrency=3)
    ids = submit("tests.two_at_once", 24, args=[0.2])
    keyed = [s.task_id for s in enqueue([prepare("tests.two_per_customer", args=[f"customer-{i % 10}", 0.2])
                                         for i in range(60)])]
    done = wait_for_runs(redis_client, ids + keyed)
    plain = [(s, e) for task_id, s, e, _ in done if task_id in set(ids)]
    assert most_at_once(plain) == 2  # never more than 2, and the limit was used
    per_key = defaultdict(list)
    for task_id, s, e, key in done:
        if task_id in set(keyed):
            per_key[key].append((s, e))
    assert len(per_key) == 10 and all(most_at_once(spans) <= 2 for spans in per_key.values())
    assert most_at_once([span for spans in per_key.values() for span in spans]) > 2  # keys ran side by side


def test_an_unlimited_task_behind_a_thousand_limited_ones_starts_while_they_wait(start_worker, redis_client):
    start_worker("general", concurrency=4)  # two slots for what the limit lets run, two for the rest
    limited = submit("tests.two_at_once", 1000, args=[0.5])
    (free,) = submit("tests.unlimited", 1)
    wait_for_runs(redis_client, [free], 60)
    finished = [r for r in runs(redis_client) if r[0] in set(limited)]
    assert len(finished) < 100, "the unlimited task waited behind the limited ones"
    waiting = redis_client.zcard(keys.LIMIT_WAITING.format(keys.limit_tag("tests.two_at_once", "")))
    assert waiting > 500  # they wait in Redis, not in the worker
    from tasks.state import task_status

    (held,) = redis_client.zrange(keys.LIMIT_WAITING.format(keys.limit_tag("tests.two_at_once", "")), -1, -1)
    status = task_status(held.decode())
    assert status["state"] == "PENDING" and status["held_by"].startswith("tests.two_at_once (")
    assert status["retries"] == 0  # waiting is not a retry


def test_a_sigkilled_holders_place_frees_after_its_lease(start_worker, redis_client):
    env = worker_env(VOKAFLOW_LIMIT_LEASE=2)
    holder = start_worker("general", concurrency=2, env=env)
    blocked = submit("tests.two_at_once", 2, args=[60])
    running = keys.LIMIT_RUNNING.format(keys.limit_tag("tests.two_at_once", ""))
    wait_for(lambda: redis_client.zcount(running, time.time(), "+inf") == 2, 30, 0.1, "both places taken")
    holder.kill()
    killed = time.time()
    start_worker("general", concurrency=2, env=env)
    (after,) = submit("tests.two_at_once", 1, args=[0])
    (_, started, _, _), = wait_for_runs(redis_client, [after], 30)
    # The dead worker's places were leases of 2 s, no longer renewed: the new task started once
    # they ran out, while the killed tasks still wait for their visibility timeout.
    assert started >= killed
    assert not {r[0] for r in runs(redis_client)} & set(blocked)


def test_a_limit_changed_over_the_api_is_obeyed_by_the_next_starts(start_worker, redis_client):
    start_worker("general", concurrency=4)
    limits.limit_set(name="tests.rated", rate="5/s")
    time.sleep(2.5)  # every worker reads the definitions at least once a second
    ids = submit("tests.rated", 30, args=[0])
    done = wait_for_runs(redis_client, ids)
    assert most_in_a_second([r[1] for r in done]) <= 6


def test_a_redis_restart_mid_run_loses_no_task_and_leaves_no_place_held(start_worker, tmp_path, settings):
    import redis

    from tests.conftest import OwnRedis
    from vokaflow.redis import get_redis

    (tmp_path / "redis").mkdir()
    own = OwnRedis(tmp_path / "redis")
    own.start()
    settings.REDIS_URL = f"redis://127.0.0.1:{own.port}/0"
    get_redis.cache_clear()
    try:
        client = redis.Redis(port=own.port)
        env = worker_env(REDIS_URL=settings.REDIS_URL, VOKAFLOW_VISIBILITY_TIMEOUT=5, VOKAFLOW_RESTORE_INTERVAL=1)
        for _ in range(2):
            start_worker("general", concurrency=3, env=env)
        ids = submit("tests.two_at_once", 60, args=[0.05])
        wait_for(lambda: len(runs(client)) >= 10, 60, 0.1, "some runs")
        own.stop()
        time.sleep(1)
        own.start()
        done = wait_for_runs(client, ids, 120)
        assert {r[0] for r in done} == set(ids)
        tag = keys.limit_tag("tests.two_at_once", "")
        wait_for(lambda: client.zcount(keys.LIMIT_RUNNING.format(tag), time.time(), "+inf") == 0
                 and not client.zcard(keys.LIMIT_WAITING.format(tag)), 30, 0.2, "no place held, none waiting")
    finally:
        get_redis.cache_clear()
        own.stop()

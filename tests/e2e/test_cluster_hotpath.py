"""The hot path on a real Redis Cluster of six redis-server processes: real workers consume
partition groups spread over three primaries, in strict priority order, and lose nothing."""

import json
import time

import pytest
from redis.cluster import RedisCluster

from tasks.submit import enqueue, prepare
from tests.conftest import wait_for, worker_env
from tests.e2e import worker_tasks  # noqa: F401  (registers the tests.* tasks here too)
from vokaflow.cluster_transport import unacked_keys
from vokaflow.core.priorities import Priority
from vokaflow.core.slots import partition_tag, task_part


def meta(client, task_id: str) -> dict | None:
    raw = client.get("celery-task-meta-" + task_part(task_id))
    return json.loads(raw) if raw else None


def wait_all(client, ids: list[str], timeout: float = 90) -> dict[str, dict]:
    done: dict[str, dict] = {}

    def finished():
        with client.pipeline(transaction=False) as pipe:
            todo = [t for t in ids if t not in done]
            for t in todo:
                pipe.get("celery-task-meta-" + task_part(t))
            for t, raw in zip(todo, pipe.execute(), strict=True):
                if raw and json.loads(raw)["status"] == "SUCCESS":
                    done[t] = json.loads(raw)
        return len(done) == len(ids)

    wait_for(finished, timeout, 0.2, f"{len(ids)} tasks to succeed on the cluster")
    return done


def held(client, partitions: int = 8) -> int:
    return sum(client.hlen(unacked_keys(partition_tag(p, partitions))[0]) for p in range(partitions))


@pytest.mark.slow
@pytest.mark.parametrize("pool", ["threads", "solo", "prefork"])
def test_a_reversed_eight_level_backlog_over_every_partition_drains_in_level_order(on_cluster, start_worker, pool):
    client = on_cluster.client()
    submitted = []
    for priority in reversed(Priority):  # the lowest level first, each over all 8 partitions
        answers = enqueue([prepare("vokaflow.sleep", args=[0.001], priority=priority, worker_type="cpu",
                                   partition_key=f"k{i}") for i in range(16)])
        submitted += [(int(priority), a.task_id) for a in answers]
    assert len({queue_of(client, t) for _, t in submitted}) > 8  # levels × partitions
    start_worker("cpu", concurrency=1, pool=pool, env=worker_env(VOKAFLOW_PREFETCH_WAIT_MS=200))
    results = wait_all(client, [t for _, t in submitted])
    level = dict((t, p) for p, t in submitted)
    by_start = sorted(level, key=lambda t: results[t]["result"]["started_at"])
    assert [level[t] for t in by_start] == sorted(level.values())
    wait_for(lambda: held(client) == 0, 10, 0.1, "every acknowledgement to be written")


@pytest.mark.slow
def test_a_higher_level_submitted_mid_drain_goes_first_with_no_probe_per_fetch(on_cluster, start_worker):
    """A worker serving a NORMAL backlog over every group sends no probe before its fetches: each
    fetch checks its group's marks (vokaflow.announce). A HIGH task submitted into one group
    mid-drain starts before every NORMAL task fetched after its submission returned (only the
    batch already taken may start between), and the backlog then drains to the end: the marks
    it left behind are found stale, group by group."""
    from tests.test_cluster import marks

    client = on_cluster.client()
    backlog = [a.task_id for a in enqueue([prepare("vokaflow.sleep", args=[0.004], worker_type="cpu",
                                                   partition_key=f"k{i}") for i in range(800)])]
    start_worker("cpu", concurrency=1, pool="solo")
    wait_for(lambda: sum(1 for t in backlog[:200] if meta(client, t)) >= 50, 60, 0.05, "the drain to begin")
    client.execute_command("CONFIG RESETSTAT", target_nodes=RedisCluster.PRIMARIES)
    accepted = time.time()
    high = enqueue([prepare("vokaflow.sleep", args=[0], priority="HIGH", worker_type="cpu", partition_key="x")])[0]
    results = wait_all(client, [high.task_id, *backlog])
    high_started = results[high.task_id]["result"]["started_at"]
    overtaken = [t for t in backlog if accepted < results[t]["result"]["started_at"] < high_started]
    assert len(overtaken) <= 16, f"{len(overtaken)} NORMAL tasks started after the HIGH one was accepted"
    later = [t for t in backlog if results[t]["result"]["started_at"] > high_started]
    assert len(later) > 300  # it did go ahead of the backlog
    calls = {}
    for stats in client.info("commandstats", target_nodes=RedisCluster.PRIMARIES).values():
        for name, figures in stats.items():
            calls[name] = calls.get(name, 0) + figures["calls"]
    # Each fetch checks its marks once (HMGET) and asks EXISTS of its levels down to NORMAL (4);
    # a full probe asks the same of every group (8 × 4). A probe before each fetch would make the
    # EXISTS calls about 36 times the fetches; here the probes are the one after the HIGH task's
    # marks, one per group whose marks it found stale, and one a second (FULL_PROBE_SECONDS).
    fetches, exists = calls.get("cmdstat_hmget", 0), calls.get("cmdstat_exists", 0)
    assert fetches > 50 and exists < 12 * fetches, " ".join(f"{k}={v}" for k, v in sorted(calls.items()))
    announced = marks(client, "cpu", int(Priority.HIGH))
    assert [count for count, _ in announced] == [1] * 8  # one announcement, written to every group
    wait_for(lambda: held(client) == 0, 10, 0.1, "every acknowledgement to be written")


def queue_of(client, task_id: str) -> str:
    return json.loads(client.get("vokaflow:task:" + task_part(task_id)))["queue"]


@pytest.mark.slow
def test_two_workers_drain_a_batch_spread_over_three_primaries_with_exact_results(on_cluster, start_worker):
    client = on_cluster.client()
    answers = []
    for start in range(0, 1200, 400):
        answers += enqueue([prepare("vokaflow.echo", args=[i]) for i in range(start, start + 400)])
    by_primary = {}
    for answer in answers:
        by_primary.setdefault(client.get_node_from_key(answer.queue).name, 0)
        by_primary[client.get_node_from_key(answer.queue).name] += 1
    assert len(by_primary) == 3
    for _ in range(2):
        start_worker("general", concurrency=2, pool="threads")
    results = wait_all(client, [a.task_id for a in answers])
    assert sorted(r["result"]["args"][0] for r in results.values()) == list(range(1200))
    wait_for(lambda: held(client) == 0, 10, 0.1, "every acknowledgement to be written")
    assert not any(client.llen(q) for q in {a.queue for a in answers})


def test_an_idle_worker_on_the_cluster_takes_tasks_submitted_later(on_cluster, start_worker):
    client = on_cluster.client()
    start_worker("io", concurrency=1, pool="threads")
    for word in ("first", "second", "third"):
        time.sleep(1.2)  # idle again: waiting on its bell
        task_id = enqueue([prepare("vokaflow.echo", args=[word], worker_type="io")])[0].task_id
        wait_for(lambda t=task_id: (m := meta(client, t)) and m["status"] == "SUCCESS", 15, 0.05, "the task to run")
        assert meta(client, task_id)["result"]["args"] == [word]
    assert held(client) == 0


SEEN = "vokaflow:test:seen"


def queued_ids(client) -> set[str]:
    from vokaflow.core.queues import all_queues

    found = set()
    for queue in all_queues(8):
        if queue.startswith("general."):
            found |= {json.loads(raw)["headers"]["id"] for raw in client.lrange(queue, 0, -1)}
    return found


@pytest.mark.slow
@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_sigkill_mid_drain_on_the_cluster_loses_nothing(on_cluster, start_worker, pool):
    client = on_cluster.client()
    env = worker_env(VOKAFLOW_VISIBILITY_TIMEOUT=3)
    ids = [a.task_id for start in range(0, 2000, 500)
           for a in enqueue([prepare("tests.record", kwargs={"seconds": 0.0005}) for _ in range(500)])]
    worker = start_worker("general", concurrency=2, pool=pool, env=env)
    wait_for(lambda: client.scard(SEEN) > 400, 60, 0.005, "the drain to be under way")
    wait_for(lambda: held(client) > 1, 30, 0, "the worker to hold a batch")
    worker.kill()
    start_worker("general", concurrency=2, env=env)
    wait_all(client, ids, timeout=120)
    assert client.scard(SEEN) == len(ids)
    wait_for(lambda: held(client) == 0, 15, 0.1, "nothing left unacknowledged")


@pytest.mark.parametrize("pool", ["threads", "solo", "prefork"])
def test_a_clean_stop_on_the_cluster_hands_back_what_it_held(on_cluster, start_worker, pool):
    client = on_cluster.client()
    ids = [a.task_id for a in enqueue([prepare("tests.record", kwargs={"seconds": 0.0005}) for _ in range(1000)])]
    worker = start_worker("general", concurrency=1 if pool == "solo" else 2, pool=pool)
    wait_for(lambda: client.scard(SEEN) > 200, 60, 0.005, "the drain to be under way")
    worker.stop()  # warm shutdown, mid-drain
    assert held(client) == 0
    done = {t for t in ids if (m := meta(client, t)) and m["status"] == "SUCCESS"}
    assert done | queued_ids(client) == set(ids), "tasks were lost"


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_delayed_tasks_dead_letters_retries_and_the_queue_page_on_the_cluster(on_cluster, start_worker):
    """Delayed tasks wait in their group's scheduled set and run when due; a failing task
    becomes one dead letter; its retry from the API runs; the console's queue data reads every
    group."""
    from tasks.models import DeadLetter
    from tasks.scheduled import scheduled_count
    from tasks.submit import submit_task
    from tests.conftest import client_as, user_with_perms
    from workers.queues import non_empty_queues

    client = on_cluster.client()
    waiting = enqueue([prepare("vokaflow.echo", args=[i], worker_type="io", partition_key=f"k{i}") for i in range(40)])
    queues = non_empty_queues()
    assert sum(q.depth for q in queues) == 40 and {q.name for q in queues} == {a.queue for a in waiting}
    delayed = [a.task_id for a in enqueue([prepare("vokaflow.echo", args=[i], countdown=2, partition_key=f"d{i}")
                                           for i in range(24)])]
    assert scheduled_count() == 24
    workers = [start_worker(kind, concurrency=2, pool="threads") for kind in ("general", "io")]
    assert len(wait_all(client, delayed + [a.task_id for a in waiting])) == 64
    assert scheduled_count() == 0
    failed = submit_task("vokaflow.fail", args=["card declined"], partition_key="c-9")
    row = wait_for(lambda: DeadLetter.objects.filter(task_id=failed).first(), 30, message="the dead letter")
    assert row.queue.endswith("}") and row.reason == "not_retried"
    staff = client_as(user_with_perms("ops", "tasks.change_deadletter", is_staff=True))
    retried = staff.post(f"/api/high-scale-tasks/dlq/{failed}/retry", {}, format="json")
    assert retried.status_code == 202, retried.content
    retry_id = retried.json()["task_id"]
    wait_for(lambda: DeadLetter.objects.filter(task_id=retry_id).exists(), 30, message="the retry to fail again")
    assert meta(client, failed)["status"] == "FAILURE" and meta(client, retry_id)["status"] == "FAILURE"
    for worker in workers:  # before the database is emptied for the next test: nothing writes after
        worker.stop()


def test_async_result_get_returns_the_result_on_the_cluster(on_cluster, start_worker):
    """Results are not published on a cluster: `AsyncResult.get()` polls the stored state (a
    process of its own, whose Celery app is configured for the cluster from the start)."""
    from tests.conftest import run_python

    start_worker("io", concurrency=1, pool="threads")
    # a task still running when get() starts waiting: only a wait that reads the state ends
    code = ("import django; django.setup()\nfrom vokaflow.celery import app\nfrom tasks.submit import submit_task\n"
            "result = app.AsyncResult(submit_task('vokaflow.sleep', args=[1.5]))\n"
            "print(app.backend.__class__.__name__, result.get(timeout=20, interval=0.1)['slept'])")
    done = run_python(code, worker_env(), timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ClusterResultBackend 1.5"

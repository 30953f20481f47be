"""The hot path on a real Redis Cluster of six redis-server processes: real workers consume
partition groups spread over three primaries, in strict priority order, and lose nothing."""

import json
import time

import pytest

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
def test_a_reversed_eight_level_backlog_over_every_partition_drains_in_level_order(on_cluster, start_worker):
    client = on_cluster.client()
    submitted = []
    for priority in reversed(Priority):  # the lowest level first, each over all 8 partitions
        answers = enqueue([prepare("vokaflow.sleep", args=[0.001], priority=priority, worker_type="cpu",
                                   partition_key=f"k{i}") for i in range(16)])
        submitted += [(int(priority), a.task_id) for a in answers]
    assert len({queue_of(client, t) for _, t in submitted}) > 8  # levels × partitions
    start_worker("cpu", concurrency=1, pool="threads", env=worker_env(VOKAFLOW_PREFETCH_WAIT_MS=200))
    results = wait_all(client, [t for _, t in submitted])
    level = dict((t, p) for p, t in submitted)
    by_start = sorted(level, key=lambda t: results[t]["result"]["started_at"])
    assert [level[t] for t in by_start] == sorted(level.values())
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

"""Replicated submissions and a primary SIGKILLed mid-drain, on a real Redis Cluster of six
redis-server processes (node timeout 3 s)."""

import json
import threading
import time

import pytest
import redis

from tasks.submit import BrokerUnavailable, enqueue, prepare
from tests.conftest import wait_for, worker_env
from tests.e2e.test_cluster_hotpath import held, wait_all
from vokaflow.core.slots import partition_tag


def test_with_replicas_ack_the_answer_says_whether_replicas_have_the_task(on_cluster, settings):
    settings.VOKAFLOW_REDIS_REPLICAS_ACK = 1
    answers = enqueue([prepare("vokaflow.echo", args=[i], partition_key=f"k{i}") for i in range(16)])
    assert all(a.replicated is True for a in answers) and "replicated" in answers[0].public()
    # More replicas than the cluster has: enqueued all the same, and the answer says so.
    settings.VOKAFLOW_REDIS_REPLICAS_ACK, settings.VOKAFLOW_REDIS_REPLICAS_ACK_TIMEOUT_MS = 2, 50
    late = enqueue([prepare("vokaflow.echo", args=["late"])])[0]
    assert late.replicated is False
    client = on_cluster.client()
    assert json.loads(client.lindex(late.queue, 0))["headers"]["id"] == late.task_id


def test_without_replicas_ack_the_answer_has_no_replicated_field(on_cluster):
    answer = enqueue([prepare("vokaflow.echo")])[0]
    assert answer.replicated is None and "replicated" not in answer.public()


@pytest.mark.slow
def test_a_primary_sigkilled_mid_drain_with_replicas_ack_loses_no_accepted_task(on_cluster, start_worker, settings):
    if not on_cluster.procs:
        pytest.skip("the cluster was not started by the suite: it cannot kill its nodes")
    settings.VOKAFLOW_REDIS_REPLICAS_ACK = 1
    client = on_cluster.client()
    env = worker_env(VOKAFLOW_VISIBILITY_TIMEOUT=5, VOKAFLOW_REDIS_REPLICAS_ACK=1)
    start_worker("general", concurrency=2, pool="threads", env=env)
    accepted: list[str] = []
    refused = [0]
    stop = threading.Event()

    def submit():
        n = 0
        while not stop.is_set():
            try:
                answers = enqueue([prepare("vokaflow.echo", args=[n + i], partition_key=f"k{n + i}")
                                   for i in range(8)])
                accepted.extend(a.task_id for a in answers if a.replicated)
            except BrokerUnavailable:
                refused[0] += 1  # nothing enqueued (or the 503 names what was): a client retries
                time.sleep(0.05)
            n += 8

    submitter = threading.Thread(target=submit)
    submitter.start()
    victim = None
    try:
        wait_for(lambda: len(accepted) > 200, 30, 0.05, "submissions to flow")
        victim = client.get_node_from_key(f"x{{{partition_tag(0, 8)}}}")
        on_cluster.kill(victim.port)
        wait_for(lambda: _promoted(on_cluster, victim.port), 30, 0.2, "a replica to take over")
        count = len(accepted)
        wait_for(lambda: len(accepted) > count + 200, 60, 0.1, "submissions to flow again after the failover")
    finally:
        stop.set()
        submitter.join(30)
        if victim is not None:  # whole again for the tests after this one, whatever happened here
            on_cluster.restart(victim.port)
    results = wait_all(on_cluster.client(), accepted, timeout=180)
    assert len(results) == len(accepted)
    wait_for(lambda: held(on_cluster.client()) == 0, 30, 0.2, "nothing left unacknowledged")


def _promoted(cluster, dead_port: int) -> bool:
    """Every slot is served again, by live primaries only."""
    live = [p for p in cluster.ports if p != dead_port]
    try:
        return len([p for p in live if redis.Redis(port=p).execute_command("ROLE")[0] == b"master"]) == 3 and all(
            b"cluster_state:ok" in redis.Redis(port=p).execute_command("CLUSTER", "INFO") for p in live)
    except redis.RedisError:
        return False


@pytest.mark.slow
def test_a_reshard_mid_drain_loses_nothing_and_leaves_nothing_stuck(on_cluster, start_worker):
    """`redis-cli --cluster reshard` moves the slots of partition 0's group (with its queues and
    unacked hash) to another primary while two workers drain: redirections are followed."""
    import subprocess

    client = on_cluster.client()
    ids = [a.task_id for start in range(0, 3000, 500)
           for a in enqueue([prepare("tests.record", kwargs={"seconds": 0.001}, partition_key=f"k{start + i}")
                             for i in range(500)])]
    for _ in range(2):
        start_worker("general", concurrency=2, pool="threads", env=worker_env(VOKAFLOW_VISIBILITY_TIMEOUT=5))
    wait_for(lambda: client.scard("vokaflow:test:seen") > 300, 60, 0.01, "the drain to be under way")
    tag = partition_tag(0, 8)
    source = client.get_node_from_key(f"x{{{tag}}}")
    target = next(n for n in client.get_primaries() if n.name != source.name)
    ids_of = {n.name: redis.Redis(host=n.host, port=n.port).execute_command("CLUSTER", "MYID").decode()
              for n in (source, target)}
    moved = subprocess.run(["redis-cli", "--cluster", "reshard", f"127.0.0.1:{source.port}",
                            "--cluster-from", ids_of[source.name], "--cluster-to", ids_of[target.name],
                            "--cluster-slots", "1100", "--cluster-yes"], capture_output=True, text=True, timeout=300)
    assert moved.returncode == 0, moved.stdout[-2000:] + moved.stderr[-2000:]
    client.nodes_manager.initialize()
    assert client.get_node_from_key(f"x{{{tag}}}").name == target.name  # the group lives elsewhere now
    results = wait_all(client, ids, timeout=180)
    assert len(results) == len(ids)
    wait_for(lambda: held(client) == 0, 30, 0.2, "nothing left unacknowledged")
    check = subprocess.run(["redis-cli", "--cluster", "check", f"127.0.0.1:{target.port}"], capture_output=True,
                           text=True, timeout=30)
    assert check.returncode == 0 and "[OK] All 16384 slots covered." in check.stdout

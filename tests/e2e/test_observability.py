"""Heartbeats, status, metrics, Prometheus and health with real workers; Flower behind a password."""

import json
import os
import subprocess
import sys
import time
import urllib.request
from base64 import b64encode
from pathlib import Path

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.test import APIClient

from tasks.records import task_record
from tasks.submit import enqueue, prepare, submit_task
from tests.conftest import (
    HEARTBEAT_TTL,
    ROOT,
    client_as,
    free_port,
    http_status,
    run_python,
    user_with_perms,
    wait_for,
    wait_for_state,
    worker_env,
)

BASE = "/api/high-scale-tasks"
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def client():
    """Staff: sees where everything runs (hosts, worker names, pids, the Redis URL)."""
    return client_as(user_with_perms("watcher", is_staff=True))


def test_plain_users_see_the_fleet_without_hosts_pids_or_the_redis_address(start_worker, client, django_user_model):
    start_worker("io", concurrency=2)
    plain = APIClient()
    plain.force_authenticate(django_user_model.objects.create_user("viewer"))
    full = wait_for(lambda: (b := client.get(f"{BASE}/workers/status").json())["total_workers"] == 1 and b)
    assert {"name", "host", "pid"} <= set(full["workers"][0]) and full["worker_pools"]["IO_INTENSIVE"]["hosts"]
    assert {"url", "version"} <= set(full["redis_nodes"][0])

    public = plain.get(f"{BASE}/workers/status").json()
    assert public["total_workers"] == 1 and public["worker_pools"]["IO_INTENSIVE"]["max_workers"] == 2
    worker = public["workers"][0]
    assert not {"name", "host", "pid"} & set(worker) and worker["concurrency"] == 2
    assert not {"hosts", "workers"} & set(public["worker_pools"]["IO_INTENSIVE"])
    assert not {"url", "version"} & set(public["redis_nodes"][0]) and public["redis_nodes"][0]["role"] == "master"
    text = json.dumps(public)
    assert full["workers"][0]["host"] not in text and full["workers"][0]["name"] not in text
    assert str(full["workers"][0]["pid"]) not in json.dumps(public["workers"])
    assert full["redis_nodes"][0]["version"] not in json.dumps(public["redis_nodes"])

    metrics = plain.get(f"{BASE}/metrics").json()
    assert not {"url", "version"} & set(metrics["redis_nodes"][0])
    assert {"url", "version"} <= set(client.get(f"{BASE}/metrics").json()["redis_nodes"][0])


def test_status_shows_each_type_and_drops_a_killed_worker(start_worker, client, redis_client):
    cpu = start_worker("cpu", pool="prefork", concurrency=2)
    io = start_worker("io", concurrency=3)
    body = wait_for(lambda: (b := client.get(f"{BASE}/workers/status").json())["total_workers"] == 2 and b)
    pools = body["worker_pools"]
    assert pools["CPU_INTENSIVE"]["pool_type"] == ["prefork"] and pools["CPU_INTENSIVE"]["max_workers"] == 2
    assert pools["IO_INTENSIVE"]["pool_type"] == ["threads"] and pools["IO_INTENSIVE"]["max_workers"] == 3
    assert pools["IO_INTENSIVE"]["workers"] == [io.name] and pools["GENERAL_PURPOSE"]["workers"] == []
    assert {"cpu_percent", "memory_percent", "disk_usage"} <= set(body["system_resources"])
    assert body["partitions"] == 8 and body["redis_nodes"][0]["role"] == "master"
    assert client.get("/api/health/").status_code == 200

    cpu.kill()
    # Its heartbeat is no longer renewed: it expires within one heartbeat TTL.
    assert 0 < redis_client.pttl(f"vokaflow:worker:{cpu.name}") <= HEARTBEAT_TTL * 1000
    wait_for(lambda: client.get(f"{BASE}/workers/status").json()["total_workers"] == 1, HEARTBEAT_TTL + 5, 0.1,
             "the killed worker to leave the fleet")
    io.kill()
    wait_for(lambda: client.get("/api/health/").status_code == 503, HEARTBEAT_TTL + 5, 0.1, "health to fail")
    started = time.monotonic()
    body = client.get("/api/health/").json()
    assert time.monotonic() - started < 2 and body["checks"]["workers"]["ok"] is False


def prometheus_samples(client) -> dict:
    response = client.get("/metrics")
    assert response.status_code == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(response.content.decode()) for s in f.samples}


def test_active_workers_are_live_and_busy_workers_run_a_task_in_every_view(start_worker, client):
    start_worker("io", concurrency=2)
    start_worker("general", concurrency=2)
    task = prepare("vokaflow.sleep", args=[3])
    enqueue([task])
    wait_for(lambda: client.get(f"{BASE}/workers/status").json()["worker_pools"]["IO_INTENSIVE"]["busy"] == 1,
             10, 0.1, "one busy slot")
    status = client.get(f"{BASE}/workers/status").json()
    metrics = client.get(f"{BASE}/metrics").json()
    samples = prometheus_samples(client)
    assert status["total_workers"] == status["active_workers"] == metrics["active_workers"] == 2
    assert samples[("vokaflow_active_workers", ())] == 2
    assert status["busy_workers"] == metrics["busy_workers"] == samples[("vokaflow_busy_workers", ())] == 1
    wait_for_state(task.task_id)


def test_health_answers_503_quickly_when_the_broker_is_down():
    code = (
        "import json, time, django; django.setup()\n"
        "from django.test import Client\n"
        "started = time.monotonic(); r = Client().get('/api/health/')\n"
        "print(json.dumps({'status': r.status_code, 'seconds': time.monotonic() - started, "
        "'checks': r.json()['checks']}))\n"
    )
    env = worker_env(DJANGO_SETTINGS_MODULE="vokaflow.settings", REDIS_URL="redis://127.0.0.1:1/0",
                     ALLOWED_HOSTS="testserver")
    outcome = json.loads(run_python(code, env).stdout.strip().splitlines()[-1])
    assert outcome["status"] == 503 and outcome["seconds"] < 5  # bounded by the 2 s broker time-out: no hang
    assert outcome["checks"]["broker"]["ok"] is False and outcome["checks"]["database"]["ok"] is True
    # Open to anyone: the error says what failed, never where (the address is in the log only).
    assert outcome["checks"]["broker"]["error"].startswith("ConnectionError")
    assert "127.0.0.1" not in json.dumps(outcome["checks"])


def test_metrics_match_redis_before_and_counts_after_a_known_mix(start_worker, client, redis_client):
    mix = {"EMERGENCY": 3, "HIGH": 5, "LOW": 7, "MAINTENANCE": 2}
    requests = [prepare("vokaflow.echo", priority=p, partition_key=f"{p}{i}") for p, n in mix.items() for i in range(n)]
    requests += [prepare("vokaflow.fail", args=["x"], priority="LOW") for _ in range(4)]
    enqueue(requests)
    body = client.get(f"{BASE}/metrics").json()
    expected = {p: 0 for p in ("EMERGENCY", "CRITICAL", "HIGH", "NORMAL", "LOW", "BACKGROUND", "BATCH",
                                "MAINTENANCE")}
    expected.update(mix)
    expected["LOW"] += 4
    assert body["queue_distribution"] == expected and body["total_pending_tasks"] == 21
    assert body["queues"] == {q: redis_client.llen(q) for q in body["queues"]} and sum(body["queues"].values()) == 21

    start_worker("general", concurrency=2)
    for request in requests:
        wait_for_state(request.task_id, ("SUCCESS", "FAILURE"))

    def settled():
        memory = client.get(f"{BASE}/metrics").json()["memory_mode"]
        return memory["processed_tasks"] == 21 and memory["dead_lettered_tasks"] == 4 and memory

    memory = wait_for(settled, 10, 0.2, "the counters to reach Redis")
    assert memory["completed_tasks"] == 17 and memory["failed_tasks"] == 4 and memory["enabled"] is True
    body = client.get(f"{BASE}/metrics").json()
    assert body["tasks_by_type"]["GENERAL_PURPOSE"]["HIGH"]["completed"] == 5
    assert body["tasks_by_type"]["GENERAL_PURPOSE"]["LOW"] == {"completed": 7, "failed": 4, "retried": 0,
                                                              "dead_lettered": 4}
    assert body["total_pending_tasks"] == 0 and body["throughput_per_second"] > 0
    assert body["dead_letters"] == {"dead": 4}

    samples = prometheus_samples(client)
    assert samples[("vokaflow_tasks_total", (("outcome", "completed"), ("priority", "HIGH"),
                                             ("worker_type", "GENERAL_PURPOSE")))] == 5
    assert samples[("vokaflow_dead_letters", (("status", "dead"),))] == 4
    assert samples[("vokaflow_workers", (("worker_type", "GENERAL_PURPOSE"),))] == 1
    assert samples[("vokaflow_queue_depth", (("partition", "0"), ("priority", "LOW"), ("queue", "general.low.p0"),
                                             ("worker_type", "GENERAL_PURPOSE")))] == 0


def test_prometheus_endpoint_needs_a_token_or_a_login(settings):
    settings.VOKAFLOW_METRICS_TOKEN = "scrape-secret"
    assert APIClient().get("/metrics").status_code == 401
    assert APIClient().get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    response = APIClient().get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-secret")
    assert response.status_code == 200 and b"vokaflow_pending_tasks" in response.content


def test_flower_from_the_launcher_is_behind_a_password_and_shows_vokaflows_queues(tmp_path):
    waiting = [submit_task("vokaflow.echo", worker_type="network", priority="LOW", partition_key="flower")
               for _ in range(3)]
    queue = task_record(waiting[0]).queue
    port = free_port()
    env = worker_env(FLOWER_PORT=port, FLOWER_BASIC_AUTH="ops:flower-pass")
    log = open(tmp_path / "launch.log", "w")
    launcher = subprocess.Popen([sys.executable, "manage.py", "launch", "--only", "flower"], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def get(path, auth=None):
            headers = {"Authorization": "Basic " + b64encode(auth.encode()).decode()} if auth else {}
            request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.read().decode()

        def status(auth=None):
            headers = {"Authorization": "Basic " + b64encode(auth.encode()).decode()} if auth else {}
            return http_status(f"http://127.0.0.1:{port}/", headers)
        wait_for(lambda: status() is not None, 30, 0.2, "Flower to listen")
        assert status() == 401
        assert status("ops:wrong") == 401
        assert status("ops:flower-pass") == 200
        # Flower's own Prometheus metrics answer without its login: keep the port private.
        assert http_status(f"http://127.0.0.1:{port}/metrics") == 200

        # The Broker tab and the queue-length API read VokaFlow's Redis lists.
        lengths = {q["name"]: q["messages"] for q in json.loads(get("/api/queues/length", "ops:flower-pass"))
                   ["active_queues"]}
        assert lengths[queue] == 3
        broker_page = get("/broker", "ops:flower-pass")
        assert queue in broker_page and "not supported" not in broker_page

        # The password is in Flower's environment, not on its command line (which `ps` shows).
        # (Flower is forked by the worker host, named celery-flower.)
        flower = [p for p in psutil.Process(launcher.pid).children(recursive=True) if p.name() == "celery-flower"]
        assert flower, "no Flower process under the launcher"
        cmdline = Path(f"/proc/{flower[0].pid}/cmdline").read_bytes().decode()
        assert "flower-pass" not in cmdline and "basic-auth" not in cmdline
    finally:
        os.killpg(launcher.pid, 15)
        launcher.wait(20)



"""Autoscaling with real workers: slots follow a backlog up and come back down, on every pool kind,
and a scale-in mid-drain loses no task and runs none twice (workers.autoscale, workers.host)."""

import json
import os
import subprocess
import sys
import time

import psutil
import pytest

from tasks.submit import enqueue
from tasks.validation import prepare
from tests.conftest import ROOT, wait_for, worker_env
from tests.e2e.worker_tasks import LEDGER
from vokaflow.core import keys

pytestmark = pytest.mark.slow


def heartbeat(redis_client, name: str) -> dict:
    raw = redis_client.get(keys.WORKER.format(name))
    return json.loads(raw) if raw else {}


def submit(n: int, worker_type: str, seconds: float) -> list[str]:
    ids = []
    for start in range(0, n, 500):
        batch = [prepare("tests.ledger", kwargs={"seconds": seconds}, worker_type=worker_type,
                         partition_key=f"k{start + i}") for i in range(min(500, n - start))]
        ids += [answer.task_id for answer in enqueue(batch)]
    return ids


def ledger(redis_client) -> list[str]:
    return [v.decode() for v in redis_client.lrange(LEDGER, 0, -1)]


def watch_slots(redis_client, name: str, until, timeout: float) -> list[int]:
    """The worker's slots as its heartbeats report them, until `until()` holds."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, f"timed out; slots seen {seen}"
        slots = (heartbeat(redis_client, name).get("autoscale") or {}).get("slots")
        if slots is not None and (not seen or seen[-1] != slots):
            seen.append(slots)
        time.sleep(0.1)
    return seen


def scaling_env(short: str, low: int, high: int, **more) -> dict:
    return worker_env(**{f"VOKAFLOW_AUTOSCALE_{short.upper()}": f"{low}:{high}",
                         f"VOKAFLOW_TARGET_WAIT_{short.upper()}": "0.2", "VOKAFLOW_AUTOSCALE_IDLE": "2", **more})


def assert_exactly_once(redis_client, ids: list[str]) -> None:
    done = ledger(redis_client)
    assert len(done) == len(ids) and set(done) == set(ids), \
        f"{len(done)} runs for {len(ids)} tasks, {len(set(done))} distinct"
    assert not redis_client.hlen("unacked"), "something is left unacknowledged"


@pytest.mark.django_db(transaction=True)
def test_threads_grow_under_a_backlog_drain_it_and_return_to_min(start_worker, redis_client, django_user_model):
    from django.test import Client

    from workers.status import workers_status

    worker = start_worker("io", concurrency=1, env=scaling_env("io", 1, 6))
    ids = submit(400, "io", 0.02)
    seen = watch_slots(redis_client, worker.name, lambda: redis_client.llen(LEDGER) >= len(ids), 120)
    assert max(seen) == 6, seen  # grew to MAX while the backlog lasted
    report = wait_for(lambda: (r := heartbeat(redis_client, worker.name).get("autoscale")) and r["slots"] == 1 and r,
                      30, message="the worker to return to MIN")
    assert report["min"] == 1 and report["max"] == 6 and report["target_wait_seconds"] == 0.2
    assert report["last_change"]["to"] == 1 and "busy for 2 s" in report["last_change"]["why"]
    assert heartbeat(redis_client, worker.name)["concurrency"] == 1
    assert_exactly_once(redis_client, ids)
    assert "slots 1 -> 2" in worker.output()
    # What operators see: workers/status per type, and the console's overview.
    pool = workers_status()["worker_pools"]["IO_INTENSIVE"]
    assert pool["max_workers"] == 1 and pool["autoscale"]["min"] == 1 and pool["autoscale"]["max"] == 6
    assert pool["autoscale"]["last_change"] == report["last_change"]
    assert {d["to"] for d in pool["autoscale"]["decisions"]} >= {2, 6, 1}
    staff = Client()
    staff.force_login(django_user_model.objects.create_user("operator", is_staff=True))
    page = staff.get("/console/").content.decode()
    assert "auto 1–6" in page and 'id="autoscale-decisions"' in page and "with all 1 slots busy" in page


def pool_children(worker) -> int:
    return len(psutil.Process(worker.proc.pid).children())


def test_prefork_grows_children_and_ends_idle_ones(start_worker, redis_client):
    worker = start_worker("cpu", concurrency=1, pool="prefork", env=scaling_env("cpu", 1, 2))
    assert pool_children(worker) == 1
    ids = submit(200, "cpu", 0.02)
    seen = watch_slots(redis_client, worker.name, lambda: redis_client.llen(LEDGER) >= len(ids), 120)
    assert max(seen) == 2, seen
    wait_for(lambda: (heartbeat(redis_client, worker.name).get("autoscale") or {}).get("slots") == 1, 30,
             message="the worker to return to MIN")
    wait_for(lambda: pool_children(worker) == 1, 10, message="the spare child to end")
    assert_exactly_once(redis_client, ids)


def test_a_cpu_worker_never_grows_past_the_cores_it_may_use(start_worker, redis_client, tmp_path):
    env = scaling_env("cpu", 1, 4)
    name = "cpu-pinned@test"
    log = open(tmp_path / "pinned.log", "w")
    # Pinned to one core before Python starts (its affinity is what the worker may use).
    proc = subprocess.Popen(["taskset", "-c", "0", sys.executable, "-m", "celery", "-A", "vokaflow", "worker",
                             "--type", "cpu", "-P", "prefork", "-c", "1", "-n", name, "-l", "INFO",
                             "--without-mingle", "--without-gossip", "--include", "tests.e2e.worker_tasks"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: heartbeat(redis_client, name), 30, message="the pinned worker's heartbeat")
        ids = submit(100, "cpu", 0.02)
        seen = watch_slots(redis_client, name, lambda: redis_client.llen(LEDGER) >= len(ids), 120)
        report = heartbeat(redis_client, name)["autoscale"]
        assert report["ceiling"] == 1 and seen == [1], (report, seen)
        assert len(psutil.Process(proc.pid).children()) == 1
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(20)
        log.close()


@pytest.mark.parametrize("value", ["16:1", "0:4", "x"])
def test_a_malformed_range_stops_the_worker_at_start_naming_the_variable(value):
    env = worker_env(VOKAFLOW_AUTOSCALE_IO=value)
    proc = subprocess.run([sys.executable, "-m", "celery", "-A", "vokaflow", "worker", "--type", "io", "-P", "threads"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if "VOKAFLOW_AUTOSCALE_IO" in line]
    assert len(lines) == 1 and f"'{value}'" in lines[0] and "MIN" in lines[0], proc.stderr


def test_a_malformed_target_stops_the_worker_at_start_naming_the_variable():
    env = worker_env(VOKAFLOW_AUTOSCALE_IO="1:4", VOKAFLOW_TARGET_WAIT_IO="soon")
    proc = subprocess.run([sys.executable, "-m", "celery", "-A", "vokaflow", "worker", "--type", "io", "-P", "threads"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "VOKAFLOW_TARGET_WAIT_IO='soon'" in proc.stderr, proc.stderr


def test_solo_processes_are_forked_and_stopped_by_the_worker_host(tmp_path, redis_client):
    """workers.host runs a solo type as processes `<name>-<n>@host` and scales their number."""
    argv = [sys.executable, "-m", "celery", "-A", "vokaflow", "worker", "--type", "general", "-P", "solo", "-c", "1",
            "-n", "general-solo@test", "-l", "INFO", "--without-mingle", "--without-gossip",
            "--include", "tests.e2e.worker_tasks"]
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"processes": [{"name": "general", "argv": argv,
                                               "scale": {"worker_type": "GENERAL_PURPOSE", "processes": 1}}],
                                "ready_message": None, "grace_seconds": 20, "backoff_seconds": 1, "redis_url": None}))
    log = tmp_path / "host.log"
    host = subprocess.Popen([sys.executable, "-m", "workers.host", str(plan)], cwd=ROOT,
                            env=scaling_env("general", 1, 3), stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        first = "general-solo-1@test"
        wait_for(lambda: heartbeat(redis_client, first).get("autoscale"), 60, message="the first solo process")
        ids = submit(600, "general", 0.01)
        seen = watch_slots_of_host(redis_client, lambda: redis_client.llen(LEDGER) >= len(ids), 120)
        assert max(seen) == 3, (seen, log.read_text()[-3000:])
        # Idle: back to one process; the others stopped cleanly and were not restarted.
        wait_for(lambda: len(psutil.Process(host.pid).children()) == 1, 40, message="scale-in to one process")
        assert heartbeat(redis_client, first)["autoscale"]["processes"] == 1
        assert_exactly_once(redis_client, ids)
        text = log.read_text()
        assert "general-solo-2@test ready." in text and "stopping general-3 (scale-in)" in text, text[-3000:]
        assert "exited with" not in text  # a retired process is not reported as a crash, nor restarted
    finally:
        os.killpg(host.pid, 15)
        host.wait(30)


def watch_slots_of_host(redis_client, until, timeout: float) -> list[int]:
    """The number of solo processes the host runs, as their heartbeats report it."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, f"timed out; processes seen {seen}"
        processes = (heartbeat(redis_client, "general-solo-1@test").get("autoscale") or {}).get("processes")
        if processes is not None and (not seen or seen[-1] != processes):
            seen.append(processes)
        time.sleep(0.1)
    return seen


@pytest.mark.parametrize("pool", ["threads", "prefork"])
def test_scale_in_mid_drain_loses_no_task_and_runs_none_twice(start_worker, redis_client, pool):
    """2,000 tasks: a burst grows the worker, a trickle lets it shrink while tasks still run, a
    second burst grows it again. The ledger holds every task exactly once, with no redelivery."""
    short = "io" if pool == "threads" else "cpu"
    worker = start_worker(short, concurrency=1, pool=pool, env=scaling_env(short, 1, 2 if pool == "prefork" else 8))
    ids = submit(800, short, 0.01)
    wait_for(lambda: redis_client.llen(LEDGER) >= 700, 120, message="the first burst to drain")
    deadline = time.monotonic() + 60
    while not any(d["to"] < d["from"] for d in heartbeat(redis_client, worker.name)["autoscale"]["decisions"]):
        assert time.monotonic() < deadline, "no scale-in during the trickle"
        ids += submit(5, short, 0.01)  # a trickle: the slots are mostly idle, tasks keep coming
        time.sleep(0.1)
    ids += submit(2000 - len(ids), short, 0.01)
    wait_for(lambda: redis_client.llen(LEDGER) >= len(ids), 180, message="every task to run")
    time.sleep(1)  # a task run twice would show up now
    assert_exactly_once(redis_client, ids)
    directions = [d["to"] > d["from"] for d in reversed(heartbeat(redis_client, worker.name)["autoscale"]["decisions"])]
    assert True in directions and False in directions, directions
    assert not redis_client.keys("vokaflow:redeliveries:*"), "a task was marked as redelivered"

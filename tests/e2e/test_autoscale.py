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
    """The id of every run, in the order they ended."""
    return [v.decode().split()[0] for v in redis_client.lrange(LEDGER, 0, -1)]


def running_around(redis_client, moment: float, seconds: float) -> int:
    """How many runs overlapped the `seconds` before and after `moment` (epoch seconds)."""
    runs = [v.decode().split() for v in redis_client.lrange(LEDGER, 0, -1)]
    return sum(1 for _, start, end in runs if float(start) < moment + seconds and float(end) > moment - seconds)


def scaling_env(short: str, low: int, high: int, **more) -> dict:
    return worker_env(**{f"VOKAFLOW_AUTOSCALE_{short.upper()}": f"{low}:{high}",
                         f"VOKAFLOW_TARGET_WAIT_{short.upper()}": "0.2", "VOKAFLOW_AUTOSCALE_IDLE": "2", **more})


def assert_exactly_once(redis_client, ids: list[str]) -> None:
    done = ledger(redis_client)
    assert len(done) == len(ids) and set(done) == set(ids), \
        f"{len(done)} runs for {len(ids)} tasks, {len(set(done))} distinct"
    assert not redis_client.hlen("unacked"), "something is left unacknowledged"


def grow_shrink_grow(redis_client, beat, worker_type: str, maximum: int, slots_key: str = "slots") -> list[str]:
    """2,000 tasks: a burst the worker grows to MAX for, a trickle of longer tasks it shrinks during
    (tasks running at that moment), a second burst, then idle until it is back at MIN. Returns the
    task ids; checks every task ran exactly once, with no redelivery mark."""
    # Each task lasts longer the more slots there are to reach, so the burst outlasts the doubling
    # (1, 2, 4, ... one step a second) on any machine: about 8 slot-seconds before MAX of 6.
    ids = submit(800, worker_type, 0.005 * maximum)
    seen = watch(beat, slots_key, lambda: redis_client.llen(LEDGER) >= 700, 120)
    assert max(seen) == maximum, seen  # grew to MAX while the backlog lasted
    ids += trickle_until_a_shrink(redis_client, beat, worker_type)
    ids += submit(2000 - len(ids), worker_type, 0.002)
    wait_for(lambda: redis_client.llen(LEDGER) >= len(ids), 180, message="every task to run")
    wait_for(lambda: (beat().get("autoscale") or {}).get(slots_key) == 1, 30, message="the return to MIN")
    assert_exactly_once(redis_client, ids)
    assert not redis_client.keys("vokaflow:redeliveries:*"), "a task was marked as redelivered"
    directions = [d["to"] > d["from"] for d in reversed(beat()["autoscale"]["decisions"])]
    assert directions.count(True) >= 2 and False in directions, directions  # up, down, up (and down)
    return ids


def watch(beat, key: str, until, timeout: float) -> list[int]:
    """A figure of the worker's `autoscale` heartbeat object as it changes, until `until()` holds."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, f"timed out; {key} seen {seen}"
        value = (beat().get("autoscale") or {}).get(key)
        if value is not None and (not seen or seen[-1] != value):
            seen.append(value)
        time.sleep(0.1)
    return seen


def trickle_until_a_shrink(redis_client, beat, worker_type: str) -> list[str]:
    """Tasks of 0.3 s, one every 0.5 s (one slot busy at most) until the worker shrinks; checks
    that tasks were running during the tick that decided it (the second before it)."""
    ids: list[str] = []
    deadline = time.monotonic() + 90
    while True:
        shrinks = [d for d in (beat().get("autoscale") or {}).get("decisions", ()) if d["to"] < d["from"]]
        if shrinks:
            break
        assert time.monotonic() < deadline, "no scale-in during the trickle"
        ids += submit(1, worker_type, 0.3)
        time.sleep(0.5)
    ids += submit(3, worker_type, 0.3)
    wait_for(lambda: set(ids) <= set(ledger(redis_client)), 30, message="the trickle to finish")
    assert running_around(redis_client, shrinks[0]["at"] - 0.5, 0.5) >= 1, "nothing ran when the worker shrank"
    return ids


@pytest.mark.django_db(transaction=True)
def test_threads_grow_shrink_mid_drain_and_return_to_min_losing_nothing(start_worker, redis_client,
                                                                          django_user_model):
    from django.test import Client

    from workers.status import workers_status

    worker = start_worker("io", concurrency=1, env=scaling_env("io", 1, 6))
    grow_shrink_grow(redis_client, lambda: heartbeat(redis_client, worker.name), "io", 6)
    beat = heartbeat(redis_client, worker.name)
    report = beat["autoscale"]
    assert report["min"] == 1 and report["max"] == 6 and report["target_wait_seconds"] == 0.2
    assert report["last_change"]["to"] == 1 and "busy for 2 s" in report["last_change"]["why"]
    assert beat["concurrency"] == 1 and beat["pool"] == "threads"  # our resizable pool is Celery's thread pool
    assert "slots 1 -> 2" in worker.output()
    # What operators see: workers/status per type, and the console's overview.
    pool = workers_status()["worker_pools"]["IO_INTENSIVE"]
    assert pool["max_workers"] == 1 and pool["target_workers"] == 1 and pool["pool_type"] == ["threads"]
    assert pool["autoscale"]["min"] == 1 and pool["autoscale"]["max"] == 6
    assert pool["autoscale"]["last_change"] == report["last_change"]
    staff = Client()
    staff.force_login(django_user_model.objects.create_user("operator", is_staff=True))
    page = staff.get("/console/").content.decode()
    assert "auto 1–6" in page and 'id="autoscale-decisions"' in page and "slots busy" in page


def pool_children(worker) -> int:
    return len(psutil.Process(worker.proc.pid).children())


def test_prefork_grows_children_ends_idle_ones_mid_drain_and_loses_nothing(start_worker, redis_client):
    worker = start_worker("cpu", concurrency=1, pool="prefork", env=scaling_env("cpu", 1, 2))
    assert pool_children(worker) == 1
    grow_shrink_grow(redis_client, lambda: heartbeat(redis_client, worker.name), "cpu", 2)
    wait_for(lambda: pool_children(worker) == 1, 10, message="the spare child to end")


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
        seen = watch(lambda: heartbeat(redis_client, name), "slots", lambda: redis_client.llen(LEDGER) >= len(ids), 120)
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


def start_host(tmp_path, env: dict):
    """workers.host running the general type as solo processes `general-solo-<n>@test`."""
    argv = [sys.executable, "-m", "celery", "-A", "vokaflow", "worker", "--type", "general", "-P", "solo", "-c", "1",
            "-n", "general-solo@test", "-l", "INFO", "--without-mingle", "--without-gossip",
            "--include", "tests.e2e.worker_tasks"]
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"processes": [{"name": "general", "argv": argv,
                                               "scale": {"worker_type": "GENERAL_PURPOSE", "processes": 1}}],
                                "ready_message": None, "grace_seconds": 20, "backoff_seconds": 1, "redis_url": None}))
    log = tmp_path / "host.log"
    host = subprocess.Popen([sys.executable, "-m", "workers.host", str(plan)], cwd=ROOT, env=env,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    return host, log


def test_the_worker_host_forks_and_stops_solo_processes_mid_drain_losing_nothing(tmp_path, redis_client):
    """workers.host runs a solo type as processes `<name>-<n>@host`, forks more under a backlog and
    stops some (SIGTERM, warm shutdown) while tasks run: 2,000 tasks, each exactly once."""
    host, log = start_host(tmp_path, scaling_env("general", 1, 3))
    first = "general-solo-1@test"
    try:
        wait_for(lambda: heartbeat(redis_client, first).get("autoscale"), 60, message="the first solo process")
        grow_shrink_grow(redis_client, lambda: heartbeat(redis_client, first), "general", 3, "processes")
        wait_for(lambda: len(psutil.Process(host.pid).children()) == 1, 40, message="scale-in to one process")
        beat = heartbeat(redis_client, first)
        assert beat["autoscale"]["target_processes"] == 1 and beat["autoscale"]["min"] == 1
        assert beat["pool"] == "solo" and beat["concurrency"] == 1
        text = log.read_text()
        assert "general-solo-2@test ready." in text and "general-solo-3@test ready." in text, text[-3000:]
        assert "(scale-in)" in text and "exited with" not in text  # a retired process is no crash, nor restarted
    finally:
        os.killpg(host.pid, 15)
        host.wait(30)

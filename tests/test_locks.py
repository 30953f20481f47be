"""vokaflow.locks against the real Redis, with several real processes; and the lock API."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from rest_framework.test import APIClient

from tests.conftest import ROOT, client_as, user_with_perms, wait_for, worker_env
from vokaflow import locks

BASE = "/api/high-scale-tasks"


@pytest.fixture(params=["redis", "cluster"])
def client(request, redis_client, settings):
    """The lock tests run on one Redis and on a real Redis Cluster (the processes they spawn too)."""
    if request.param == "redis":
        return redis_client
    cluster = request.getfixturevalue("cluster")
    settings.REDIS_URL = cluster.url  # worker_env() hands it to the spawned processes
    return cluster.client()


def spawn(code: str) -> subprocess.Popen:
    """A Python process that uses vokaflow.locks on its own (no Django)."""
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=worker_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish(procs: list[subprocess.Popen], timeout: float = 120) -> list[str]:
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, err[-2000:]
        outputs.append(out)
    return outputs


def test_eight_processes_incrementing_under_the_lock_lose_no_update(client):
    client.delete("vokaflow:test:counter")
    code = """
import random, time
from vokaflow import locks
from vokaflow.locks import client_for
r = client_for(None)
for _ in range(250):
    with locks.RedisLock("counter", ttl=5, wait=30):
        value = int(r.get("vokaflow:test:counter") or 0)
        time.sleep(random.uniform(0, 0.001))
        r.set("vokaflow:test:counter", value + 1)
"""
    finish([spawn(code) for _ in range(8)])
    assert int(client.get("vokaflow:test:counter")) == 2000


def test_fencing_tokens_strictly_increase_across_processes(client):
    code = """
from vokaflow import locks
from vokaflow.locks import client_for
r = client_for(None)
for _ in range(250):
    with locks.RedisLock("fenced", ttl=5, wait=30) as lease:
        r.rpush("vokaflow:test:fences", lease.fencing_token)  # in holding order
"""
    finish([spawn(code) for _ in range(4)])
    fences = [int(x) for x in client.lrange("vokaflow:test:fences", 0, -1)]
    assert len(fences) == 1000
    assert all(a < b for a, b in zip(fences, fences[1:]))


def test_a_non_holder_cannot_release_and_the_lock_stays(client):
    lease = locks.acquire("door", ttl=10, owner="alice", client=client)
    with pytest.raises(locks.LockLost):
        locks.release_by_token("door", "not-the-token", client=client)
    assert locks.holder("door", client=client)["owner"] == "alice"
    forged = locks.Lease(**{**vars(lease), "token": "forged"})
    with pytest.raises(locks.LockLost):
        locks.release(forged, client=client)
    locks.release(lease, client=client)
    assert locks.holder("door", client=client) is None


def test_an_expired_holder_cannot_release_or_extend_the_next_holders_lock(client):
    slow = locks.acquire("report", ttl=0.2, owner="slow", client=client)
    wait_for(lambda: locks.holder("report", client=client) is None, 5, message="the lock to expire")
    fast = locks.acquire("report", ttl=10, owner="fast", client=client)
    assert fast.fencing_token > slow.fencing_token
    with pytest.raises(locks.LockLost, match="fast"):
        locks.release(slow, client=client)
    with pytest.raises(locks.LockLost):
        locks.extend(slow, 10, client=client)
    assert locks.holder("report", client=client)["owner"] == "fast"


def test_the_value_records_owner_and_times(client):
    lease = locks.acquire("ledger", ttl=30, owner="billing-7", client=client)
    info = locks.holder("ledger", client=client)
    assert info["owner"] == "billing-7" and "token" not in info
    assert info["expires_at"] - info["acquired_at"] == pytest.approx(30, abs=0.01)
    assert info["fencing_token"] == lease.fencing_token
    assert client.pttl(locks.names("ledger", client)[0]) > 29_000


def test_the_watchdog_keeps_a_lock_alive_past_its_ttl(client):
    with locks.RedisLock("long-job", ttl=0.6, watchdog=True, client=client) as lease:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:  # three TTLs: held throughout
            assert locks.holder("long-job", client=client)["fencing_token"] == lease.fencing_token
            time.sleep(0.1)
    assert locks.holder("long-job", client=client) is None


def test_a_killed_holder_frees_the_lock_within_one_ttl(client):
    holder = spawn("""
import time
from vokaflow import locks
with locks.RedisLock("crashy", ttl=1.0, watchdog=True):
    print("held", flush=True)
    time.sleep(60)
""")
    assert holder.stdout.readline().strip() == "held"
    time.sleep(1.5)  # past one TTL: only the watchdog can have kept it
    assert locks.holder("crashy", client=client) is not None
    os.killpg(holder.pid, signal.SIGKILL)
    holder.wait()
    # Nothing extends it any more: what is left of its life is at most one TTL.
    assert 0 < client.pttl(locks.names("crashy", client)[0]) <= 1000
    wait_for(lambda: locks.holder("crashy", client=client) is None, 5, 0.02, "the lock to free")


def test_a_blocking_acquire_wakes_when_the_holder_releases(client):
    lease = locks.acquire("queue-head", ttl=60, client=client)  # would block a poller for a minute
    threading.Timer(0.3, locks.release, args=(lease,), kwargs={"client": client}).start()
    waiter = locks.acquire("queue-head", ttl=5, wait=20, client=client)
    assert waiter.fencing_token == lease.fencing_token + 1


def test_a_blocking_acquire_gives_up_at_its_deadline(client):
    locks.acquire("busy", ttl=60, owner="someone", client=client)
    with pytest.raises(locks.LockNotAcquired, match="someone") as raised:
        locks.acquire("busy", ttl=5, wait=0.3, client=client)
    assert raised.value.waited >= 0.3


def test_execute_with_lock_runs_the_function_and_releases(client):
    assert locks.execute_with_lock("job", lambda a, b=0: a + b, 2, b=3, ttl=5, client=client) == 5
    assert locks.holder("job", client=client) is None


@pytest.fixture
def staff(db):
    return client_as(user_with_perms("ops", "tasks.use_locks", is_staff=True))


def test_lock_api_acquire_conflict_release_and_inspect(staff, redis_client):
    first = staff.post(f"{BASE}/lock/nightly/acquire", {"owner": "cron-1", "timeout": 30}, format="json")
    assert first.status_code == 200
    lease = first.json()
    assert lease["token"] and lease["fencing_token"] >= 1 and lease["owner"] == "cron-1"
    second = staff.post(f"{BASE}/lock/nightly/acquire", {"owner": "cron-2", "timeout": 30}, format="json")
    assert second.status_code == 409 and second.json()["holder"]["owner"] == "cron-1"
    assert "token" not in second.json()["holder"]
    assert staff.get(f"{BASE}/lock/nightly").json()["owner"] == "cron-1"
    extended = staff.post(f"{BASE}/lock/nightly/extend", {"token": lease["token"], "timeout": 60}, format="json")
    assert extended.status_code == 200 and extended.json()["expires_at"] > lease["expires_at"]
    wrong = staff.delete(f"{BASE}/lock/nightly/release?token=wrong")
    assert wrong.status_code == 409
    assert staff.post(f"{BASE}/lock/nightly/extend", {"token": "wrong", "timeout": 5}, format="json").status_code == 409
    released = staff.delete(f"{BASE}/lock/nightly/release", {"token": lease["token"]}, format="json")
    assert released.status_code == 200
    assert staff.delete(f"{BASE}/lock/nightly/release?token={lease['token']}").status_code == 404
    assert staff.get(f"{BASE}/lock/nightly/").json() == {"key": "nightly", "held": False}


def test_lock_api_validates_and_needs_the_lock_permission(staff, api):
    assert staff.post(f"{BASE}/lock/k/acquire", {"timeout": -1}, format="json").status_code == 400
    assert staff.delete(f"{BASE}/lock/k/release").status_code == 400
    assert api.post(f"{BASE}/lock/k/acquire", {"timeout": 5}, format="json").status_code == 403
    assert api.get(f"{BASE}/lock/k").status_code == 403
    assert APIClient().get(f"{BASE}/lock/k").status_code == 401

"""The combined soak: every fault at once, and every task accounted for.

SOAK_TASKS tasks of mixed types (echo, no-op and a failing task on the general type, sleeps and
failures on the IO type, sums on the prefork CPU type), one in ten failing for good, are
submitted through the REST API by two users, in batches spread over SUBMIT_SECONDS, while
workers are SIGKILLed 5 times (a replacement is started each time), Redis is stopped with
SIGTERM and started again on the same port and data directory (AOF on), and the database is
unreachable for 20 s around that restart. Then:

* every task's stored state is SUCCESS, with its correct result, or FAILURE;
* every failing task has exactly one dead letter in the table, no succeeding task has any, and
  none waits in Redis;
* nothing is left behind: no `unacked` entry, no queued or scheduled message, no place in either
  user's pending quota, no lock.

The workers get a Redis of the test's own and reach the database through something the test
can cut: a TCP proxy to PostgreSQL that refuses and drops connections (the machine's shared
PostgreSQL is never stopped), or, on SQLite, a path whose folder the test takes away. The
visibility timeout is 5 s and the restore scan runs every second, so a killed worker's tasks
come back within seconds; Celery beat flushes waiting dead letters every 2 s.

With all 10,000 tasks the test takes about 70 s on the 2-core test machine, so it runs the
full count; `bench/soak.py` runs the same scenario as a script and prints its figures. The tests
after it each reproduce one fault the soak found, on its own and in a second.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest
import redis
from django.db import connection
from rest_framework.test import APIClient

from tasks.models import DeadLetter
from tests.conftest import ROOT, OwnRedis, user_with_perms, wait_for, worker_env
from tests.e2e.test_dlq import RefusingProxy
from vokaflow.core import keys
from vokaflow.core.workers import WorkerType

SOAK_TASKS = 10_000
BATCH = 250  # tasks per POST tasks/batch
SUBMIT_SECONDS = 30  # the submissions are spread over this long, so every fault meets tasks in flight
VISIBILITY = 5  # seconds: VOKAFLOW_VISIBILITY_TIMEOUT of the workers
OUTAGE = 20  # seconds the database is unreachable
SLEEP = 0.005  # seconds each vokaflow.sleep waits
# (seconds after the first submission, what happens)
FAULTS = [(3.0, "kill general"), (6.5, "database down"), (9.5, "kill io"), (14.0, "restart redis"),
          (19.0, "kill general"), (23.5, "kill cpu"), (6.5 + OUTAGE, "database back"), (29.5, "kill general")]
WORKERS = {"general": 2, "io": 1, "cpu": 1}  # processes of each type at any time (but while one is replaced)
BASE = "/api/high-scale-tasks"


def payload(i: int) -> dict:
    """The i-th task of the soak: one in ten fails for good (on the general and IO types)."""
    kind, priority = i % 10, ("HIGH", "NORMAL", "LOW")[i // 10 % 3]
    task = {"priority": priority, "idempotency_key": f"soak-{i}"}
    if kind == 0:
        worker_type = "GENERAL_PURPOSE" if i % 20 == 0 else "IO_INTENSIVE"
        return task | {"task": "vokaflow.fail", "args": [f"soak {i}"], "worker_type": worker_type}
    if kind <= 4:
        return task | {"task": "vokaflow.echo", "args": [i]}
    if kind <= 6:
        return task | {"task": "vokaflow.noop"}
    if kind <= 8:
        return task | {"task": "vokaflow.sleep", "args": [SLEEP]}
    return task | {"task": "vokaflow.cpu", "args": [i]}


def fails(i: int) -> bool:
    return i % 10 == 0


def correct(i: int, meta: dict | None) -> bool:
    """Whether task i's stored state is its one right outcome."""
    if meta is None:
        return False
    if fails(i):
        return meta["status"] == "FAILURE" and f"soak {i}" in str(meta["result"])
    if meta["status"] != "SUCCESS":
        return False
    result = meta["result"]
    return {
        "vokaflow.echo": lambda: result == {"args": [i], "kwargs": {}},
        "vokaflow.noop": lambda: result is None,
        "vokaflow.sleep": lambda: isinstance(result, dict) and result.get("slept") == SLEEP,
        "vokaflow.cpu": lambda: result == sum(k * k for k in range(i)),
    }[payload(i)["task"]]()


class SqliteCut:
    """SQLite has no server to stop: the workers open the database through a folder holding a
    link to it, and the folder is moved away and back."""

    def __init__(self, tmp_path, database: str):
        self.folder, self.away = tmp_path / "db-folder", tmp_path / "db-folder-away"
        self.folder.mkdir()
        (self.folder / "db.sqlite3").symlink_to(database)
        self.url = f"sqlite:///{self.folder / 'db.sqlite3'}"

    def go_down(self):
        self.folder.rename(self.away)

    def come_back(self):
        self.away.rename(self.folder)

    def close(self):
        pass


class ProxyCut:
    """PostgreSQL behind test_dlq's refusing proxy: down refuses new connections and drops the open ones."""

    def __init__(self):
        db = connection.settings_dict
        self.proxy = RefusingProxy(int(db["PORT"] or 5432))
        auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
        self.url = f"postgres://{auth}@127.0.0.1:{self.proxy.port}/{db['NAME']}"

    def go_down(self):
        self.proxy.go_down()

    def come_back(self):
        self.proxy.come_back()

    def close(self):
        self.proxy.server.close()


def metas(client: redis.Redis, task_ids: list[str]) -> list[dict | None]:
    out: list[dict | None] = []
    for start in range(0, len(task_ids), 1000):
        raws = client.mget([f"celery-task-meta-{t}" for t in task_ids[start:start + 1000]])
        out += [json.loads(raw) if raw else None for raw in raws]
    return out


def leftovers(client: redis.Redis, owners: list[int]) -> dict:
    """Everything that should be gone once the fleet is idle: counts by kind, zeros omitted."""
    queues = sum(client.llen(k) for t in WorkerType for k in client.scan_iter(match=f"{t.short}.*", count=1000)
                 if client.type(k) == b"list")
    found = {
        "unacked": client.hlen(keys.UNACKED),
        "unacked_index": client.zcard("unacked_index"),
        "queued": queues,
        "scheduled": sum(client.zcard(keys.SCHEDULED.format(t.short)) for t in WorkerType),
        "dead letters waiting in Redis": client.llen(keys.DLQ_PENDING),
        "quota places": sum(client.zcard(keys.PENDING.format(owner)) for owner in owners),
        "locks": len(list(client.scan_iter(match=keys.LOCK + "*"))) + client.exists("unacked_mutex"),
    }
    return {kind: n for kind, n in found.items() if n}


class Users:
    """Two users submitting their halves of the soak in batches, each from a thread of its own.
    A 503 (Redis away: nothing was enqueued) is retried with the same idempotency keys."""

    def __init__(self, users, t0: float):
        self.t0, self.ids, self.errors = t0, {}, []
        half = SOAK_TASKS // 2
        self.threads = [threading.Thread(target=self._submit, args=(user, range(n * half, (n + 1) * half)),
                                         daemon=True) for n, user in enumerate(users)]
        for thread in self.threads:
            thread.start()

    def _submit(self, user, indices) -> None:
        client = APIClient()
        client.force_authenticate(user)
        batches = [indices[s:s + BATCH] for s in range(0, len(indices), BATCH)]
        for n, batch in enumerate(batches):
            time.sleep(max(0.0, self.t0 + n * SUBMIT_SECONDS / len(batches) - time.monotonic()))
            body = {"tasks": [payload(i) for i in batch]}
            deadline = time.monotonic() + 60
            while True:
                response = client.post(f"{BASE}/tasks/batch", body, format="json")
                if response.status_code == 202:
                    break
                if response.status_code != 503 or time.monotonic() > deadline:
                    self.errors.append(f"{user.username}: {response.status_code} {response.content[:300]!r}")
                    return
                time.sleep(0.2)
            for i, task in zip(batch, response.json()["tasks"], strict=True):
                self.ids[i] = task["task_id"]

    def join(self, timeout: float) -> None:
        for thread in self.threads:
            thread.join(timeout)
        assert not any(t.is_alive() for t in self.threads), "the submissions did not finish"
        assert not self.errors, self.errors


@pytest.fixture
def own_redis(tmp_path, settings):
    """A Redis of the test's own with AOF on; this process submits to it too."""
    from vokaflow.redis import get_redis

    (tmp_path / "redis").mkdir()
    own = OwnRedis(tmp_path / "redis")
    own.start()
    settings.REDIS_URL = f"redis://127.0.0.1:{own.port}/0"
    get_redis.cache_clear()
    yield own
    get_redis.cache_clear()
    own.stop()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_every_task_ends_once_through_kills_a_redis_restart_and_a_database_outage(start_worker, own_redis,
                                                                                  tmp_path):
    client = redis.Redis(port=own_redis.port)
    cut = ProxyCut() if connection.vendor == "postgresql" else SqliteCut(tmp_path, connection.settings_dict["NAME"])
    env = worker_env(REDIS_URL=f"redis://127.0.0.1:{own_redis.port}/0", DATABASE_URL=cut.url,
                     VOKAFLOW_VISIBILITY_TIMEOUT=VISIBILITY, VOKAFLOW_RESTORE_INTERVAL=1,
                     VOKAFLOW_DLQ_FLUSH_SECONDS=2, VOKAFLOW_DLQ_PRUNE_SECONDS=86400,
                     DJANGO_SETTINGS_MODULE="vokaflow.settings",
                     **({"DATABASE_CONN_MAX_AGE": 0} if connection.vendor == "sqlite" else {}))
    options = {"general": {"concurrency": 2}, "io": {"concurrency": 4}, "cpu": {"pool": "prefork"}}
    alice, bob = user_with_perms("soak-alice"), user_with_perms("soak-bob")
    beat_log = open(tmp_path / "beat.log", "w")
    beat = subprocess.Popen([sys.executable, "-m", "celery", "-A", "vokaflow", "beat", "-s",
                             str(tmp_path / "beat-schedule"), "-l", "WARNING"], cwd=ROOT, env=env,
                            stdout=beat_log, stderr=subprocess.STDOUT)
    try:
        live = {t: [start_worker(t, wait=False, env=env, **options[t]) for _ in range(n)] for t, n in WORKERS.items()}
        for workers in live.values():
            for worker in workers:
                worker.wait_ready(60)
        killed = []
        t0 = time.monotonic()
        users = Users([alice, bob], t0)
        for at, fault in sorted(FAULTS):
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            if fault.startswith("kill "):
                worker_type = fault.split()[1]
                victim = live[worker_type].pop(0)
                killed.append((victim.name, round(time.monotonic() - t0, 1)))
                victim.kill()
                live[worker_type].append(start_worker(worker_type, wait=False, env=env, **options[worker_type]))
            elif fault == "restart redis":
                own_redis.stop()
                time.sleep(1)
                own_redis.start()
            elif fault == "database down":
                cut.go_down()
            else:
                cut.come_back()
        users.join(120)
        assert sorted(users.ids) == list(range(SOAK_TASKS))
        order = sorted(users.ids)
        ids = [users.ids[i] for i in order]
        assert len(set(ids)) == SOAK_TASKS, "two submissions were answered with the same task"

        def every_state_final():
            return all(m and m["status"] in ("SUCCESS", "FAILURE") for m in metas(client, ids))

        try:
            wait_for(every_state_final, 240, 0.5, "every task's final state")
        except AssertionError:
            states = Counter(m["status"] if m else None for m in metas(client, ids))
            raise AssertionError(f"states {dict(states)}; left {leftovers(client, [alice.pk, bob.pk])}") from None
        wrong = [(i, m) for i, m in zip(order, metas(client, ids), strict=True) if not correct(i, m)]
        assert not wrong, f"{len(wrong)} tasks ended wrong, first {wrong[:3]}"

        failing = {users.ids[i] for i in order if fails(i)}
        mine = set(ids)

        def lettered():
            return set(DeadLetter.objects.filter(task_id__in=list(mine)).values_list("task_id", flat=True))

        wait_for(lambda: lettered() >= failing and not client.llen(keys.DLQ_PENDING), 60, 0.5,
                 "every failing task's dead letter in the table")
        rows = Counter(DeadLetter.objects.filter(task_id__in=list(mine)).values_list("task_id", flat=True))
        assert set(rows) == failing, f"dead letters for {len(set(rows) - failing)} tasks that succeeded"
        assert set(rows.values()) == {1}
        others = list(DeadLetter.objects.exclude(task_id__in=list(mine)).values("task_name", "exception_type", "error"))
        assert not others, f"dead letters of tasks the soak did not submit: {others[:3]}"
        # The fleet is idle: every acknowledgement and every freed quota place has been written.
        try:
            wait_for(lambda: not leftovers(client, [alice.pk, bob.pk]), 30, 0.5, "nothing left behind")
        except AssertionError:
            left = [m.decode() for o in (alice.pk, bob.pk) for m in client.zrange(keys.PENDING.format(o), 0, -1)]
            ran_on = Counter((m or {}).get("worker") for m in metas(client, left))
            raise AssertionError(f"left behind: {leftovers(client, [alice.pk, bob.pk])}; the quota places' "
                                 f"tasks ran on {dict(ran_on)}; killed {killed}") from None
    finally:
        beat.terminate()
        beat.wait(15)
        beat_log.close()
        cut.close()


# What the soak found, one fault at a time.


def test_an_ack_on_a_channel_closed_by_a_lost_connection_leaves_the_task_to_come_back(redis_client, settings):
    # A thread-pool task outlives its channel when Redis goes away while it runs: the consumer
    # lets go of the connection (its transport's details first, then the channels: the held
    # messages stay in `unacked`) and reconnects, then the task finishes and acks through the
    # closed channel. That ack used to raise AttributeError in kombu's client, and the worker died.
    from kombu import Connection, Producer, Queue

    from vokaflow import transport

    queue = Queue("general.normal.p0", routing_key="general.normal.p0")
    conn = Connection(settings.REDIS_URL, transport=transport.Transport, transport_options={"priority_steps": [0]})
    Producer(conn).publish({"n": 1}, routing_key=queue.name, declare=[queue])
    received = []
    conn.Consumer([queue], callbacks=[lambda body, message: received.append(message)], prefetch_count=1).consume()
    conn.drain_events(timeout=5)
    message = received[0]
    conn._do_close_transport()  # kombu's Connection.release, in the order a lost connection takes
    message.channel.close()
    message.ack()  # no error, and no acknowledgement: the task comes back after the visibility timeout
    assert redis_client.hlen(keys.UNACKED) == 1 and redis_client.llen(queue.name) == 0


def test_a_stop_check_that_cannot_reach_redis_lets_the_task_run_on(settings):
    # vokaflow.sleep asks Redis whether it was asked to stop every 0.2 s; a Redis restart made
    # that question raise ConnectionError, and a task that did nothing wrong failed for good.
    from tasks import cancellation
    from vokaflow.redis import get_redis

    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing answers there
    get_redis.cache_clear()
    try:
        cancellation.check_cancelled("soak-away-1")
        assert not cancellation.is_cancelled("soak-away-2")
        cancellation.sleep(0.01, "soak-away-3")
    finally:
        get_redis.cache_clear()


@pytest.mark.django_db(transaction=True)
def test_a_flush_while_the_database_is_away_keeps_the_records_and_is_no_failure(redis_client, monkeypatch):
    # Beat's dlq_flush used to raise the database's error while it was away, so each flush of
    # the outage was itself dead-lettered (a vokaflow.dlq_flush row every VOKAFLOW_DLQ_FLUSH_SECONDS).
    from django.db import OperationalError

    from tasks import dlq

    def away(records):
        raise OperationalError("connection refused")

    monkeypatch.setattr(dlq, "_insert", away)
    dlq.dead_letter_record(task_id="soak-away", task_name="vokaflow.fail", args=[], kwargs={},
                           queue="general.normal.p0", reason="not_retried", exception_type="TaskFailed",
                           error="TaskFailed: x", traceback="", total_retries=0)
    assert redis_client.llen(keys.DLQ_PENDING) == 1
    assert dlq.dead_letter_flush_pending() == 0
    assert redis_client.llen(keys.DLQ_PENDING) == 1
    monkeypatch.undo()
    assert dlq.dead_letter_flush_pending() == 1
    assert list(DeadLetter.objects.values_list("task_id", flat=True)) == ["soak-away"]

"""Dead-letter benchmarks: the failure path, and the admin list with 100,000 rows.

    .venv/bin/python bench/dlq.py --failures 2000 --rows 100000

For each database (SQLite file under bench/results/, and PostgreSQL at 127.0.0.1:5432 in a
database `vokaflow_bench` when one answers): N `vokaflow.fail` tasks are enqueued, a general
worker (threads, concurrency 2) drains them, and the rate is dead letters written per second,
next to plain Celery failing the same number of tasks (FAILURE state only) in the same run.
Then 100,000 dead letters are inserted and the admin list page is timed (median of 10).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
from pathlib import Path

import redis
from common import ROOT, bench_env, bench_redis_url, clear, postgres_database, python, start, stop

FAILURE_PATH = """
import sys, time, django
django.setup()
from tasks.models import DeadLetter
from tasks.submit import enqueue, prepare
n = int(sys.argv[1])
DeadLetter.objects.all().delete()
for start in range(0, n, 1000):
    enqueue([prepare("vokaflow.fail", args=[i]) for i in range(start, min(n, start + 1000))])
print("ready", flush=True)
sys.stdin.readline()
started = None
while (done := DeadLetter.objects.count()) < n:
    if done and started is None:
        started, base = time.perf_counter(), done
    time.sleep(0.05)
print((n - base) / (time.perf_counter() - started))
"""

PLAIN_FAILURES = """
import sys, time
from plain_celery import app
import redis
n = int(sys.argv[1])
r = redis.Redis.from_url(sys.argv[2])
for _ in range(n):
    app.send_task("plain.fail")
print("ready", flush=True)
sys.stdin.readline()
def pending():
    return r.llen("plain") + r.hlen("unacked")
started = None
while (left := pending()) > 0:
    if left < n and started is None:
        started, base = time.perf_counter(), n - left
    time.sleep(0.02)
print((n - base) / (time.perf_counter() - started))
"""

ADMIN_PAGE = """
import statistics, sys, time, django
django.setup()
from datetime import UTC, datetime, timedelta
from django.contrib.auth.models import User
from django.test import Client
from tasks.models import DeadLetter
rows = int(sys.argv[1])
DeadLetter.objects.all().delete()
now = datetime.now(UTC)
types = ["CPU_INTENSIVE", "IO_INTENSIVE", "MEMORY_INTENSIVE", "NETWORK_INTENSIVE", "GENERAL_PURPOSE"]
batch = []
for i in range(rows):
    batch.append(DeadLetter(task_id=f"bench-{i}", task_name=f"app.task_{i % 40}", args=[i], kwargs={},
                            worker_type=types[i % 5], priority="NORMAL", partition=i % 8, queue="general.normal.p0",
                            reason="not_retried", exception_type="ValueError", error=f"ValueError: bad record {i}",
                            traceback="Traceback (most recent call last):\\n" * 20,
                            dlq_timestamp=now - timedelta(seconds=i)))
    if len(batch) == 5000:
        DeadLetter.objects.bulk_create(batch); batch = []
DeadLetter.objects.bulk_create(batch)
from django.db import connection
if connection.vendor == "postgresql":
    with connection.cursor() as cursor:  # what autovacuum does soon after a bulk load
        cursor.execute("ANALYZE tasks_deadletter")
user, _ = User.objects.get_or_create(username="bench-admin", defaults={"is_staff": True, "is_superuser": True})
client = Client()
client.force_login(user)
for label, url in [("list", "/admin/tasks/deadletter/"),
                   ("filtered", "/admin/tasks/deadletter/?worker_type=IO_INTENSIVE&status__exact=dead"),
                   ("search", "/admin/tasks/deadletter/?q=record+4242"),
                   ("middle page", f"/admin/tasks/deadletter/?p={max(1, rows // 200)}")]:
    assert client.get(url).status_code == 200
    times = []
    for _ in range(10):
        t = time.perf_counter(); client.get(url); times.append(time.perf_counter() - t)
    print(f"{label}: {statistics.median(times) * 1000:.0f} ms")
DeadLetter.objects.all().delete()
"""


def run_waiting(code: str, args: list[str], env: dict, workers: list[list[str]], log_dir: Path) -> float:
    """Start the enqueuing script, then the workers once it is ready; return what it prints last."""
    proc = subprocess.Popen([python(), "-c", code, *args], cwd=ROOT, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    procs = [start(argv, env, log_dir / f"dlq-worker-{i}.log") for i, argv in enumerate(workers)]
    try:
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out = proc.stdout.read()
        assert proc.wait() == 0
    finally:
        stop(procs)
    return float(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--failures", type=int, default=2000)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    databases = {"sqlite": f"sqlite:///{results / 'bench-dlq.sqlite3'}"}
    postgres = postgres_database("vokaflow_bench")
    if postgres:
        databases["postgresql"] = postgres
    client = redis.Redis.from_url(bench_redis_url())
    worker = [python(), "-m", "celery", "-A", "vokaflow", "worker", "--type", "general", "-P", "threads", "-c", "2",
              "-l", "WARNING", "--without-mingle", "--without-gossip", "--without-heartbeat"]
    plain_worker = [python(), "-m", "celery", "-A", "bench.plain_celery", "worker", "-Q", "plain", "-P", "threads",
                    "-c", "2", "-l", "ERROR", "--without-mingle", "--without-gossip", "--without-heartbeat"]
    for name, url in databases.items():
        env = bench_env(DATABASE_URL=url, LOG_LEVEL="ERROR", ALLOWED_HOSTS="testserver")
        subprocess.run([python(), "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
        ours, plain = [], []
        for _ in range(args.rounds):
            clear(client)
            ours.append(run_waiting(FAILURE_PATH, [str(args.failures)], env, [worker], results / "logs"))
            clear(client)
            plain.append(run_waiting(PLAIN_FAILURES, [str(args.failures), bench_redis_url()], env, [plain_worker],
                                     results / "logs"))
        ours_rate, plain_rate = statistics.median(ours), statistics.median(plain)
        print(f"{name}: dead-lettered {ours_rate:.0f} failing tasks/s; plain Celery failing (no record) "
              f"{plain_rate:.0f}/s; ratio {ours_rate / plain_rate:.2f}", flush=True)
        out = subprocess.run([python(), "-c", ADMIN_PAGE, str(args.rows)], cwd=ROOT, env=env, check=True,
                             stdout=subprocess.PIPE, text=True).stdout
        print(f"{name}: admin with {args.rows} dead letters: " + "; ".join(out.strip().splitlines()), flush=True)
    clear(client)


if __name__ == "__main__":
    main()

"""Console pages with a loaded fleet: 320 non-empty queues, 50 workers' heartbeats, 100,000 dead letters.

    .venv/bin/python bench/console_pages.py --requests 30

Seeds Redis database 11 (its own; flushed before and after) and the database at DATABASE_URL, or
PostgreSQL `vokaflow_console_bench` at 127.0.0.1:5432 when one answers (SQLite under bench/results/
otherwise), then renders each console page server-side through Django's test client, logged in
as staff, `--requests` times, and prints p50 and p99 in milliseconds. Goal: < 300 ms per page.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import time

from common import ROOT, percentile, postgres_database, python

REDIS_DB = 11


def database_url() -> str:
    if os.environ.get("DATABASE_URL"):
        return os.environ["DATABASE_URL"]
    url = postgres_database("vokaflow_console_bench")
    if url:
        return url
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{ROOT / 'bench' / 'results' / 'bench-console.sqlite3'}"


def seed_redis(r, workers: int, held: int) -> None:
    from django.conf import settings

    from tasks.messages import task_message
    from vokaflow.core import keys
    from vokaflow.core.queues import all_queues, parse_queue
    from vokaflow.core.workers import WorkerType

    rng = random.Random(7)
    queues = all_queues(settings.VOKAFLOW_PARTITIONS)
    with r.pipeline(transaction=False) as pipe:
        for queue in queues:  # every queue non-empty, 1-40 tasks, the oldest up to an hour old
            messages = [task_message(task_id=f"q-{queue}-{i}", name="vokaflow.echo", args_json=f"[{i}]",
                                     kwargs_json="{}", queue=queue, eta=None, origin="bench") for i in range(
                                         rng.randint(1, 40))]
            oldest = json.loads(messages[0])
            oldest["headers"]["vokaflow_enqueued_at"] = time.time() - rng.randint(1, 3600)
            messages[0] = json.dumps(oldest)
            pipe.lpush(queue, *messages)
        types = list(WorkerType)
        future = time.time() + 3600  # stays "live" for the whole run
        for i in range(workers):
            worker_type = types[i % len(types)]
            name = f"{worker_type.short}-{i}@bench-host-{i % 10}"
            active = [{"id": f"run-{i}-{j}", "name": "vokaflow.sleep", "started_at": time.time() - j,
                       "queue": f"{worker_type.short}.normal.p{j % 8}", "args": f"[{j}]"} for j in range(4)]
            info = {"name": name, "host": f"bench-host-{i % 10}", "pid": 1000 + i,
                    "worker_types": [worker_type.value], "partitions": list(range(8)), "pool": "threads",
                    "concurrency": 8, "busy": len(active), "processed": 1000 * i, "active": active,
                    "started_at": time.time() - 3600, "last_seen": future}
            pipe.set(keys.WORKER.format(name), json.dumps(info), ex=3600)
            pipe.zadd(keys.WORKERS, {name: future})
        for bucket in (60, 900):  # a day of history for the charts
            now = int(time.time()) // bucket
            for n in range(now - 24 * 3600 // bucket, now + 1):
                pipe.set(keys.HISTORY.format(bucket, "completed", n), rng.randint(500, 5000) * bucket // 60, ex=3600)
                pipe.set(keys.HISTORY.format(bucket, "failed", n), rng.randint(0, 50) * bucket // 60, ex=3600)
        for i in range(held):  # countdown tasks a worker holds until they are due
            queue = rng.choice(queues)
            message = json.loads(task_message(task_id=f"eta-{i}", name="vokaflow.echo", args_json=f"[{i}]",
                                              kwargs_json="{}", queue=queue, eta=None, origin="bench"))
            message["headers"]["eta"] = time.strftime("%Y-%m-%dT%H:%M:%S+00:00",
                                                      time.gmtime(time.time() + rng.randint(60, 3000)))
            route = parse_queue(queue)
            pipe.hset("unacked", f"tag-{i}", json.dumps([message, "", route.queue]))
        pipe.execute()


def seed_dead_letters(rows: int) -> None:
    from datetime import UTC, datetime, timedelta

    from django.db import connection

    from tasks.models import DeadLetter

    DeadLetter.objects.all().delete()
    now = datetime.now(UTC)
    types = ["CPU_INTENSIVE", "IO_INTENSIVE", "MEMORY_INTENSIVE", "NETWORK_INTENSIVE", "GENERAL_PURPOSE"]
    statuses = ["dead"] * 7 + ["retried", "resolved", "discarded"]
    batch = []
    for i in range(rows):
        batch.append(DeadLetter(
            task_id=f"bench-{i}", task_name=f"app.task_{i % 40}", args=[i], kwargs={}, worker_type=types[i % 5],
            priority="NORMAL", partition=i % 8, queue="general.normal.p0", reason="not_retried",
            exception_type="ValueError", error=f"ValueError: bad record {i}", status=statuses[i % 10],
            traceback="Traceback (most recent call last):\n" * 20, dlq_timestamp=now - timedelta(seconds=i)))
        if len(batch) == 5000:
            DeadLetter.objects.bulk_create(batch)
            batch = []
    DeadLetter.objects.bulk_create(batch)
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:  # what autovacuum does soon after a bulk load (and the delete)
            cursor.execute("VACUUM ANALYZE tasks_deadletter")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=30, help="requests per page")
    parser.add_argument("--rows", type=int, default=100_000, help="dead letters")
    parser.add_argument("--workers", type=int, default=50, help="workers' heartbeats")
    parser.add_argument("--held", type=int, default=1000, help="countdown tasks held by workers")
    args = parser.parse_args()

    base = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    os.environ.update({"REDIS_URL": base.rsplit("/", 1)[0] + f"/{REDIS_DB}", "DATABASE_URL": database_url(),
                       "DJANGO_SETTINGS_MODULE": "vokaflow.settings", "LOG_LEVEL": "ERROR",
                       "ALLOWED_HOSTS": "testserver", "VOKAFLOW_HEARTBEAT_TTL": "3600"})
    os.environ.setdefault("SECRET_KEY", "vokaflow-bench-key-not-secret-0123456789")
    subprocess.run([python(), "manage.py", "migrate", "-v", "0"], cwd=ROOT, check=True)

    import django

    django.setup()
    from django.contrib.auth.models import User
    from django.test import Client

    from vokaflow.redis import get_redis

    r = get_redis()
    r.flushdb()  # the benchmark's own database number only
    seed_redis(r, args.workers, args.held)
    seed_dead_letters(args.rows)
    user, _ = User.objects.get_or_create(username="bench-console", defaults={"is_staff": True, "is_superuser": True})
    client = Client()
    client.force_login(user)
    pages = [("overview", "/console/"), ("overview fragment (2 s refresh)", "/console/?partial=1"),
             ("queues", "/console/queues/"), ("queues fragment", "/console/queues/?partial=1"),
             ("running", "/console/running/"), ("scheduled", "/console/scheduled/"),
             ("task", "/console/tasks/bench-4242/"), ("submit", "/console/submit/"),
             ("dead letters (admin list)", "/admin/tasks/deadletter/"),
             ("dead letters, filtered", "/admin/tasks/deadletter/?worker_type=IO_INTENSIVE&status__exact=dead"),
             ("dead letter page", "/admin/tasks/deadletter/4242/change/"),
             ("retry-matching confirmation", "/admin/tasks/deadletter/retry-matching/?priority=NORMAL")]
    from tasks.submit import enqueue, prepare

    enqueue([prepare("vokaflow.echo", args=[1])])  # a task record for the task page
    record = next(iter(r.scan_iter("vokaflow:task:*"))).decode().rsplit(":", 1)[1]
    print(f"{args.rows:,} dead letters, {args.workers} heartbeats, 320 non-empty queues, {args.held} held "
          f"countdown tasks; {args.requests} requests per page; database {os.environ['DATABASE_URL'].split('://')[0]}")
    print("| page | p50 | p99 |\n|---|---|---|")
    for label, url in pages:
        url = url.replace("bench-4242", record).replace("/4242/", f"/{_pk(4242)}/")
        response = client.get(url)
        assert response.status_code == 200, (url, response.status_code)
        times = []
        for _ in range(args.requests):
            started = time.perf_counter()
            client.get(url)
            times.append((time.perf_counter() - started) * 1000)
        print(f"| {label} | {percentile(times, 50):.0f} ms | {percentile(times, 99):.0f} ms |", flush=True)
    from tasks.models import DeadLetter

    DeadLetter.objects.all().delete()
    r.flushdb()


def _pk(index: int) -> int:
    from tasks.models import DeadLetter

    return DeadLetter.objects.filter(task_id=f"bench-{index}").values_list("pk", flat=True).first()


if __name__ == "__main__":
    main()

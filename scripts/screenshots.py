#!/usr/bin/env python3
"""Screenshots of the console for the README: overview, queues, dead letters, schedules and limits, with sample data.

    .venv/bin/python scripts/screenshots.py            # writes docs/console-*.png
    .venv/bin/python scripts/screenshots.py --out /tmp # elsewhere

Uses Redis database 10 (flushed before and after) and a SQLite file under .run/, seeds a fleet
(queues, heartbeats, a day of throughput, dead letters, one paused level), serves the project
with gunicorn on a free port and photographs the pages with headless Chromium at 1,366 px wide
(Debian: apt-get install chromium chromium-driver).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REDIS_DB = 10
PASSWORD = "screenshots-only"
PAGES = [("console-overview.png", "/console/"), ("console-queues.png", "/console/queues/"),
         ("console-dead-letters.png", "/admin/tasks/deadletter/"), ("console-schedules.png", "/console/schedules/"),
         ("console-limits.png", "/console/limits/")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def seed(r) -> None:
    from datetime import UTC, datetime, timedelta

    from django.contrib.auth.models import User

    from tasks.messages import task_message
    from tasks.models import DeadLetter
    from vokaflow.core import keys
    from vokaflow.core.priorities import Priority
    from vokaflow.core.queues import Route
    from vokaflow.core.workers import WorkerType

    rng = random.Random(42)
    now = time.time()
    load = {WorkerType.CPU_INTENSIVE: 0.9, WorkerType.IO_INTENSIVE: 0.5, WorkerType.MEMORY_INTENSIVE: 0.2,
            WorkerType.NETWORK_INTENSIVE: 0.6, WorkerType.GENERAL_PURPOSE: 0.7}
    with r.pipeline(transaction=False) as pipe:
        for worker_type, busy in load.items():
            for priority in Priority:
                for partition in range(8):
                    if rng.random() > busy * (1 - int(priority) / 10):
                        continue
                    depth = int(rng.paretovariate(1.2) * (3 if priority < Priority.NORMAL else 20))
                    queue = Route(worker_type, priority, partition).queue
                    messages = [task_message(task_id=f"{queue}-{i}", name="billing.send_invoice", args_json=f"[{i}]",
                                             kwargs_json="{}", queue=queue, eta=None, origin="demo")
                                for i in range(depth)]
                    oldest = json.loads(messages[0])
                    oldest["headers"]["vokaflow_enqueued_at"] = now - rng.randint(2, 900) * (1 + int(priority))
                    pipe.lpush(queue, json.dumps(oldest), *messages[1:])
        for i, worker_type in enumerate(WorkerType):
            for host in range(2):
                name = f"{worker_type.short}@worker-{host + 1}"
                concurrency = 4 if worker_type is WorkerType.CPU_INTENSIVE else 8
                busy = min(concurrency, int(concurrency * load[worker_type] + host))
                active = [{"id": f"{worker_type.short}-{host}-{j}-5f0c2a9e", "name": "reports.build",
                           "started_at": now - rng.randint(1, 400), "queue": f"{worker_type.short}.normal.p{j}",
                           "args": f'[{rng.randint(1000, 9999)}] {{"customer": "c-{j}"}}'} for j in range(busy)]
                beat = {
                    "name": name, "host": f"worker-{host + 1}", "pid": 4000 + i, "worker_types": [worker_type.value],
                    "partitions": list(range(8)), "pool": "prefork" if worker_type is WorkerType.CPU_INTENSIVE
                    else "threads", "concurrency": concurrency, "busy": busy, "processed": rng.randint(1e4, 1e6),
                    "active": active, "started_at": now - 86400, "last_seen": now + 3600}
                if worker_type is WorkerType.IO_INTENSIVE:  # the io workers autoscale (README: Autoscaling)
                    why = "oldest waiting task {} s > target 1 s with all {} slots busy"
                    changes = [(now - 400 - 90 * host, 2, 4, why.format(3.1, 2)),
                               (now - 399 - 90 * host, 4, 8, why.format(4.0, 4))]
                    decisions = [{"at": at, "from": a, "to": b, "why": why} for at, a, b, why in reversed(changes)]
                    beat["autoscale"] = {"min": 2, "max": 16, "target_wait_seconds": 1.0, "target": concurrency,
                                         "slots": concurrency, "ceiling": 16, "last_change": decisions[0],
                                         "decisions": decisions}
                pipe.set(keys.WORKER.format(name), json.dumps(beat), ex=3600)
                pipe.zadd(keys.WORKERS, {name: now + 3600})
        for bucket in (60, 900):
            current = int(now) // bucket
            for n in range(current - 86400 // bucket, current + 1):
                hour = (n * bucket / 3600) % 24
                rate = 900 + 700 * max(0.0, 1 - abs(hour - 14) / 8) + rng.randint(-80, 80)  # busier afternoons
                pipe.set(keys.HISTORY.format(bucket, "completed", n), int(rate * bucket / 60), ex=3600)
                pipe.set(keys.HISTORY.format(bucket, "failed", n), int(rng.choice([0, 0, 2, 5, 12]) * bucket / 60),
                         ex=3600)
        for second in range(int(now) - 60, int(now) + 1):  # the last minute's throughput
            pipe.set(f"vokaflow:done:{second}", rng.randint(15, 30), ex=120)
        pipe.sadd(keys.PAUSED, "GENERAL_PURPOSE:BATCH")
        pipe.execute()

    DeadLetter.objects.all().delete()
    errors = [("ConnectionError", "ConnectionError: smtp.example.com:587 refused the connection", "retries_exhausted"),
              ("ValueError", "ValueError: invoice 8812 has no customer", "not_retried"),
              ("TimeLimitExceeded", "TimeLimitExceeded: hard time limit (60 s) exceeded", "time_limit"),
              ("PoisonTask", "PoisonTask: delivered 4 times; the worker process died each time", "poison")]
    names = ["billing.send_invoice", "reports.build", "media.transcode", "crm.sync_contact", "search.reindex"]
    letters = []
    for i in range(140):
        worker_type = rng.choice(list(WorkerType))
        priority = rng.choice(list(Priority))
        exception, error, reason = rng.choice(errors)
        letters.append(DeadLetter(
            task_id=f"9a3c{i:04d}-51be-4c1e-a1d3-{rng.randint(10**11, 10**12 - 1)}", task_name=rng.choice(names),
            args=[rng.randint(1, 9999)], kwargs={}, worker_type=worker_type.value, priority=priority.name,
            partition=i % 8, queue=Route(worker_type, priority, i % 8).queue, reason=reason, exception_type=exception,
            error=error, traceback="Traceback (most recent call last):\n  ...", total_retries=rng.randint(0, 5),
            status=rng.choice(["dead"] * 6 + ["retried", "resolved", "discarded"]),
            dlq_timestamp=datetime.now(UTC) - timedelta(minutes=7 * i)))
    DeadLetter.objects.bulk_create(letters)
    seed_schedules(r, rng)
    seed_limits(r)
    User.objects.filter(username="admin").delete()
    User.objects.create_superuser("admin", "admin@example.com", PASSWORD)


def seed_schedules(r, rng) -> None:
    """A few schedules, each with its last occurrences (states written as a worker would)."""
    from datetime import UTC, datetime, timedelta

    from tasks.models import Schedule
    from tasks.schedules import runs

    Schedule.objects.exclude(source=Schedule.Source.CODE).delete()
    now = datetime.now(UTC)
    shapes = [("nightly-invoices", "vokaflow.echo", {"cron": "0 3 * * *", "timezone": "Europe/Paris"}, 86400),
              ("hourly-crm-sync", "vokaflow.noop", {"cron": "5 * * * *"}, 3600),
              ("reindex-search", "vokaflow.sleep", {"every": 300, "overlap": "skip"}, 300),
              ("weekday-report", "vokaflow.echo", {"cron": "30 8 * * mon-fri", "timezone": "America/New_York"}, 86400),
              ("cache-warmup", "vokaflow.noop", {"every": 60}, 60)]
    for name, task, timing, period in shapes:
        schedule = Schedule.objects.create(name=name, task=task, active_since=now - timedelta(days=3),
                                           enabled=name != "cache-warmup", **timing)
        for n in range(5, 0, -1):
            due = (now - timedelta(seconds=period * n)).timestamp()
            if name == "reindex-search" and n == 2:
                runs.record_run(r, schedule.pk, runs.Run(due, None, skipped="overlap"))
                continue
            task_id = f"5c0e{schedule.pk:02d}{n:02d}-7d1a-4b8e-9f00-{rng.randint(10**11, 10**12 - 1)}"
            status = "FAILURE" if name == "hourly-crm-sync" and n == 3 else "SUCCESS"
            r.set(f"celery-task-meta-{task_id}", json.dumps({"status": status, "result": None, "task_id": task_id}))
            runs.record_run(r, schedule.pk, runs.Run(due, task_id))


def seed_limits(r) -> None:
    """Two limits set over the API, with places taken and tasks waiting (as workers leave them)."""
    import time

    from vokaflow.core import keys

    r.hset(keys.LIMITS, mapping={"stripe": json.dumps({"rate": "90/s", "concurrency": None, "per": None}),
                                 "customer-exports": json.dumps({"rate": None, "concurrency": 2,
                                                                 "per": "customer_id"})})
    now = time.time()
    for key, running, waiting in [("acme", 2, 14), ("globex", 2, 3), ("initech", 1, 0)]:
        tag = keys.limit_tag("customer-exports", key)
        r.zadd(keys.LIMIT_RUNNING.format(tag), {f"{key}-run-{i}": now + 600 for i in range(running)})
        if waiting:
            r.zadd(keys.LIMIT_WAITING.format(tag), {f"{key}-wait-{i}": 3e11 + now + i for i in range(waiting)})
    r.zadd(keys.LIMIT_WAITING.format(keys.limit_tag("stripe", "")), {f"charge-{i}": 3e11 + now + i for i in range(37)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs", help="folder to write the PNG files to")
    args = parser.parse_args()
    chromium, chromedriver = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    if not chromium or not chromedriver:
        sys.exit("no headless browser: apt-get install chromium chromium-driver")
    (ROOT / ".run").mkdir(exist_ok=True)
    base = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    port = free_port()
    os.environ.update({"REDIS_URL": base.rsplit("/", 1)[0] + f"/{REDIS_DB}",
                       "DJANGO_SETTINGS_MODULE": "vokaflow.settings",
                       "DATABASE_URL": f"sqlite:///{ROOT / '.run' / 'screenshots.sqlite3'}", "LOG_LEVEL": "WARNING",
                       "VOKAFLOW_HEARTBEAT_TTL": "3600", "ALLOWED_HOSTS": "127.0.0.1"})
    os.environ.setdefault("SECRET_KEY", "vokaflow-screenshots-key-not-secret-0123456789")
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "-v", "0"], cwd=ROOT, check=True)
    subprocess.run([*manage, "collectstatic", "--noinput", "-v", "0"], cwd=ROOT, check=True)

    import django

    django.setup()
    from vokaflow.redis import get_redis

    r = get_redis()
    r.flushdb()  # database 10 only
    seed(r)
    server = subprocess.Popen([sys.executable, "-m", "gunicorn", "vokaflow.wsgi", "--bind", f"127.0.0.1:{port}",
                               "--workers", "1", "--threads", "4"], cwd=ROOT)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(url + "/api/health/", timeout=1)
                break
            except OSError as exc:
                if getattr(exc, "code", None):
                    break  # it answers (503 without live workers is fine)
                time.sleep(0.1)
        photograph(url, chromium, chromedriver, args.out.resolve())
    finally:
        server.terminate()
        server.wait(10)
        r.flushdb()


def photograph(url: str, chromium: str, chromedriver: str, out: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1366,900",
                     "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        driver.get(url + "/admin/login/?next=/console/")
        driver.find_element(By.ID, "id_username").send_keys("admin")
        driver.find_element(By.ID, "id_password").send_keys(PASSWORD)
        driver.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
        for name, path in PAGES:
            driver.set_window_size(1366, 900)
            driver.get(url + path)
            time.sleep(0.5)
            height = driver.execute_script("return document.documentElement.scrollHeight")
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {  # the whole page, up to 1,500 px
                "width": 1366, "height": min(max(height, 700), 1500), "deviceScaleFactor": 1, "mobile": False})
            time.sleep(0.3)
            target = out / name
            driver.save_screenshot(str(target))
            print(f"wrote {target}")
    finally:
        driver.quit()


if __name__ == "__main__":
    main()

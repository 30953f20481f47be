"""One beat with 10,000 schedules: its CPU per minute, the lag from due time to enqueue, and the
time a change takes to reach it.

    .venv/bin/python bench/schedules.py --schedules 10000 --seconds 120

Makes the schedules in a SQLite database under bench/results/ (half `every` 30/60/120/300 s,
half cron `* * * * *`, `*/2 * * * *`, `*/5 * * * *`, `0 * * * *`, in UTC and Europe/Paris), starts
`celery -A vokaflow beat` on Redis database 12 (BENCH_REDIS_DB) with no worker, and lets it run
for --seconds. Then:
- CPU: the beat process's user + system time (from /proc) over the run, per minute;
- lag: for every occurrence enqueued, the message's enqueue stamp minus its due time (the due
  time is in its idempotency key, the stamp in its message);
- change: --changes times, a schedule that was due hourly is changed to every 1 s through the
  service (as the API does): the time from the change until its first occurrence is enqueued.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import time
from pathlib import Path

import redis
from common import ROOT, bench_env, bench_redis_url, median, percentile, python, start, stop

EVERY = [30, 60, 120, 300]
CRONS = ["* * * * *", "*/2 * * * *", "*/5 * * * *", "0 * * * *"]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_schedules(n: int, changes: int) -> None:
    import django

    django.setup()
    from django.utils import timezone

    from tasks.models import Schedule

    Schedule.objects.exclude(source=Schedule.Source.CODE).delete()
    now = timezone.now()
    rng = random.Random(7)
    rows = []
    for i in range(n):
        fields = {"every": rng.choice(EVERY)} if i % 2 == 0 else \
            {"cron": rng.choice(CRONS), "timezone": "UTC" if i % 4 == 1 else "Europe/Paris"}
        rows.append(Schedule(name=f"bench-{i}", task="vokaflow.noop", active_since=now, **fields))
    rows += [Schedule(name=f"bench-change-{i}", task="vokaflow.noop", every=3600, active_since=now)
             for i in range(changes)]
    Schedule.objects.bulk_create(rows, batch_size=2000)


def change_latencies(client: redis.Redis, changes: int) -> list[float]:
    from tasks.models import Schedule
    from tasks.schedules.services import schedule_update

    out = []
    for i in range(changes):
        schedule = Schedule.objects.get(name=f"bench-change-{i}")
        before = time.time()
        schedule_update(schedule_id=schedule.pk, every=1)
        pattern = f"*vokaflow:idem:system:schedule:{schedule.pk}:*"
        while not any(True for _ in client.scan_iter(match=pattern, count=10_000)):
            if time.time() - before > 30:
                raise SystemExit(f"a change to schedule {schedule.pk} did not take effect in 30 s")
            time.sleep(0.02)
        out.append(time.time() - before)
        schedule_update(schedule_id=schedule.pk, enabled=False)
        time.sleep(1)
    return out


def lags(client: redis.Redis) -> dict[float, float]:
    enqueued = {}
    for key in client.scan_iter(match="*.p*", count=10_000):
        if client.type(key) != b"list":
            continue
        for raw in client.lrange(key, 0, -1):
            headers = json.loads(raw)["headers"]
            enqueued[headers["id"]] = headers["vokaflow_enqueued_at"]
    out = {}
    for key in client.scan_iter(match="*vokaflow:idem:system:schedule:*", count=10_000):
        due = float(key.decode().rsplit(":", 1)[1])
        task_id = client.get(key).decode()
        if task_id in enqueued:
            out[task_id] = (due, enqueued[task_id] - due)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--schedules", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--changes", type=int, default=10)
    args = parser.parse_args()

    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    database = results / "schedules.sqlite3"
    env = bench_env(DATABASE_URL=f"sqlite:///{database}", LOG_LEVEL="WARNING")
    os.environ.update(env)
    subprocess.run([python(), "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    client = redis.Redis.from_url(bench_redis_url())
    client.flushdb()  # the benchmark's own database
    make_schedules(args.schedules, args.changes)
    print(f"{args.schedules} schedules made; beat runs for {args.seconds:.0f} s", flush=True)

    beat = start([python(), "-m", "celery", "-A", "vokaflow", "beat", "-l", "WARNING"], env,
                 results / "schedules-beat.log")
    try:
        time.sleep(5)  # loaded, first pass done
        cpu0, t0, steady_from = cpu_seconds(beat.pid), time.monotonic(), time.time()
        time.sleep(args.seconds)
        cpu1, t1, steady_until = cpu_seconds(beat.pid), time.monotonic(), time.time()
        changes = change_latencies(client, args.changes)
    finally:
        stop([beat])
    found = lags(client).values()
    lag = [late for due, late in found if steady_from <= due <= steady_until]
    print(f"beat CPU: {(cpu1 - cpu0) / (t1 - t0) * 60:.2f} s per minute ({(cpu1 - cpu0) / (t1 - t0) * 100:.1f} % "
          f"of one core) with {args.schedules} schedules")
    print(f"occurrences due in the run, enqueued: {len(lag)}; lag due → enqueued: p50 {median(lag) * 1000:.0f} ms, "
          f"p99 {percentile(lag, 99) * 1000:.0f} ms, max {max(lag) * 1000:.0f} ms")
    print(f"a change takes effect in: p50 {median(changes) * 1000:.0f} ms, max {max(changes) * 1000:.0f} ms "
          f"({args.changes} changes; includes up to 1 s until the first due time)")


if __name__ == "__main__":
    main()

"""Cost of the fleet bookkeeping, and the status/metrics endpoints under a big fleet.

    .venv/bin/python bench/fleet.py --tasks 20000 --rounds 2

1. End-to-end no-op throughput of VokaFlow with heartbeats and counters on, and with them off
   (VOKAFLOW_FLEET_REPORTING=0), alternating in the same run (solo pool, 2 processes).
2. Latency of GET workers/status, GET metrics and GET /metrics with 50 workers' heartbeats and
   all 320 queues holding tasks (Django test client in-process, 50 requests each).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess

from common import ROOT, bench_env, python
from throughput import LAYOUTS, drain

ENDPOINTS = """
import json, statistics, sys, time, django
django.setup()
from django.contrib.auth.models import User
from rest_framework.test import APIClient
from vokaflow.core.queues import all_queues
from vokaflow.redis import get_redis
from vokaflow.core import keys

r = get_redis()
now = time.time()
with r.pipeline() as pipe:
    for i in range(50):
        kind = ["cpu", "io", "memory", "network", "general"][i % 5]
        name = f"{kind}{i}@host{i // 5}"
        info = {"name": name, "host": f"host{i // 5}", "pid": 1000 + i, "worker_types": [
            {"cpu": "CPU_INTENSIVE", "io": "IO_INTENSIVE", "memory": "MEMORY_INTENSIVE",
             "network": "NETWORK_INTENSIVE", "general": "GENERAL_PURPOSE"}[kind]],
            "partitions": list(range(8)), "pool": "threads", "concurrency": 4, "busy": i % 3,
            "processed": 1000 * i, "started_at": now - 3600, "last_seen": now}
        pipe.set(keys.WORKER.format(name), json.dumps(info), ex=600)
        pipe.zadd(keys.WORKERS, {name: now + 500})
    for queue in all_queues(8):
        pipe.lpush(queue, *["{}"] * 3)
    pipe.execute()
user, _ = User.objects.get_or_create(username="bench-fleet")
client = APIClient()
client.force_authenticate(user)
for path in ["/api/high-scale-tasks/workers/status", "/api/high-scale-tasks/metrics", "/metrics"]:
    assert client.get(path).status_code == 200
    times = []
    for _ in range(50):
        t = time.perf_counter(); client.get(path); times.append(time.perf_counter() - t)
    times.sort()
    print(f"{path}: p50 {statistics.median(times) * 1000:.1f} ms, p99 {times[-1] * 1000:.1f} ms")
r.flushdb()
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    log_dir = ROOT / "bench" / "results" / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    rates: dict[str, list[float]] = {"on": [], "off": []}
    for round_no in range(args.rounds):
        for mode in (["on", "off"] if round_no % 2 == 0 else ["off", "on"]):
            env = bench_env(VOKAFLOW_FLEET_REPORTING="1" if mode == "on" else "0")
            rate = drain("vokaflow", LAYOUTS["solo-1x2"], args.tasks, log_dir, env=env)["drain_per_s"]
            rates[mode].append(rate)
            print(f"round {round_no + 1} bookkeeping {mode:<3} {rate:7.0f} tasks/s", flush=True)
    on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
    print(f"bookkeeping on {on:.0f}/s, off {off:.0f}/s: cost {(1 - on / off) * 100:.1f} %")
    db = ROOT / "bench" / "results" / "bench.sqlite3"
    env = bench_env(DATABASE_URL=f"sqlite:///{db}", ALLOWED_HOSTS="testserver", LOG_LEVEL="ERROR")
    subprocess.run([python(), "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    print(subprocess.run([python(), "-c", ENDPOINTS], cwd=ROOT, env=env, check=True, stdout=subprocess.PIPE,
                         text=True).stdout.strip())


if __name__ == "__main__":
    main()

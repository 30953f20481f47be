"""Submit→start latency of a single task on an idle worker (the bell wait), p50 and p99.

    .venv/bin/python bench/latency.py --tasks 300 [--root /path/to/another/checkout]

One io worker as `make run` starts it (threads, 2 slots on 2 cores, -l INFO) waits idle; one
`vokaflow.sleep(0)` is submitted at a time, 20 ms after the previous one finished. Measured:
submit → the task starts (its own `started_at`), and submit → its SUCCESS is readable in Redis.
`--root` runs another checkout of VokaFlow (e.g. the code before a change) with this virtualenv.
Uses the benchmark's Redis database (bench/common.py).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import redis
from common import ROOT, bench_env, bench_redis_url, clear, percentile, python, stop, wait_until

CLIENT = """
import json, sys, time
import django; django.setup()
from tasks.submit import submit_task
from vokaflow.redis import get_redis
r = get_redis()
out = []
for _ in range(int(sys.argv[1])):
    time.sleep(0.02)
    submitted = time.time()
    task_id = submit_task("vokaflow.sleep", args=[0])
    key = "celery-task-meta-" + task_id
    while True:
        raw = r.get(key)
        if raw and b'"SUCCESS"' in raw:
            visible = time.time()
            break
        time.sleep(0.0002)
    out.append((json.loads(raw)["result"]["started_at"] - submitted, visible - submitted))
print(json.dumps(out))
"""


def measure(root: Path, n: int, log: Path) -> dict:
    client = redis.Redis.from_url(bench_redis_url())
    clear(client)
    env = bench_env(PYTHONPATH=str(root), VOKAFLOW_CONCURRENCY_IO="2")
    worker = subprocess.Popen([python(), "-m", "celery", "-A", "vokaflow", "worker", "--type", "io", "-P", "threads",
                               "-c", "2", "-n", "latency@%h", "-l", "INFO", "--without-mingle", "--without-gossip"],
                              cwd=root, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        wait_until(lambda: b"ready." in log.read_bytes(), 60, "the worker to be ready")
        time.sleep(1)
        out = subprocess.run([python(), "-c", CLIENT, str(n)], cwd=root, env=env, capture_output=True, text=True,
                             check=True)
        pairs = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        stop([worker])
    starts = [p[0] * 1000 for p in pairs]
    visible = [p[1] * 1000 for p in pairs]
    return {"start_p50": percentile(starts, 50), "start_p99": percentile(starts, 99),
            "result_p50": percentile(visible, 50), "result_p99": percentile(visible, 99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--root", type=Path, action="append", default=[],
                        help="checkouts to compare (default: this one); alternated within each round")
    args = parser.parse_args()
    roots = args.root or [ROOT]
    log_dir = ROOT / "bench" / "results" / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    for round_no in range(args.rounds):
        for i, root in enumerate(roots if round_no % 2 == 0 else list(reversed(roots))):
            r = measure(root.resolve(), args.tasks, log_dir / f"latency-{i}.log")
            print(f"round {round_no + 1} {str(root):<30} submit→start p50 {r['start_p50']:.2f} ms "
                  f"p99 {r['start_p99']:.2f} ms   submit→SUCCESS readable p50 {r['result_p50']:.2f} ms "
                  f"p99 {r['result_p99']:.2f} ms", flush=True)


if __name__ == "__main__":
    main()

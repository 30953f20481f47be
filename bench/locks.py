"""Lock benchmark: vokaflow.locks against redis-py's own Lock, same Redis, same run.

    .venv/bin/python bench/locks.py --pairs 20000 --rounds 3

Uncontended: one process, acquire+release pairs on one key, pairs/s and p99 of a pair.
Contended: 8 processes on one key, blocking acquire, total pairs/s.
Uses Redis database 12 of REDIS_URL.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time

from common import ROOT, bench_env, bench_redis_url, percentile, python


def uncontended(kind: str, pairs: int) -> tuple[float, float]:
    import redis

    client = redis.Redis.from_url(bench_redis_url())
    from vokaflow import locks

    if kind == "vokaflow":
        def pair():
            locks.release(locks.acquire("bench-u", 10, client=client), client=client)
    else:
        def pair():
            lock = client.lock("bench-u-redispy", timeout=10)
            lock.acquire(blocking=False)
            lock.release()
    for _ in range(500):
        pair()
    times = []
    started = time.perf_counter()
    for _ in range(pairs):
        t = time.perf_counter()
        pair()
        times.append(time.perf_counter() - t)
    return pairs / (time.perf_counter() - started), percentile(times, 99)


CONTENDED = """
import sys, redis
from vokaflow import locks
kind, pairs = sys.argv[1], int(sys.argv[2])
client = redis.Redis.from_url(sys.argv[3])
for _ in range(pairs):
    if kind == "vokaflow":
        locks.release(locks.acquire("bench-c", 10, wait=60, client=client), client=client)
    else:
        lock = client.lock("bench-c-redispy", timeout=10, sleep=0.001)
        lock.acquire(blocking=True, blocking_timeout=60)
        lock.release()
"""


def contended(kind: str, processes: int, pairs: int) -> float:
    started = time.perf_counter()
    procs = [subprocess.Popen([python(), "-c", CONTENDED, kind, str(pairs), bench_redis_url()], cwd=ROOT,
                              env=bench_env()) for _ in range(processes)]
    for proc in procs:
        assert proc.wait(300) == 0
    return processes * pairs / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument("--contended-pairs", type=int, default=500, help="pairs per process")
    args = parser.parse_args()
    rates: dict[str, list[float]] = {"vokaflow": [], "redis-py": []}
    p99s: dict[str, list[float]] = {"vokaflow": [], "redis-py": []}
    busy: dict[str, list[float]] = {"vokaflow": [], "redis-py": []}
    for round_no in range(args.rounds):
        kinds = ["vokaflow", "redis-py"] if round_no % 2 == 0 else ["redis-py", "vokaflow"]
        for kind in kinds:
            rate, p99 = uncontended(kind, args.pairs)
            rates[kind].append(rate)
            p99s[kind].append(p99)
            busy[kind].append(contended(kind, args.processes, args.contended_pairs))
            print(f"round {round_no + 1} {kind:<9} uncontended {rate:7.0f} pairs/s p99 {p99 * 1e6:6.0f} us   "
                  f"contended x{args.processes} {busy[kind][-1]:7.0f} pairs/s", flush=True)
    med = {k: (statistics.median(rates[k]), statistics.median(p99s[k]), statistics.median(busy[k])) for k in rates}
    print(f"\nmedians over {args.rounds} rounds:")
    for kind, (rate, p99, contended_rate) in med.items():
        print(f"  {kind:<9} uncontended {rate:7.0f} pairs/s  p99 {p99 * 1e6:5.0f} us  "
              f"contended {contended_rate:7.0f}/s")
    print(f"  ratio vokaflow/redis-py uncontended {med['vokaflow'][0] / med['redis-py'][0]:.2f}, "
          f"contended {med['vokaflow'][2] / med['redis-py'][2]:.2f}")


if __name__ == "__main__":
    main()

"""Large tasks and everyone else: how long Redis is held while a worker drains 2 MB messages.

    .venv/bin/python bench/large_tasks.py --tasks 64 --rounds 3
    .venv/bin/python bench/large_tasks.py --root /tmp/before --root .    # code before/after

Each round and checkout: a redis-server of its own with `slowlog-log-slower-than 1000` (1 ms);
N `vokaflow.echo` tasks whose argument is a 1,500,000-character string (a 2 MB message once
base64-encoded) enqueued at HIGH to the general type; one worker started as `manage.py worker
general` starts it drains them while another client sends PING every millisecond and records
its round trip. Printed: PING p50/p99/max during the drain, the slow log's entries over 2 ms and
its slowest command. Baseline (--small): the same with a 10-character argument.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import tempfile
import time
from pathlib import Path

import redis
from common import OwnRedis, median, own_env, own_redis_log_dir, percentile, python, start, stop

ENQUEUE = ("import django; django.setup()\nfrom tasks.submit import enqueue, prepare\n"
           "enqueue([prepare('vokaflow.echo', args=['x' * SIZE], priority='HIGH', worker_type='general')"
           " for _ in range(N)])\n")
VERBOSE = False
CORES = sorted(os.sched_getaffinity(0))  # the cores this benchmark may use, before it pins anything
QUEUES = [f"general.high.p{p}" for p in range(8)]


def waiting(client: redis.Redis) -> int:
    with client.pipeline(transaction=False) as pipe:
        for queue in QUEUES:
            pipe.llen(queue)
        pipe.hlen("unacked")
        return sum(pipe.execute())


def pinger(port: int, stop_at, results, pin: set[int]) -> None:
    """In a process of its own (no other thread of the benchmark holds its GIL): a PING every
    millisecond until `stop_at` is set; the round trips (ms) go back through `results`."""
    if pin:
        os.sched_setaffinity(0, pin)
    client = redis.Redis(port=port)
    rtts = []
    while not stop_at.is_set():
        began = time.perf_counter()
        client.ping()
        rtts.append((time.perf_counter() - began) * 1000)
        time.sleep(0.001)
    results.send(rtts)


def measure(root: Path, n: int, size: int, log_dir: Path, pin: bool = False) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        own = OwnRedis(folder, "--slowlog-log-slower-than", "1000", "--slowlog-max-len", "100000")
        client = own.start()
        redis_core: set[int] = set()
        if pin:  # Redis and the pinger on the last core; this process and the worker on the others
            cores = CORES
            redis_core = {cores[-1]}
            subprocess.run(["taskset", "-a", "-p", "-c", str(cores[-1]), str(own.proc.pid)], check=True,
                           stdout=subprocess.DEVNULL)
            os.sched_setaffinity(0, cores[:-1])
        env = own_env(own.port, root, folder)
        try:
            subprocess.run([python(), "manage.py", "migrate", "-v", "0"], cwd=root, env=env, check=True)
            subprocess.run([python(), "-c", f"N, SIZE = {n}, {size}\n" + ENQUEUE], cwd=root, env=env, check=True)
            assert waiting(client) == n
            client.slowlog_reset()
            worker = start([python(), "manage.py", "worker", "general"], env, log_dir / "large-worker.log")
            done, (received, sent) = multiprocessing.Event(), multiprocessing.Pipe(duplex=False)
            thread = multiprocessing.Process(target=pinger, args=(own.port, done, sent, redis_core), daemon=True)
            try:
                deadline = time.monotonic() + 300
                while waiting(client) >= n:
                    if time.monotonic() > deadline - 240:
                        raise TimeoutError(f"the worker took nothing; see {log_dir}")
                    time.sleep(0.01)
                thread.start()
                began = time.perf_counter()
                while waiting(client) > 0:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"the worker did not drain; see {log_dir}")
                    time.sleep(0.01)
                elapsed = time.perf_counter() - began
                done.set()
                rtts = received.recv()
                thread.join()
                slow = client.slowlog_get(100000)
            finally:
                stop([worker])
        finally:
            own.stop()
    over = [entry for entry in slow if entry["duration"] > 2000]
    if VERBOSE:
        for entry in slow:
            print("   slow", entry["duration"], entry["command"][:120])
    worst = max(slow, key=lambda e: e["duration"], default=None)
    return {"p50": percentile(rtts, 50), "p99": percentile(rtts, 99), "max": max(rtts), "over_2ms": len(over),
            "worst_us": worst["duration"] if worst else 0,
            "worst": (worst["command"].split(b" ")[0].decode() if worst else "-"), "rate": n / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=1_500_000, help="characters of each task's argument")
    parser.add_argument("--small", action="store_true", help="also run the baseline with 10-character arguments")
    parser.add_argument("--root", type=Path, action="append", help="a VokaFlow checkout (repeat to compare)")
    parser.add_argument("--pin", action="store_true",
                        help="Redis and the pinger on the last core, the draining worker on the others: what "
                             "a client on a core of its own sees of Redis, without the worker's CPU in its wake-ups")
    args = parser.parse_args()
    log_dir = own_redis_log_dir()
    roots = [r.resolve() for r in args.root] if args.root else [Path(__file__).resolve().parent.parent]
    cases = [(root, args.size) for root in roots] + ([(root, 10) for root in roots] if args.small else [])
    results: dict[tuple[Path, int], list[dict]] = {}
    for round_no in range(args.rounds):
        for root, size in (cases if round_no % 2 == 0 else cases[::-1]):
            outcome = measure(root, args.tasks, size, log_dir, args.pin)
            results.setdefault((root, size), []).append(outcome)
            print(f"round {round_no + 1} {str(root):<20} arg {size:>9,}  PING p50 {outcome['p50']:.2f} "
                  f"p99 {outcome['p99']:.2f} max {outcome['max']:.1f} ms  slow log >2 ms: {outcome['over_2ms']} "
                  f"(worst {outcome['worst']} {outcome['worst_us'] / 1000:.1f} ms)  {outcome['rate']:.0f} tasks/s",
                  flush=True)
    print(f"\nmedians over {args.rounds} rounds, {args.tasks} tasks each:")
    for (root, size), runs in results.items():
        m = {k: median([r[k] for r in runs]) for k in ("p50", "p99", "max", "over_2ms", "worst_us", "rate")}
        print(f"  {str(root):<20} arg {size:>9,}  PING p50 {m['p50']:.2f} p99 {m['p99']:.2f} max {m['max']:.1f} ms"
              f"  slow log >2 ms {m['over_2ms']:.0f}, worst {m['worst_us'] / 1000:.1f} ms  {m['rate']:.0f} tasks/s")


if __name__ == "__main__":
    main()

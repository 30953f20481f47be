"""What a fleet-wide limit costs Redis: per start, per task sent to wait, and its scripts' longest
run with 10,000 tasks waiting for one limit.

    .venv/bin/python bench/limits.py --starts 5000 --waiting 10000

On Redis database 12 (BENCH_REDIS_DB) of REDIS_URL, from one client, the way a worker calls them
(tasks.limits): --starts starts that take a place at once (a concurrency limit that is never full,
then a rate that always has room), then --waiting tasks sent to the waiting room of a full limit,
then the let-out script over that room (50 at a time, as the workers call it). Redis's own time per
call (INFO commandstats, `usec_per_call` of EVAL) and the longest single call (SLOWLOG, every
command logged for the run, then the setting put back) are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import redis
from common import ROOT, bench_env, bench_redis_url


def eval_stats(client: redis.Redis) -> tuple[int, float]:
    stats = client.info("commandstats").get("cmdstat_eval", {"calls": 0, "usec": 0})
    return int(stats["calls"]), float(stats["usec"])


def measured(client: redis.Redis, label: str, run) -> None:
    client.config_resetstat()
    client.slowlog_reset()
    wall = time.perf_counter()
    n = run()
    wall = time.perf_counter() - wall
    calls, usec = eval_stats(client)
    longest = max((entry["duration"] for entry in client.slowlog_get(10_000)
                   if b"EVAL" in (entry["command"][:4] if isinstance(entry["command"], bytes) else b"")), default=0)
    print(f"{label}: {n} calls, Redis {usec / max(calls, 1):.1f} µs per script call, longest {longest} µs; "
          f"client {wall / max(n, 1) * 1e6:.0f} µs per call (round trip included)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--starts", type=int, default=5000)
    parser.add_argument("--waiting", type=int, default=10_000)
    args = parser.parse_args()
    os.environ.update(bench_env(DATABASE_URL=f"sqlite:///{ROOT / 'bench' / 'results' / 'limits.sqlite3'}"))
    import django

    django.setup()
    from tasks import limits

    client = redis.Redis.from_url(bench_redis_url())
    client.flushdb()
    slower_than = client.config_get("slowlog-log-slower-than")["slowlog-log-slower-than"]
    max_len = client.config_get("slowlog-max-len")["slowlog-max-len"]
    client.config_set("slowlog-log-slower-than", 0)
    client.config_set("slowlog-max-len", 100_000)
    message = json.dumps({"properties": {"delivery_info": {"routing_key": "general.normal.p0"}},
                          "body": "x" * 600})  # about a no-op's message
    try:
        wide = limits.Instance(limits.Limit("bench.wide", concurrency=limits.MAX_CONCURRENCY))
        measured(client, "start, concurrency with room", lambda: sum(
            limits.try_start(client, wide, f"w{i}", message, 3, i) is None for i in range(args.starts)))
        fast = limits.Instance(limits.Limit("bench.rate", rate="1000000/s"))
        measured(client, "start, rate with room", lambda: sum(
            limits.try_start(client, fast, f"r{i}", message, 3, i) is None for i in range(args.starts)))
        full = limits.Instance(limits.Limit("bench.full", concurrency=1))
        limits.try_start(client, full, "holder", message, 3, 0)
        measured(client, f"sent to wait, up to {args.waiting} waiting", lambda: sum(
            limits.try_start(client, full, f"q{i}", message, 3, i + 1) is not None for i in range(args.waiting)))

        def let_out_rounds() -> int:
            limits.give_back(client, full, "holder")
            client.delete(f"vokaflow:limit:{full.tag}:running")
            more = limits.Instance(limits.Limit("bench.full", concurrency=limits.LET_OUT_MOST))
            calls = 0
            for _ in range(20):
                planned = limits.let_out(client, more)
                client.zrem(f"vokaflow:limit:{full.tag}:moved", *[t for _, t, _ in planned] or ["-"])
                calls += 1
            return calls
        measured(client, f"let out {limits.LET_OUT_MOST} at a time from {args.waiting} waiting", let_out_rounds)
    finally:
        client.config_set("slowlog-log-slower-than", slower_than)
        client.config_set("slowlog-max-len", max_len)
        client.flushdb()


if __name__ == "__main__":
    main()

"""Autoscaling against fixed slots: a burst of io tasks from idle, then a steady load.

    .venv/bin/python bench/autoscale.py --tasks 20000 --seconds 0.02

On Redis database 12 (BENCH_REDIS_DB) of REDIS_URL, one io worker (`celery -A vokaflow worker
--type io -P threads`) at a time, in this order: autoscaling 1:32 (`VOKAFLOW_AUTOSCALE_IO`, target
wait 1 s, the default idle window of 30 s), fixed at the type's default slots on this machine, fixed
at 32. Each drains the same burst of `vokaflow.sleep` tasks enqueued at once; printed per run: the
drain time (first enqueue → last task done), each task's wait (done − enqueued − run time) p50 and
p99, the worker's peak memory (RSS of the process and its children), and for autoscaling the time
to reach MAX, then the direction changes during a minute of steady load that needs about 8 slots,
and the time back to MIN once idle (read off the worker's heartbeats).
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
from datetime import datetime

import psutil
import redis
from common import ROOT, bench_env, bench_redis_url, clear, median, percentile, python, start, stop, wait_until

NAME = "bench-io@autoscale"


def setup_django(env: dict) -> None:
    os.environ.update({k: env[k] for k in ("REDIS_URL", "SECRET_KEY", "DJANGO_SETTINGS_MODULE")})
    import django

    django.setup()


def enqueue(n: int, seconds: float, start_index: int = 0) -> list[tuple[str, float]]:
    from tasks.submit import enqueue as submit
    from tasks.validation import prepare

    out = []
    for first in range(0, n, 1000):
        batch = [prepare("vokaflow.sleep", args=[seconds], worker_type="io",
                         partition_key=f"k{start_index + first + i}") for i in range(min(1000, n - first))]
        at = time.time()
        out += [(answer.task_id, at) for answer in submit(batch)]
    return out


def heartbeat(client: redis.Redis) -> dict:
    raw = client.get(f"vokaflow:worker:{NAME}")
    return json.loads(raw) if raw else {}


class PeakMemory(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, 0, threading.Event()

    def run(self):
        while not self.done.wait(0.2):
            try:
                proc = psutil.Process(self.pid)
                rss = proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
            except psutil.Error:
                continue
            self.peak = max(self.peak, rss)


def waits(client: redis.Redis, sent: list[tuple[str, float]], seconds: float) -> tuple[list[float], float]:
    """Each task's wait and the time the last one finished (from the results' date_done)."""
    found, last = [], 0.0
    for first in range(0, len(sent), 1000):
        part = sent[first:first + 1000]
        metas = client.mget([f"celery-task-meta-{task_id}" for task_id, _ in part])
        for (_, at), meta in zip(part, metas):
            if meta:
                done = datetime.fromisoformat(json.loads(meta)["date_done"]).timestamp()
                found.append(max(0.0, done - at - seconds))
                last = max(last, done)
    return found, last


def drained(client: redis.Redis, sent: list[tuple[str, float]]) -> bool:
    return all(client.exists(f"celery-task-meta-{task_id}") for task_id, _ in sent[-50:]) and \
        sum(client.exists(f"celery-task-meta-{task_id}") for task_id, _ in sent[::97]) == len(sent[::97])


def one_run(label: str, concurrency: int, extra: dict, args, client: redis.Redis) -> dict:
    clear(client)
    env = bench_env(**extra)
    log = ROOT / "bench" / "results" / f"autoscale-{label.replace(' ', '-')}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    worker = start([python(), "-m", "celery", "-A", "vokaflow", "worker", "--type", "io", "-P", "threads",
                    "-c", str(concurrency), "-n", NAME, "-l", "INFO", "--without-mingle", "--without-gossip"], env, log)
    try:
        wait_until(lambda: heartbeat(client), 60, "the worker's heartbeat")
        memory = PeakMemory(worker.pid)
        memory.start()
        t0 = time.time()
        sent = enqueue(args.tasks, args.seconds)
        reached_max = None
        while not drained(client, sent):
            report = heartbeat(client).get("autoscale") or {}
            if reached_max is None and report.get("slots") == report.get("max"):
                reached_max = time.time() - t0
            time.sleep(0.2)
        memory.done.set()
        found, last = waits(client, sent, args.seconds)
        result = {"label": label, "drain": last - t0, "p50": percentile(found, 50), "p99": percentile(found, 99),
                  "peak_mb": memory.peak / 2**20, "reached_max": reached_max}
        if extra.get("VOKAFLOW_AUTOSCALE_IO"):
            result.update(steady(client, args))
            idle_from = time.time()
            wait_until(lambda: (heartbeat(client).get("autoscale") or {}).get("slots") == 1, 180, "the return to MIN")
            result["back_to_min"] = time.time() - idle_from
        return result
    finally:
        stop([worker])


def steady(client: redis.Redis, args) -> dict:
    """A minute of load that needs about 8 slots (8 × 1/seconds tasks a second), then the decisions
    taken during it."""
    rate = 8 / args.seconds
    begin, sent, n = time.time(), [], 0
    while time.time() - begin < 60:
        due = int((time.time() - begin) * rate)
        if due > n:
            sent += enqueue(due - n, args.seconds, start_index=1_000_000 + n)
            n = due
        time.sleep(0.05)
    wait_until(lambda: drained(client, sent), 120, "the steady load to drain")
    decisions = [d for d in (heartbeat(client).get("autoscale") or {}).get("decisions", ()) if d["at"] >= begin + 5]
    directions = [d["to"] > d["from"] for d in sorted(decisions, key=lambda d: d["at"])]
    turns = sum(1 for a, b in zip(directions, directions[1:]) if a != b)
    found, _ = waits(client, sent, args.seconds)
    return {"steady_decisions": len(decisions), "steady_turns": turns, "steady_p99": percentile(found, 99)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--seconds", type=float, default=0.02)
    args = parser.parse_args()
    env = bench_env()
    setup_django(env)
    from vokaflow.core.workers import worker_profile

    default = worker_profile("io").concurrency
    client = redis.Redis.from_url(bench_redis_url())
    runs = [("autoscale 1:32", 1, {"VOKAFLOW_AUTOSCALE_IO": "1:32", "VOKAFLOW_TARGET_WAIT_IO": "1"}),
            (f"fixed {default} (default)", default, {}), ("fixed 32", 32, {})]
    results = [one_run(label, concurrency, extra, args, client) for label, concurrency, extra in runs]
    print(f"{args.tasks} io tasks of {args.seconds * 1000:.0f} ms from idle, one worker, threads pool:")
    for r in results:
        line = (f"  {r['label']:>20}: drain {r['drain']:.1f} s, wait p50 {r['p50']:.2f} s p99 {r['p99']:.2f} s, "
                f"peak memory {r['peak_mb']:.0f} MB")
        if "back_to_min" in r:
            line += (f"; MAX after {r['reached_max']:.1f} s, back to MIN {r['back_to_min']:.1f} s after the load; "
                     f"steady minute: {r['steady_decisions']} decisions, {r['steady_turns']} changes of direction, "
                     f"wait p99 {r['steady_p99']:.2f} s")
        print(line)
    print(f"  median drain {median([r['drain'] for r in results]):.1f} s")


if __name__ == "__main__":
    main()

"""Helpers for the benchmarks: a Redis database of their own, worker processes, drain timing."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
# Its own Redis database: 12 unless BENCH_REDIS_DB says otherwise (the machine may be shared).
BENCH_DB = int(os.environ.get("BENCH_REDIS_DB", 12))


def bench_redis_url() -> str:
    base = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    return base.rsplit("/", 1)[0] + f"/{BENCH_DB}"


def bench_env(**extra) -> dict:
    url = bench_redis_url()
    env = os.environ.copy()
    env.update({"REDIS_URL": url, "BENCH_REDIS_URL": url, "DJANGO_SETTINGS_MODULE": "vokaflow.settings",
                "SECRET_KEY": env.get("SECRET_KEY", "vokaflow-bench-key-not-secret-0123456789"),
                "PYTHONPATH": str(ROOT)})
    env.update({k: str(v) for k, v in extra.items()})
    return env


def clear(client: redis.Redis) -> None:
    """Delete every key of the benchmark's own database (never another database)."""
    client.flushdb()


def start(argv: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    for proc in procs:
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def median(values: list[float]) -> float:
    return statistics.median(values)


def python() -> str:
    return sys.executable

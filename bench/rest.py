"""REST submit path: single-task latency at a fixed request rate, and batch tasks/s.

    .venv/bin/python bench/rest.py --rate 200 --seconds 10 --batches 20

Starts gunicorn as `make run` does (2 gthread workers × 4 threads) on a free port, with a
SQLite database under bench/results/ and Redis database 12. Requests are sent open-loop:
request i is due at start + i/rate, and its latency counts from when it was due, so a slow
server cannot hide its queueing (no coordinated omission).
"""

from __future__ import annotations

import argparse
import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import redis
from common import ROOT, bench_redis_url, clear, free_port, percentile, python, start, stop, web_env

_local = threading.local()


def connection(port: int) -> http.client.HTTPConnection:
    if getattr(_local, "conn", None) is None:
        _local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    return _local.conn


def post(port: int, path: str, body: dict, token: str) -> tuple[int, bytes]:
    conn = connection(port)
    payload = json.dumps(body)
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    try:
        conn.request("POST", path, payload, headers)
        response = conn.getresponse()
    except (http.client.HTTPException, OSError):
        conn.close()
        conn.request("POST", path, payload, headers)
        response = conn.getresponse()
    return response.status, response.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()
    results = ROOT / "bench" / "results"
    port = free_port()
    env = web_env("bench.sqlite3")
    client = redis.Redis.from_url(bench_redis_url())
    clear(client)
    server = start([python(), "-m", "gunicorn", "vokaflow.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "2",
                    "--threads", "4"], env, results / "gunicorn.log")
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                # A login hashes the password (PBKDF2): over 2 s on a busy 2-core machine.
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                credentials = json.dumps({"username": "bench", "password": "bench-password"})
                conn.request("POST", "/api/auth/token/", credentials, {"Content-Type": "application/json"})
                token = json.loads(conn.getresponse().read())["access"]
                break
            except (OSError, KeyError, ValueError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

        path = "/api/high-scale-tasks/tasks/"
        for _ in range(50):  # warm up connections and code paths
            post(port, path, {"task": "vokaflow.noop"}, token)
        total = int(args.rate * args.seconds)
        latencies: list[float] = []
        failures = 0
        t0 = time.perf_counter() + 0.1

        def one(i: int) -> None:
            nonlocal failures
            due = t0 + i / args.rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            status, _ = post(port, path, {"task": "vokaflow.noop", "priority": "HIGH"}, token)
            latencies.append(time.perf_counter() - due)
            if status != 202:
                failures += 1

        with ThreadPoolExecutor(max_workers=32) as pool:
            list(pool.map(one, range(total)))
        achieved = total / (time.perf_counter() - t0)
        print(f"single submit: {total} requests at {args.rate:.0f}/s offered ({achieved:.0f}/s achieved), "
              f"{failures} failed; latency p50 {percentile(latencies, 50) * 1000:.1f} ms, "
              f"p99 {percentile(latencies, 99) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms")

        batch = {"tasks": [{"task": "vokaflow.noop", "partition_key": f"k{i}"} for i in range(1000)]}
        post(port, "/api/high-scale-tasks/tasks/batch/", batch, token)
        started = time.perf_counter()
        for _ in range(args.batches):
            status, body = post(port, "/api/high-scale-tasks/tasks/batch/", batch, token)
            assert status == 202, body[:300]
        elapsed = time.perf_counter() - started
        print(f"batch submit: {args.batches} batches of 1000 in {elapsed:.2f} s = "
              f"{args.batches * 1000 / elapsed:.0f} tasks/s ({elapsed / args.batches * 1000:.0f} ms a batch)")
    finally:
        stop([server])
        clear(client)


if __name__ == "__main__":
    main()

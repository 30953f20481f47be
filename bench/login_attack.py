"""Health while 32 clients send wrong passwords, with and without the login limit.

    .venv/bin/python bench/login_attack.py --seconds 30

Starts gunicorn as `make run` does (2 gthread workers x 4 threads, --preload, the project's
settings) on a free port, with a SQLite database under bench/results/ and Redis database 12,
twice: once with the login limit off (VOKAFLOW_LOGIN_LIMIT_PER_USER=0, _PER_ADDRESS=0 and
VOKAFLOW_LOGIN_CONCURRENCY=64: the platform as it was) and once with its defaults (10 failures
a minute per user name and per address, one password check at a time per web process). Each
time, /api/health/ is probed open-loop (request i due at start + i/rate, latency counted from
when it was due, so a stalled server cannot hide its queue) first on an idle server, then while
32 attacker connections (another process) post wrong passwords to /api/auth/token/ as fast as
they are answered. The load average of the machine is printed with the figures.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter

import redis
from common import ROOT, bench_redis_url, clear, free_port, latency_figures, python, start, stop, web_env
from common import probe_health as common_probe_health

ATTACKERS = 32
_local = threading.local()


def request(port: int, method: str, path: str, body: str | None = None) -> int:
    """One request on this thread's keep-alive connection (reopened once if the server closed it)."""
    headers = {"Content-Type": "application/json"} if body else {}
    for attempt in (1, 2):
        conn = getattr(_local, "conn", None) or http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        _local.conn = conn
        try:
            conn.request(method, path, body, headers)
            response = conn.getresponse()
            response.read()
            return response.status
        except (http.client.HTTPException, OSError):
            conn.close()
            _local.conn = None
            if attempt == 2:
                return 0
    return 0


def attack(port: int, seconds: float) -> None:
    """Attacker process: 32 connections posting wrong passwords; prints the status counts as JSON."""
    deadline = time.monotonic() + seconds
    statuses: Counter = Counter()
    lock = threading.Lock()
    body = json.dumps({"username": "bench", "password": "not-the-password"})

    def client() -> None:
        while time.monotonic() < deadline:
            status = request(port, "POST", "/api/auth/token/", body)
            with lock:
                statuses[status] += 1

    threads = [threading.Thread(target=client) for _ in range(ATTACKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps({str(k): v for k, v in statuses.items()}))


def probe_health(port: int, rate: float, seconds: float) -> list[float]:
    # Enough threads that a stalled server delays no probe's sending.
    return common_probe_health(port, rate, seconds, lambda p, path: request(p, "GET", path), threads=16)


def run(label: str, limits: dict, args, env: dict) -> None:
    port = free_port()
    env = {**env, **{k: str(v) for k, v in limits.items()}}
    client = redis.Redis.from_url(bench_redis_url())
    clear(client)
    server = start([python(), "-m", "gunicorn", "vokaflow.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "2",
                    "--threads", "4", "--preload"], env, ROOT / "bench" / "results" / "gunicorn-login.log")
    try:
        deadline = time.monotonic() + 30
        while request(port, "GET", "/api/health/") == 0:
            if time.monotonic() > deadline:
                raise TimeoutError("gunicorn did not answer")
            time.sleep(0.2)
        for _ in range(20):  # warm up: connections, first-request imports
            request(port, "GET", "/api/health/")
        idle = probe_health(port, args.rate, args.idle_seconds)
        attacker = subprocess.Popen([python(), __file__, "--attack", str(port), "--seconds", str(args.seconds)],
                                    cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        time.sleep(1)  # let the attack reach full strength
        during = probe_health(port, args.rate, args.seconds - 2)
        out, _ = attacker.communicate(timeout=args.seconds + 120)
        statuses = json.loads(out.strip().splitlines()[-1])
        sent = sum(statuses.values())
        print(f"{label}: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print(f"{label}: health idle {latency_figures(idle)}")
        print(f"{label}: health under attack {latency_figures(during)}")
        print(f"{label}: attack {sent} logins in {args.seconds:.0f} s: {statuses.get('401', 0)} hashed and "
              f"refused (401), {statuses.get('429', 0)} refused before hashing (429); all: {statuses}")
    finally:
        stop([server])
        clear(client)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=30, help="length of each attack")
    parser.add_argument("--idle-seconds", type=float, default=5)
    parser.add_argument("--rate", type=float, default=10, help="health probes per second")
    parser.add_argument("--attack", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.attack:
        attack(args.attack, args.seconds)
        return
    env = web_env("bench-login.sqlite3")
    run("without the login limit", {"VOKAFLOW_LOGIN_LIMIT_PER_USER": 0, "VOKAFLOW_LOGIN_LIMIT_PER_ADDRESS": 0,
                                    "VOKAFLOW_LOGIN_CONCURRENCY": 64}, args, env)
    run("with the login limit (defaults)", {}, args, env)


if __name__ == "__main__":
    sys.exit(main())

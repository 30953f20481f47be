"""Health while 64 clients wait for a taken lock over HTTP, with and without the cap on waiters.

    .venv/bin/python bench/lock_waits.py --seconds 40
    .venv/bin/python bench/lock_waits.py --only uncapped --waiters 16   # one run, fewer clients

Starts gunicorn as `make run` does (2 gthread workers x 4 threads, --preload, the project's
settings) on a free port, with a SQLite database under bench/results/ and Redis database 12,
twice: once with VOKAFLOW_LOCK_WAITERS=64 (no cap: every waiting acquire holds a thread for its
whole wait, the platform as it was) and once with its default (1 waiting acquire per web process;
the others are answered 429 with Retry-After: 1). Each time, /api/health/ is probed open-loop
(request i due at start + i/rate, latency counted from when it was due, so a stalled server
cannot hide its queue) first on an idle server, then while a client process holds the lock and
64 connections of its own ask for it with "wait": 30, as a client should: on 429 they sleep
Retry-After (with jitter up to as much again) and ask again; on 409 (a wait of 30 s ran out) they
ask again at once, so they wait for as long as the lock is held. At the end the holder releases
the lock, and the time until a waiter has it (each one releases it at once) is printed with the
status counts and the machine's load average.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter

import redis
from common import ROOT, bench_redis_url, clear, free_port, latency_figures, python, start, stop, web_env
from common import probe_health as common_probe_health

WAITERS = 64  # by default
WAIT = 30.0  # seconds each acquire asks to wait (the API's maximum)
KEY = "bench-contended"
BASE = "/api/high-scale-tasks"
_local = threading.local()


def request(port: int, method: str, path: str, body: dict | None = None, token: str | None = None,
            timeout: float = 120) -> tuple[int, dict, dict | None]:
    """(status, headers, JSON body) on this thread's keep-alive connection (reopened once if closed)."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    for attempt in (1, 2):
        conn = getattr(_local, "conn", None) or http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        _local.conn = conn
        try:
            conn.request(method, path, json.dumps(body) if body is not None else None, headers)
            response = conn.getresponse()
            raw = response.read()
            try:
                data = json.loads(raw) if raw else None
            except ValueError:
                data = None
            return response.status, dict(response.getheaders()), data
        except (http.client.HTTPException, OSError):
            conn.close()
            _local.conn = None
            if attempt == 2:
                return 0, {}, None
    return 0, {}, None


def token_for(port: int) -> str:
    status, _, body = request(port, "POST", "/api/auth/token/", {"username": "bench", "password": "bench-password"})
    assert status == 200, (status, body)
    return body["access"]


def contend(port: int, seconds: float, waiters: int) -> None:
    """Client process: holds the lock, lets `waiters` connections wait for it for `seconds`, releases it;
    prints the status counts and how long after the release a waiter had the lock, as JSON."""
    token = token_for(port)
    status, _, held = request(port, "POST", f"{BASE}/lock/{KEY}/acquire", {"owner": "holder", "timeout": 600}, token)
    assert status == 200, (status, held)
    statuses: Counter = Counter()
    counted = threading.Lock()
    release_at = time.monotonic() + seconds
    got: list[float] = []  # when waiters had the lock (monotonic)

    def waiter(i: int) -> None:
        rng = random.Random(i)
        while not got:
            status, headers, body = request(port, "POST", f"{BASE}/lock/{KEY}/acquire",
                                            {"owner": f"waiter-{i}", "timeout": 5, "wait": WAIT}, token)
            with counted:
                statuses[status] += 1
            if status == 200:  # its work done at once: it releases, and the next waiter may have it
                got.append(time.monotonic())
                request(port, "DELETE", f"{BASE}/lock/{KEY}/release?token={body['token']}", token=token)
                return
            if status == 429:
                retry_after = float(headers.get("Retry-After") or 1)
                time.sleep(retry_after * rng.uniform(1, 2))
            elif status != 409:
                time.sleep(0.1)  # not an answer the protocol knows: do not spin

    threads = [threading.Thread(target=waiter, args=(i,), daemon=True) for i in range(waiters)]
    for thread in threads:
        thread.start()
    time.sleep(max(0.0, release_at - time.monotonic()))
    released_at = time.monotonic()
    status, _, _ = request(port, "DELETE", f"{BASE}/lock/{KEY}/release?token={held['token']}", token=token)
    for thread in threads:
        thread.join(WAIT + 10)
    print(json.dumps({"statuses": {str(k): v for k, v in statuses.items()}, "release_status": status,
                      "handover_ms": (got[0] - released_at) * 1000 if got else None}))


def probe_health(port: int, rate: float, seconds: float) -> list[float]:
    # Enough threads that a stalled server delays no probe's sending.
    return common_probe_health(port, rate, seconds, lambda p, path: request(p, "GET", path), threads=128)


def run(label: str, settings: dict, args, env: dict) -> None:
    port = free_port()
    env = {**env, **{k: str(v) for k, v in settings.items()}}
    client = redis.Redis.from_url(bench_redis_url())
    clear(client)
    # As `make run` starts it (workers/management/commands/launch.py), with VOKAFLOW_WEB_WORKERS=2.
    server = start([python(), "-m", "gunicorn", "vokaflow.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "2",
                    "--threads", "4", "--access-logfile", "-", "--preload"], env,
                   ROOT / "bench" / "results" / "gunicorn-lock-waits.log")
    try:
        deadline = time.monotonic() + 30
        while request(port, "GET", "/api/health/")[0] == 0:
            if time.monotonic() > deadline:
                raise TimeoutError("gunicorn did not answer")
            time.sleep(0.2)
        for _ in range(20):  # warm up: connections, first-request imports
            request(port, "GET", "/api/health/")
        idle = probe_health(port, args.rate, args.idle_seconds)
        waiters = subprocess.Popen([python(), __file__, "--contend", str(port), "--seconds", str(args.seconds),
                                    "--waiters", str(args.waiters)],
                                   cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        time.sleep(2)  # every waiter has asked once
        during = probe_health(port, args.rate, args.seconds - 4)
        out, _ = waiters.communicate(timeout=args.seconds + WAIT + 120)
        report = json.loads(out.strip().splitlines()[-1])
        handover = report["handover_ms"]
        print(f"{label}: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print(f"{label}: health idle {latency_figures(idle)}")
        print(f"{label}: health while {args.waiters} acquires wait {latency_figures(during)}")
        print(f"{label}: acquires answered {report['statuses']} in {args.seconds:.0f} s; after the release a waiter "
              f"had the lock in " + (f"{handover:.1f} ms" if handover is not None else "(none did)"), flush=True)
    finally:
        stop([server])
        clear(client)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=40, help="how long the lock is held while clients wait")
    parser.add_argument("--idle-seconds", type=float, default=5)
    parser.add_argument("--rate", type=float, default=10, help="health probes per second")
    parser.add_argument("--waiters", type=int, default=WAITERS, help="connections waiting for the lock")
    parser.add_argument("--only", choices=["uncapped", "capped"], help="run one of the two")
    parser.add_argument("--contend", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.contend:
        contend(args.contend, args.seconds, args.waiters)
        return
    env = web_env("bench-lock-waits.sqlite3")
    subprocess.run([python(), "-c", "import django; django.setup()\n"
                    "from django.contrib.auth.models import Permission, User\n"
                    "User.objects.get(username='bench').user_permissions.add(\n"
                    "    *Permission.objects.filter(content_type__app_label='tasks', codename__in=['use_locks']))"],
                   cwd=ROOT, env=env, check=True)
    if args.only != "capped":
        run("without the cap (VOKAFLOW_LOCK_WAITERS=64)", {"VOKAFLOW_LOCK_WAITERS": 64}, args, env)
    if args.only != "uncapped":
        run("with the cap (default, 1 per web process)", {}, args, env)


if __name__ == "__main__":
    sys.exit(main())

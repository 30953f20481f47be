#!/usr/bin/env python3
"""A local Redis Cluster for trying VokaFlow on one: 3 primaries and 3 replicas of the system
`redis-server`, with AOF, on ports 7000-7005 (VOKAFLOW_CLUSTER_PORTS to move them).

    python scripts/cluster.py start     start it (or find it running), print its REDIS_URL
    python scripts/cluster.py stop      stop the nodes this checkout started
    python scripts/cluster.py check     redis-cli --cluster check

Made by `redis-cli --cluster create --cluster-replicas 1`, which gives each primary an equal run
of slots (VokaFlow's partition tags spread over those runs: vokaflow.core.slots). Data and
nodes.conf live under .run/cluster/<port>/; a stopped cluster starts again with its data. Node
timeout 3 s (`--cluster-node-timeout`): a primary that dies is replaced by its replica about
that long after. Redis 7 or later. Standard library only, like scripts/services.py, which starts
it for `make run VOKAFLOW_REDIS=cluster`; the test suite starts its own on other ports.
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

ROOT = Path(__file__).resolve().parent.parent
NODE_TIMEOUT_MS = 3000


def say(message: str) -> None:
    print(f"[vokaflow] {message}", file=sys.stderr, flush=True)


def parse_ports(spec: str) -> list[int]:
    """``7000-7005`` or ``7000,7001,…`` → six ports (3 primaries, 3 replicas)."""
    try:
        if "-" in spec:
            low, high = (int(p) for p in spec.split("-", 1))
            ports = list(range(low, high + 1))
        else:
            ports = [int(p) for p in spec.split(",")]
    except ValueError:
        ports = []
    if len(ports) != 6 or len(set(ports)) != 6 or not all(0 < p < 65536 for p in ports):
        raise SystemExit(f"[vokaflow] VOKAFLOW_CLUSTER_PORTS={spec!r}: give six ports, as 7000-7005")
    return ports


def ports_from_env() -> list[int]:
    return parse_ports(os.environ.get("VOKAFLOW_CLUSTER_PORTS", "7000-7005"))


def url_for(ports: list[int]) -> str:
    return "rediscluster://" + ",".join(f"127.0.0.1:{p}" for p in ports[:3]) + "/"


def command(port: int, *args: str, timeout: float = 1.0, raw: bool = False):
    """One inline command to a node; its reply's text (bytes with `raw`), or None when nothing answers."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall((" ".join(args) + "\r\n").encode())
            reply = b""
            while True:
                chunk = sock.recv(65536)
                reply += chunk
                if not chunk or _complete(reply):
                    return reply if raw else reply.decode(errors="replace")
    except OSError:
        return None


def _complete(reply: bytes) -> bool:
    try:
        return _parse(reply)[1] == len(reply)
    except (ValueError, IndexError):
        return False


def cluster_ok(ports: list[int]) -> bool:
    """Every node answers and says the cluster is ok."""
    return all("cluster_state:ok" in (command(p, "CLUSTER", "INFO") or "") for p in ports)


def _binaries() -> tuple[str, str]:
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if not server or not cli:
        raise SystemExit("[vokaflow] a local Redis Cluster needs redis-server and redis-cli 7 or later "
                         "(apt-get install redis-server)")
    version = subprocess.run([server, "--version"], capture_output=True, text=True).stdout
    major = version.split("v=", 1)[-1].split(".", 1)[0]
    if not major.isdigit() or int(major) < 7:
        raise SystemExit(f"[vokaflow] a Redis Cluster for VokaFlow needs Redis 7 or later; "
                         f"{server} is {version.strip()}")
    return server, cli


def start(ports: list[int], data_dir: Path, *, appendonly: bool = True) -> list[subprocess.Popen]:
    """Start the six nodes (joining them into a cluster the first time); wait until it is ok."""
    server, cli = _binaries()
    procs = []
    for port in ports:
        if command(port, "PING") is not None:
            raise SystemExit(f"[vokaflow] port {port} is taken by something that is not this cluster; "
                             f"set VOKAFLOW_CLUSTER_PORTS")
        node_dir = data_dir / str(port)
        node_dir.mkdir(parents=True, exist_ok=True)
        persistence = ["--appendonly", "yes"] if appendonly else ["--appendonly", "no", "--save", ""]
        procs.append(subprocess.Popen(
            [server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(node_dir),
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--maxmemory-policy", "noeviction",
             "--logfile", "redis.log", *persistence],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
    try:
        _wait(lambda: all(command(p, "PING") for p in ports), 10, "the nodes did not start", data_dir)
        if "cluster_known_nodes:1\r" in (command(ports[0], "CLUSTER", "INFO") or ""):
            subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
                            "--cluster-replicas", "1", "--cluster-yes"], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _wait(lambda: cluster_ok(ports) and _replicas_synced(ports), 30, "the cluster did not become ok", data_dir)
    except BaseException:
        stop(procs)
        raise
    return procs


def _replicas_synced(ports: list[int]) -> bool:
    """Every node's CLUSTER SLOTS names a primary and a replica for each of 3 ranges (clients
    learn the replicas from whichever node they ask)."""
    for port in ports:
        reply = command(port, "CLUSTER", "SLOTS", raw=True)
        ranges = _parse(reply)[0] if reply else []
        if len(ranges) != 3 or any(len(r) != 4 for r in ranges):
            return False
    return True


def _parse(data: bytes, at: int = 0):
    """A RESP2 reply → (value, next position): enough for CLUSTER SLOTS."""
    end = data.index(b"\r\n", at)
    kind, head = data[at:at + 1], data[at + 1:end]
    if kind == b"*":
        items, at = [], end + 2
        for _ in range(max(int(head), 0)):
            item, at = _parse(data, at)
            items.append(item)
        return items, at
    if kind == b"$":
        size = int(head)
        return (None, end + 2) if size < 0 else (data[end + 2:end + 2 + size], end + 4 + size)
    return head, end + 2


def _wait(condition, seconds: float, failure: str, data_dir: Path) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise SystemExit(f"[vokaflow] {failure}; see the redis.log files under {data_dir}")


def stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _pids_file(data_dir: Path) -> Path:
    return data_dir / "pids"


def main(argv: list[str]) -> int:
    ports, data_dir = ports_from_env(), ROOT / ".run" / "cluster"
    action = argv[0] if argv else ""
    if action == "start":
        if cluster_ok(ports):
            say(f"a Redis Cluster answers on ports {ports[0]}-{ports[-1]}")
        else:
            procs = start(ports, data_dir)
            _pids_file(data_dir).write_text(" ".join(str(p.pid) for p in procs))
            say(f"started a Redis Cluster (3 primaries, 3 replicas, AOF) on ports {ports[0]}-{ports[-1]}, "
                f"data in {data_dir}")
        print(url_for(ports))
        return 0
    if action == "stop":
        pids = _pids_file(data_dir)
        for pid in (pids.read_text().split() if pids.exists() else []):
            try:
                os.kill(int(pid), signal.SIGTERM)
            except ProcessLookupError:
                pass
        pids.unlink(missing_ok=True)
        return 0
    if action == "check":
        return subprocess.run([_binaries()[1], "--cluster", "check", f"127.0.0.1:{ports[0]}"]).returncode
    sys.exit(__doc__)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

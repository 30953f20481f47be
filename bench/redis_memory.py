"""Redis memory per accepted task at the largest body the API takes, VokaFlow against plain Celery.

    .venv/bin/python bench/redis_memory.py --tasks 20

Each system gets a Redis of its own (INFO used_memory is then the system's alone). N echo tasks
whose one argument is a string just under 2 MiB (the API's body limit) are enqueued (VokaFlow
with an idempotency key of 200 characters and an owner, so every key an API submission writes is
there; plain Celery with `.delay()`), memory is read, one worker runs them all, memory is read
again. Figures are bytes per task above the empty Redis (INFO used_memory, which also holds
about 0.9 MB that does not grow with N), and the MEMORY USAGE of the keys a task leaves behind.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import redis
from common import ROOT, bench_env, own_redis_log_dir, python, services, start, stop

# the keys a task leaves behind until they expire: result, record, idempotency key
KEPT = ("celery-task-meta-*", "vokaflow:task:*", "vokaflow:idem:*")
ARG_BYTES = 2 * 1024 * 1024 - 300
ENQUEUE = {
    "vokaflow": "import django; django.setup()\nfrom tasks.submit import enqueue, prepare\n"
                "for i in range(N):\n"
                "    req = prepare('vokaflow.echo', args=['x' * A], idempotency_key=f'{i:0200d}')\n"
                "    print(enqueue([req], owner='bench')[0].task_id)\n",
    "celery": "from bench.plain_celery import echo\nfor _ in range(N):\n    print(echo.delay('x' * A).id)\n",
}
WORKER = {"vokaflow": ["-A", "vokaflow", "worker", "--type", "general"],
          "celery": ["-A", "bench.plain_celery", "worker", "-Q", "plain"]}


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def measure(system: str, n: int, log_dir: Path) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory() as folder:
        port = services.free_port(6600)
        server = subprocess.Popen([services.redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1",
                                   "--dir", folder, "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
        client = redis.Redis(port=port)
        procs = []
        try:
            for _ in range(200):
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    time.sleep(0.05)
            url = f"redis://127.0.0.1:{port}/0"
            env = bench_env(REDIS_URL=url, BENCH_REDIS_URL=url)
            empty = used_memory(client)
            ids = subprocess.run([python(), "-c", f"N = {n}\nA = {ARG_BYTES}\n" + ENQUEUE[system]], cwd=ROOT,
                                 env=env, capture_output=True, text=True, check=True).stdout.split()
            assert len(ids) == n
            queued = (used_memory(client) - empty) / n
            procs = [start([python(), "-m", "celery", *WORKER[system], "-P", "solo", "-n", f"{system}@%h",
                            "-l", "WARNING", "--without-mingle", "--without-gossip", "--without-heartbeat"],
                           env, log_dir / f"memory-{system}.log")]
            deadline = time.monotonic() + 300
            while sum(b"SUCCESS" in client.getrange(f"celery-task-meta-{t}", 0, 63) for t in ids) < n:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{system} did not finish; see {log_dir}")
                time.sleep(0.2)
            stop(procs)
            procs = []
            # what the broker keeps whatever the number of tasks (bindings, bells, empty indexes)
            client.delete("unacked", "unacked_index", *client.keys("_kombu*"), *client.keys("*bell*"))
            time.sleep(1)  # memory freed lazily is given back
            ran = (used_memory(client) - empty) / n
            per_task_keys = sum(client.memory_usage(key) or 0 for pattern in KEPT
                                for key in client.scan_iter(match=pattern, count=1000)) / n
            return queued, ran, per_task_keys
        finally:
            stop(procs)
            server.terminate()
            server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=20)
    args = parser.parse_args()
    log_dir = own_redis_log_dir()
    figures = {system: measure(system, args.tasks, log_dir) for system in ("vokaflow", "celery")}
    for system, (queued, ran, kept) in figures.items():
        print(f"{system:<9} queued {queued / 1024:6.0f} KiB/task  after it ran {ran / 1024:7.1f} KiB/task "
              f"(INFO used_memory; its kept keys: {kept:,.0f} bytes/task)")
    (vq, vr, vk), (cq, cr, ck) = figures["vokaflow"], figures["celery"]
    print(f"ratio VokaFlow/Celery: queued {vq / cq:.2f}, after it ran {vr / cr:.4f} (kept keys {vk / ck:.4f})")


if __name__ == "__main__":
    main()

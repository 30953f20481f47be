"""Redis CPU per task: what one enqueued and one drained no-op cost the broker, VokaFlow against
plain Celery and Dramatiq, same machine, same run, systems alternating.

    .venv/bin/python bench/broker_cost.py --tasks 20000 --rounds 3
    .venv/bin/python bench/broker_cost.py --root /tmp/before --root . --only vokaflow   # code before/after

Each system and round gets a redis-server of its own on a free port (`--save '' --appendonly no`),
so nothing else on the machine enters the figure. Redis's own accounting (`INFO cpu`:
used_cpu_user + used_cpu_sys) is read before and after each phase: CPU time, stable on a noisy
machine, unlike wall time.
- Enqueue: N `vokaflow.noop` through tasks.submit.enqueue in batches of 1,000 (plain Celery:
  `send_task` with one producer; Dramatiq: `.send()`).
- Drain: two solo worker processes (`celery -A vokaflow worker --type general -P solo`; plain
  Celery: two solo workers on one queue, acks late, prefetch 1; Dramatiq `-p 2 -t 8`) until
  nothing is queued or unacknowledged, then 3 s more for deferred acknowledgements. The idle
  polling cost per second, measured for 5 s after, is subtracted for those 3 s.
- `INFO commandstats` calls per task (commands run inside scripts included; not the benchmark's
  own LLEN/HLEN polling), the drain rate, and for VokaFlow the tasks per fetch script: a busy
  machine slows the workers, whose batches then shrink (they are sized by measured run time), so
  compare figures taken at similar batch sizes, or on a quiet machine.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import redis
from common import OwnRedis, median, own_env, own_redis_log_dir, python, start, stop

ENQUEUE = {
    "vokaflow": "import django; django.setup()\nfrom tasks.submit import enqueue, prepare\n"
                "for _ in range(N // 1000): enqueue([prepare('vokaflow.noop') for _ in range(1000)])\n",
    "celery": "from bench.plain_celery import app\n"
              "with app.producer_or_acquire() as producer:\n"
              "    for _ in range(N): app.send_task('plain.noop', producer=producer)\n",
    "dramatiq": "from bench.dramatiq_app import noop\nfor _ in range(N): noop.send()\n",
}
WORKERS = {
    "vokaflow": [["-m", "celery", "-A", "vokaflow", "worker", "--type", "general", "-P", "solo", "-n", f"w{i}@%h",
                  "-l", "WARNING", "--without-mingle", "--without-gossip", "--without-heartbeat"] for i in range(2)],
    "celery": [["-m", "celery", "-A", "bench.plain_celery", "worker", "-Q", "plain", "-P", "solo", "-n", f"p{i}@%h",
                "-l", "WARNING", "--without-mingle", "--without-gossip", "--without-heartbeat"] for i in range(2)],
    "dramatiq": [["-m", "dramatiq", "bench.dramatiq_app", "-p", "2", "-t", "8"]],
}


def cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return info["used_cpu_user"] + info["used_cpu_sys"]


def calls(client: redis.Redis) -> tuple[int, int]:
    """Commands run (inside scripts too; not the benchmark's own), and scripts run."""
    stats = client.info("commandstats")
    ours = ("cmdstat_info", "cmdstat_ping", "cmdstat_config|resetstat", "cmdstat_llen", "cmdstat_hlen")
    return (sum(v["calls"] for k, v in stats.items() if k not in ours),
            sum(stats.get(k, {}).get("calls", 0) for k in ("cmdstat_evalsha", "cmdstat_eval")))


def waiting(client: redis.Redis, system: str) -> int:
    if system == "dramatiq":
        return client.hlen("bench-dramatiq:noop.msgs")  # bodies stay in this hash until acknowledged
    queues = [f"general.normal.p{p}" for p in range(8)] if system == "vokaflow" else ["plain"]
    with client.pipeline(transaction=False) as pipe:
        for queue in queues:
            pipe.llen(queue)
        pipe.hlen("unacked")
        return sum(pipe.execute())


def measure(system: str, n: int, root: Path, log_dir: Path) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        own = OwnRedis(folder)
        client = own.start()
        env = own_env(own.port, root, folder)
        try:
            if system == "vokaflow":
                subprocess.run([python(), "manage.py", "migrate", "-v", "0"], cwd=root, env=env, check=True)
            client.config_resetstat()
            before = cpu(client)
            subprocess.run([python(), "-c", f"N = {n}\n" + ENQUEUE[system]], cwd=root, env=env, check=True)
            enqueue_cpu, (enqueue_calls, _) = cpu(client) - before, calls(client)
            assert waiting(client, system) == n, f"{system}: {waiting(client, system)} queued, expected {n}"
            client.config_resetstat()
            before = cpu(client)
            procs = [start([python(), *argv], env, log_dir / f"cost-{system}-{i}.log")
                     for i, argv in enumerate(WORKERS[system])]
            try:
                deadline = time.monotonic() + 600
                while waiting(client, system) >= n:
                    if time.monotonic() > deadline - 480:
                        raise TimeoutError(f"{system} workers took nothing; see {log_dir}")
                    time.sleep(0.01)
                began = time.perf_counter()
                while waiting(client, system) > 0:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{system} did not drain; see {log_dir}")
                    time.sleep(0.01)
                rate = n / (time.perf_counter() - began)
                time.sleep(3)
                drain_cpu, (drain_calls, scripts) = cpu(client) - before, calls(client)
                idle_before = cpu(client)
                time.sleep(5)
                idle_per_s = (cpu(client) - idle_before) / 5
            finally:
                stop(procs)
        finally:
            own.stop()
    drain_cpu -= 3 * idle_per_s
    return {"enqueue_us": enqueue_cpu / n * 1e6, "drain_us": drain_cpu / n * 1e6, "enqueue_calls": enqueue_calls / n,
            "drain_calls": drain_calls / n, "drain_per_s": rate, "idle_us_per_s": idle_per_s * 1e6,
            "tasks_per_script": n / scripts if scripts else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="vokaflow,celery,dramatiq", help="systems, comma-separated")
    parser.add_argument("--root", type=Path, action="append",
                        help="a VokaFlow checkout to measure (repeat to compare code before and after)")
    args = parser.parse_args()
    log_dir = own_redis_log_dir()
    roots = [r.resolve() for r in args.root] if args.root else [Path(__file__).resolve().parent.parent]
    systems = [(f"vokaflow@{r}" if len(roots) > 1 else "vokaflow", r) for r in roots] if "vokaflow" in args.only else []
    systems += [(s, roots[-1]) for s in ("celery", "dramatiq") if s in args.only.split(",")]
    results: dict[str, list[dict]] = {}
    for round_no in range(args.rounds):
        for label, root in (systems if round_no % 2 == 0 else systems[::-1]):
            system = label.split("@")[0]
            outcome = measure(system, args.tasks, root, log_dir)
            results.setdefault(label, []).append(outcome)
            print(f"round {round_no + 1} {label:<24} enqueue {outcome['enqueue_us']:5.1f} µs "
                  f"({outcome['enqueue_calls']:.2f} cmd)  drain {outcome['drain_us']:5.1f} µs "
                  f"({outcome['drain_calls']:.2f} cmd)  {outcome['drain_per_s']:6.0f}/s  "
                  f"idle {outcome['idle_us_per_s']:.0f} µs/s  tasks/script {outcome['tasks_per_script']:.1f}",
                  flush=True)
    print(f"\nmedians over {args.rounds} rounds, {args.tasks} no-op tasks each (Redis CPU per task):")
    print(f"  {'system':<24} {'enqueue µs':>10} {'drain µs':>9} {'cmd enq/drain':>14} {'drain/s':>8} "
          f"{'one core carries':>17}")
    for label, runs in results.items():
        m = {k: median([r[k] for r in runs]) for k in runs[0]}
        carries = 1e6 / (m["enqueue_us"] + m["drain_us"])
        print(f"  {label:<24} {m['enqueue_us']:10.1f} {m['drain_us']:9.1f} "
              f"{m['enqueue_calls']:6.2f} / {m['drain_calls']:<5.2f} {m['drain_per_s']:8.0f} {carries:12,.0f} tasks/s")


if __name__ == "__main__":
    main()

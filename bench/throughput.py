"""End-to-end no-op throughput: VokaFlow against plain Celery (and Dramatiq), same Redis, same run.

    .venv/bin/python bench/throughput.py --tasks 20000 --rounds 3 --bulk-enqueue --k1
    .venv/bin/python bench/throughput.py --root /tmp/before --root . --layouts make-run --rounds 5 --no-dramatiq

With several --root, VokaFlow runs from each checkout in turn (code before/after: `vokaflow@0`,
`vokaflow@1`, ...) beside plain Celery, alternating, and the ratio of each to the first is shown
per round.

For each worker layout, N no-op tasks are enqueued (VokaFlow with submit_task, plain Celery
with .delay(), Dramatiq with .send(); --bulk-enqueue: VokaFlow's batch API and copies of a
.delay() message), then the workers start and drain them; the rate is measured from the first
task taken to the last one acknowledged, so start-up is left out. Systems alternate within each
round. `make-run` is the general worker as `make run` starts it (threads, 2 slots, -l INFO);
--k1 adds VokaFlow with one task per fetch. Uses Redis database 12 of REDIS_URL, or
BENCH_REDIS_DB (flushed between runs).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import redis
from common import ROOT, bench_env, bench_redis_url, clear, median, python, start, stop

LAYOUTS = {
    # The general worker exactly as `make run` starts it on 2 cores (threads, 2 slots, -l INFO);
    # plain Celery runs with the same pool, slots and log level.
    "make-run": {"processes": 1, "pool": "threads", "concurrency": 2, "loglevel": "INFO"},
    "threads-2x1": {"processes": 1, "pool": "threads", "concurrency": 2},
    "solo-1x2": {"processes": 2, "pool": "solo", "concurrency": 1},
    "prefork-2x1": {"processes": 1, "pool": "prefork", "concurrency": 2},
}
# VokaFlow with one task per fetch (acks and results still ride the next fetch): --k1.
VARIANTS = {"vokaflow-k1": {"VOKAFLOW_PREFETCH_WAIT_MS": "0"}}
VOKAFLOW_QUEUES = [f"general.normal.p{p}" for p in range(8)]


# Bulk enqueue, so a drain does not wait for 20,000 single publishes on a busy machine: VokaFlow
# through its batch API, plain Celery by copying one message .delay() wrote (new ids and tags).
BULK = {
    "vokaflow": "import django; django.setup()\nfrom tasks.submit import enqueue, prepare\n"
                "import time\nstarted = time.perf_counter()\n"
                "for _ in range(N // 1000): enqueue([prepare('vokaflow.noop') for _ in range(1000)])\n",
    "celery": "import json, os, time, uuid, redis\nfrom bench.plain_celery import noop\n"
              "r = redis.Redis.from_url(os.environ['BENCH_REDIS_URL'])\nnoop.delay()\n"
              "raw = json.loads(r.rpop('plain'))\nstarted = time.perf_counter()\nmessages = []\n"
              "for _ in range(N):\n"
              "    raw['headers']['id'] = raw['headers']['root_id'] = raw['properties']['correlation_id'] = "
              "str(uuid.uuid4())\n"
              "    raw['properties']['delivery_tag'] = str(uuid.uuid4())\n"
              "    messages.append(json.dumps(raw))\n"
              "for i in range(0, N, 1000): r.lpush('plain', *messages[i:i + 1000])\n",
}


def base(system: str) -> str:
    """`vokaflow-k1`, `vokaflow@1` → vokaflow."""
    return re.split("[-@]", system)[0]


def enqueue(system: str, n: int, bulk: bool = False, root: Path = ROOT) -> float:
    """Enqueue n no-ops in a fresh interpreter; returns tasks/s of the enqueue itself."""
    system = base(system)
    if bulk and system in BULK:
        code = f"N = {n}\n" + BULK[system] + "print(time.perf_counter() - started)\n"
        out = __import__("subprocess").run([python(), "-c", code], cwd=root, env=bench_env(), capture_output=True,
                                           text=True, check=True)
        return n / float(out.stdout.strip().splitlines()[-1])
    code = {
        "vokaflow": "import django; django.setup()\nfrom tasks.submit import submit_task\n"
                    "f = lambda: submit_task('vokaflow.noop')\n",
        "celery": "from bench.plain_celery import noop\nf = noop.delay\n",
        "dramatiq": "from bench.dramatiq_app import noop\nf = noop.send\n",
    }[system]
    code += (f"import time\nstarted = time.perf_counter()\nfor _ in range({n}): f()\n"
             "print(time.perf_counter() - started)\n")
    out = __import__("subprocess").run([python(), "-c", code], cwd=root, env=bench_env(), capture_output=True,
                                       text=True, check=True)
    return n / float(out.stdout.strip().splitlines()[-1])


def depth(client: redis.Redis, system: str) -> int:
    system = base(system)
    with client.pipeline(transaction=False) as pipe:
        if system == "vokaflow":
            for queue in VOKAFLOW_QUEUES:
                pipe.llen(queue)
            pipe.hlen("unacked")
        elif system == "celery":
            pipe.llen("plain")
            pipe.hlen("unacked")
        else:
            pipe.hlen("bench-dramatiq:noop.msgs")  # bodies stay in this hash until acknowledged
        return sum(pipe.execute())


def worker_commands(system: str, layout: dict) -> list[list[str]]:
    if system == "dramatiq":
        return [[python(), "-m", "dramatiq", "bench.dramatiq_app", "-p", "2", "-t", "8"]]
    app = {"vokaflow": ["-A", "vokaflow", "worker", "--type", "general"],
           "celery": ["-A", "bench.plain_celery", "worker", "-Q", "plain"]}[base(system)]
    name = system.replace("@", "-")
    return [[python(), "-m", "celery", *app, "-P", layout["pool"], "-c", str(layout["concurrency"]),
             "-n", f"{name}{i}@%h", "-l", layout.get("loglevel", "WARNING"), "--without-mingle", "--without-gossip",
             "--without-heartbeat"]
            for i in range(layout["processes"])]


def drain(system: str, layout: dict, n: int, log_dir: Path, env: dict | None = None, bulk: bool = False,
          root: Path = ROOT) -> dict:
    client = redis.Redis.from_url(bench_redis_url())
    clear(client)
    enqueue_rate = enqueue(system, n, bulk, root)
    assert depth(client, system) == n, f"{system}: expected {n} queued, found {depth(client, system)}"
    procs = [start(argv, env or bench_env(), log_dir / f"{system}-{i}.log", root)
             for i, argv in enumerate(worker_commands(system, layout))]
    try:
        deadline = time.monotonic() + 120
        while (remaining := depth(client, system)) >= n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{system} workers took nothing; see {log_dir}")
            time.sleep(0.005)
        started, taken_before = time.perf_counter(), n - remaining
        while depth(client, system) > 0:
            if time.monotonic() > deadline + 600:
                raise TimeoutError(f"{system} did not drain; see {log_dir}")
            time.sleep(0.02)
        elapsed = time.perf_counter() - started
    finally:
        stop(procs)
    return {"drain_per_s": (n - taken_before) / elapsed, "enqueue_per_s": enqueue_rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--layouts", default=",".join(LAYOUTS))
    parser.add_argument("--no-dramatiq", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--bulk-enqueue", action="store_true",
                        help="enqueue in bulk (faster on a busy machine; the enqueue rate is then not per call)")
    parser.add_argument("--k1", action="store_true", help="also run VokaFlow with one task per fetch")
    parser.add_argument("--root", type=Path, action="append",
                        help="a checkout to run VokaFlow from (repeat: code before and after, alternating)")
    args = parser.parse_args()
    roots = [r.resolve() for r in args.root] if args.root else [ROOT]
    labels = [f"vokaflow@{i}" for i in range(len(roots))] if len(roots) > 1 else ["vokaflow"]
    log_dir = ROOT / "bench" / "results" / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, list[dict]]] = {}
    for round_no in range(args.rounds):
        for name in args.layouts.split(","):
            order = [*labels, "celery"] + (["vokaflow-k1"] if args.k1 else [])
            for system in (order if round_no % 2 == 0 else order[::-1]):
                env = bench_env(**VARIANTS[system]) if system in VARIANTS else None
                root = roots[int(system.split("@")[1])] if "@" in system else roots[-1]
                outcome = drain(system, LAYOUTS[name], args.tasks, log_dir, env, args.bulk_enqueue, root)
                results.setdefault(name, {}).setdefault(system, []).append(outcome)
                print(f"round {round_no + 1} {name:<12} {system:<9} drain {outcome['drain_per_s']:7.0f}/s  "
                      f"enqueue {outcome['enqueue_per_s']:7.0f}/s", flush=True)
        if not args.no_dramatiq:
            outcome = drain("dramatiq", {}, args.tasks, log_dir, bulk=args.bulk_enqueue)
            results.setdefault("dramatiq-2x8", {}).setdefault("dramatiq", []).append(outcome)
            print(f"round {round_no + 1} dramatiq-2x8 dramatiq  drain {outcome['drain_per_s']:7.0f}/s  "
                  f"enqueue {outcome['enqueue_per_s']:7.0f}/s", flush=True)
    print(f"\nmedians over {args.rounds} rounds, {args.tasks} no-op tasks each:")
    summary = {}
    for name, systems in results.items():
        summary[name] = {s: {k: median([r[k] for r in runs]) for k in runs[0]} for s, runs in systems.items()}
        line = "  ".join(f"{s} {v['drain_per_s']:.0f}/s" for s, v in summary[name].items())
        for ours in ("vokaflow", "vokaflow-k1"):
            if ours in summary[name] and "celery" in summary[name]:
                ratio = summary[name][ours]["drain_per_s"] / summary[name]["celery"]["drain_per_s"]
                line += f"  {ours}/celery {ratio:.2f}"
        print(f"  {name:<12} {line}")
        # ratios per round too: the machine may be shared, medians of rates can hide its swings
        if "vokaflow" in systems and "celery" in systems:
            per_round = [v["drain_per_s"] / c["drain_per_s"] for v, c in zip(systems["vokaflow"], systems["celery"],
                                                                             strict=False)]
            print(f"  {'':<12} vokaflow/celery per round: {', '.join(f'{r:.2f}' for r in per_round)}")
        first = labels[0]
        for label in labels[1:]:
            per_round = [b["drain_per_s"] / a["drain_per_s"] for a, b in zip(systems[first], systems[label],
                                                                             strict=False)]
            ratio = summary[name][label]["drain_per_s"] / summary[name][first]["drain_per_s"]
            print(f"  {'':<12} {label}/{first} per round: {', '.join(f'{r:.3f}' for r in per_round)}  "
                  f"ratio of medians {ratio:.3f}")
    celery_best = max(v["celery"]["drain_per_s"] for v in summary.values() if "celery" in v)
    if "dramatiq-2x8" in summary:
        dramatiq = summary["dramatiq-2x8"]["dramatiq"]["drain_per_s"]
        print(f"  dramatiq / best plain Celery layout: {dramatiq / celery_best:.2f}")
        best = max((v["vokaflow"]["drain_per_s"], k) for k, v in summary.items() if "vokaflow" in v)
        print(f"  best VokaFlow layout ({best[1]}) / dramatiq: {best[0] / dramatiq:.2f}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

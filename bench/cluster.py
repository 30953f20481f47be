"""Redis Cluster: how one worker type's work spreads over the primaries, what it costs Redis, how
fast it drains against one Redis, and what a primary's death costs.

    .venv/bin/python bench/cluster.py --tasks 30000 --rounds 5      # spread, Redis CPU, drain rate
    .venv/bin/python bench/cluster.py --failover --seconds 30       # a primary SIGKILLed mid-run

Spread and cost: a cluster of the benchmark's own (3 primaries + 3 replicas of redis-server,
scripts/cluster.py, no persistence, ports 7200-7205) and a redis-server of its own, the two
alternating each round. N `vokaflow.noop` enqueued in batches of 1,000 over 12 partitions
(VOKAFLOW_PARTITIONS=12), then drained by two solo general workers until nothing is queued or
unacknowledged, plus 3 s for deferred acknowledgements (the idle polling cost, measured for 5 s
after, is subtracted, as in bench/broker_cost.py). Redis CPU is each server's own `INFO cpu`
(used_cpu_user + used_cpu_sys) before and after: per primary, its share of the cluster's work;
in total, µs per task against the single Redis's. Six Redis processes and the workers share
this machine's cores, so the drain rates are reported beside the CPU figures.

Failover: the same cluster, two general workers (threads, 2 slots) draining while a client
submits batches of 10 for `--seconds`; a third of the way in, the primary of partition 0's group
is SIGKILLed; its replica takes over after the node timeout (3 s). Counted: tasks accepted (the
enqueue returned), refused (BrokerUnavailable: nothing enqueued, a client retries), accepted
tasks that never finish (lost), and the seconds from the kill until a submission to that group
succeeds again. Run once with VOKAFLOW_REDIS_REPLICAS_ACK=1 and once without.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import redis
from common import ROOT, OwnRedis, load_script, median, own_env, own_redis_log_dir, python, start, stop

local_cluster = load_script("cluster")

PORTS = list(range(7200, 7206))
PARTITIONS = 12
WORKERS = [["-m", "celery", "-A", "vokaflow", "worker", "--type", "general", "-P", "solo", "-n", f"c{i}@%h",
            "-l", "WARNING", "--without-mingle", "--without-gossip", "--without-heartbeat"] for i in range(2)]
ENQUEUE = ("import django; django.setup()\nfrom tasks.submit import enqueue, prepare\n"
           "for _ in range(N // 1000): enqueue([prepare('vokaflow.noop') for _ in range(1000)])\n")


def cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return info["used_cpu_user"] + info["used_cpu_sys"]


def primaries() -> list[redis.Redis]:
    nodes = [redis.Redis(port=p) for p in PORTS]
    return [n for n in nodes if n.execute_command("ROLE")[0] == b"master"]


def waiting_single(client: redis.Redis) -> int:
    with client.pipeline(transaction=False) as pipe:
        for p in range(PARTITIONS):
            pipe.llen(f"general.normal.p{p}")
        pipe.hlen("unacked")
        return sum(pipe.execute())


def waiting_cluster(client) -> int:
    """Like waiting_single: one pipelined exchange per primary, so that the measurement's own
    polling costs the cluster what it costs one Redis."""
    from vokaflow.core.slots import partition_tag

    with client.pipeline() as pipe:
        for p in range(PARTITIONS):
            tag = partition_tag(p, PARTITIONS)
            pipe.llen(f"general.normal.p{p}{{{tag}}}")
            pipe.hlen(f"unacked{{{tag}}}")
        return sum(pipe.execute())


def drain(env: dict, servers: list[redis.Redis], waiting, n: int, log_dir: Path, label: str) -> dict:
    before = [cpu(s) for s in servers]
    subprocess.run([python(), "-c", f"N = {n}\n" + ENQUEUE], cwd=ROOT, env=env, check=True)
    enqueued = [cpu(s) - b for s, b in zip(servers, before, strict=True)]
    assert waiting() == n, f"{label}: {waiting()} waiting, expected {n}"
    before = [cpu(s) for s in servers]
    for server in servers:
        server.config_resetstat()
    procs = [start([python(), *argv], env, log_dir / f"cluster-{label}-{i}.log") for i, argv in enumerate(WORKERS)]
    try:
        deadline = time.monotonic() + 900
        while waiting() >= n:
            if time.monotonic() > deadline - 600:
                raise TimeoutError(f"{label}: the workers took nothing; see {log_dir}")
            time.sleep(0.05)
        began = time.perf_counter()
        while waiting() > 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{label}: no drain; see {log_dir}")
            time.sleep(0.05)
        rate = n / (time.perf_counter() - began)
        time.sleep(3)
        drained = [cpu(s) - b for s, b in zip(servers, before, strict=True)]
        calls = commands(servers)
        idle_before = [cpu(s) for s in servers]
        time.sleep(5)
        idle = [(cpu(s) - b) / 5 for s, b in zip(servers, idle_before, strict=True)]
    finally:
        stop(procs)
    drained = [d - 3 * i for d, i in zip(drained, idle, strict=True)]
    return {"enqueue_us": [e / n * 1e6 for e in enqueued], "drain_us": [d / n * 1e6 for d in drained],
            "drain_per_s": rate, "calls_per_task": {c: k / n for c, k in calls.items()}}


def commands(servers: list[redis.Redis]) -> dict[str, int]:
    """Commands the servers ran since their stats were reset, by name, all servers together, and
    under "usec" the time they took (Redis's own command time, without reading and replying)."""
    calls: dict[str, int] = {"usec": 0}
    for server in servers:
        for name, stats in server.info("commandstats").items():
            command = name.removeprefix("cmdstat_")
            calls[command] = calls.get(command, 0) + stats["calls"]
            if "|" not in command:
                calls["usec"] += stats["usec"]
    return calls


def spread(args, log_dir: Path) -> None:
    """Three systems, their order rotating each round: the cluster, one Redis, and one Redis with a
    replica (each primary of the cluster has one, which is what lets it survive a primary's death;
    a primary spends CPU sending its writes to its replica)."""
    systems = ["cluster", "single", "single+replica"]
    rows: dict[str, list[dict]] = {name: [] for name in systems}
    with tempfile.TemporaryDirectory() as folder:
        procs = local_cluster.start(PORTS, Path(folder) / "cluster", appendonly=False)
        own, paired = OwnRedis(tempfile.mkdtemp(dir=folder)), OwnRedis(tempfile.mkdtemp(dir=folder))
        singles = {"single": own.start(), "single+replica": paired.start()}
        replica = OwnRedis(tempfile.mkdtemp(dir=folder), "--replicaof", "127.0.0.1", str(paired.port))
        replica.start()
        try:
            envs = {"cluster": own_env(PORTS[0], ROOT, folder) | {"REDIS_URL": local_cluster.url_for(PORTS)},
                    "single": own_env(own.port, ROOT, folder), "single+replica": own_env(paired.port, ROOT, folder)}
            for env in envs.values():
                env["VOKAFLOW_PARTITIONS"] = str(PARTITIONS)
            subprocess.run([python(), "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=envs["single"], check=True)
            from vokaflow.redis_connect import cluster_client

            client = cluster_client(local_cluster.url_for(PORTS))
            os.environ["VOKAFLOW_PARTITIONS"] = str(PARTITIONS)
            for round_no in range(args.rounds):
                for system in systems[round_no % 3:] + systems[:round_no % 3]:
                    if system == "cluster":
                        for node in primaries():
                            node.flushall()
                        outcome = drain(envs[system], primaries(), lambda: waiting_cluster(client), args.tasks,
                                        log_dir, "cluster")
                    else:
                        server = singles[system]
                        server.flushall()
                        outcome = drain(envs[system], [server], lambda s=server: waiting_single(s), args.tasks,
                                        log_dir, system.replace("+", "-"))
                    rows[system].append(outcome)
                    shares = [d / sum(outcome["drain_us"]) for d in outcome["drain_us"]]
                    print(f"round {round_no + 1} {system:<14} drain {outcome['drain_per_s']:6.0f}/s  Redis µs/task "
                          f"enqueue {sum(outcome['enqueue_us']):5.1f} drain {sum(outcome['drain_us']):5.1f}"
                          + (f"  primaries' shares {' '.join(f'{s:.0%}' for s in shares)}" if len(shares) > 1
                             else ""), flush=True)
                    if args.calls:
                        print("  calls per task: " + ", ".join(
                            f"{c} {k:.3f}" for c, k in sorted(outcome["calls_per_task"].items(), key=lambda i: -i[1])
                            if k >= 0.001), flush=True)
        finally:
            replica.stop()
            paired.stop()
            own.stop()
            local_cluster.stop(procs)
    total = {s: median([sum(r["enqueue_us"]) + sum(r["drain_us"]) for r in rs]) for s, rs in rows.items()}
    rate = {s: median([r["drain_per_s"] for r in rs]) for s, rs in rows.items()}
    shares = [median([r["drain_us"][i] / sum(r["drain_us"]) for r in rows["cluster"]]) for i in range(3)]
    print(f"\nmedians over {args.rounds} rounds, {args.tasks} no-ops, {PARTITIONS} partitions:")
    print(f"  Redis CPU per task (enqueue + drain): cluster {total['cluster']:.1f} µs (all primaries), "
          f"one Redis with a replica {total['single+replica']:.1f} µs (ratio "
          f"{total['cluster'] / total['single+replica']:.2f}), one Redis alone {total['single']:.1f} µs (ratio "
          f"{total['cluster'] / total['single']:.2f})")
    print(f"  each primary's share of the drain: {', '.join(f'{s:.1%}' for s in shares)}")
    print(f"  drain rate: cluster {rate['cluster']:.0f}/s, one Redis with a replica {rate['single+replica']:.0f}/s "
          f"(ratio {rate['cluster'] / rate['single+replica']:.2f}), alone {rate['single']:.0f}/s (ratio "
          f"{rate['cluster'] / rate['single']:.2f})")


def failover(args, log_dir: Path) -> None:
    for replicas_ack in (1, 0):
        with tempfile.TemporaryDirectory() as folder:
            procs = local_cluster.start(PORTS, Path(folder) / "cluster", appendonly=False)
            try:
                print(json.dumps(_failover_run(procs, folder, replicas_ack, args.seconds, log_dir)), flush=True)
            finally:
                local_cluster.stop(procs)


def _failover_run(procs, folder: str, replicas_ack: int, seconds: float, log_dir: Path) -> dict:
    url = local_cluster.url_for(PORTS)
    env = own_env(PORTS[0], ROOT, folder) | {"REDIS_URL": url, "VOKAFLOW_REDIS_REPLICAS_ACK": str(replicas_ack),
                                             "VOKAFLOW_VISIBILITY_TIMEOUT": "10"}
    subprocess.run([python(), "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
    os.environ.update({k: env[k] for k in ("REDIS_URL", "VOKAFLOW_REDIS_REPLICAS_ACK", "DATABASE_URL",
                                           "DJANGO_SETTINGS_MODULE", "SECRET_KEY")})
    import django

    django.setup()
    from django.conf import settings

    from tasks.submit import BrokerUnavailable, enqueue, prepare
    from vokaflow.core.slots import partition_tag, task_part
    from vokaflow.redis import get_redis
    from vokaflow.redis_connect import cluster_client

    settings.VOKAFLOW_REDIS_REPLICAS_ACK = replicas_ack
    get_redis.cache_clear()
    cluster_client.cache_clear()  # a new cluster on the same ports
    client = get_redis()
    workers = [start([python(), "-m", "celery", "-A", "vokaflow", "worker", "--type", "general", "-P", "threads",
                      "-c", "2", "-n", f"f{i}@%h", "-l", "WARNING"], env, log_dir / f"failover-{i}.log")
               for i in range(2)]
    accepted, refused, group0 = [], [0], partition_tag(0, settings.VOKAFLOW_PARTITIONS)
    killed_at, back_at = [0.0], [0.0]
    try:
        time.sleep(5)
        victim = client.get_node_from_key(f"x{{{group0}}}")
        end = time.monotonic() + seconds
        n = 0
        while time.monotonic() < end:
            if not killed_at[0] and time.monotonic() > end - seconds * 2 / 3:
                next(p for p in procs if f"--port {victim.port} " in " ".join(map(str, p.args)) + " ").kill()
                killed_at[0] = time.monotonic()
            try:
                answers = enqueue([prepare("vokaflow.noop", partition_key=f"k{n + i}") for i in range(10)])
                accepted += [(a.task_id, a.replicated) for a in answers]
                if killed_at[0] and not back_at[0] and any(a.queue.endswith(f"{{{group0}}}") for a in answers):
                    back_at[0] = time.monotonic()
            except BrokerUnavailable:
                refused[0] += 1
                time.sleep(0.02)
            n += 10
        deadline = time.monotonic() + 120

        def finished() -> set[str]:
            done = set()
            for start_at in range(0, len(accepted), 500):
                chunk = [t for t, _ in accepted[start_at:start_at + 500]]
                raws = client.mget_nonatomic([b"celery-task-meta-" + task_part(t).encode() for t in chunk])
                done |= {t for t, raw in zip(chunk, raws, strict=True) if raw}
            return done

        done = finished()
        while len(done) < len(accepted) and time.monotonic() < deadline:
            time.sleep(1)
            done = finished()
    finally:
        stop(workers)
    lost = [(t, r) for t, r in accepted if t not in done]
    return {"replicas_ack": replicas_ack, "seconds": seconds, "accepted": len(accepted), "refused_batches": refused[0],
            "lost": len(lost), "lost_replicated": sum(1 for _, r in lost if r),
            "flowing_again_after_s": round(back_at[0] - killed_at[0], 1) if back_at[0] else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=30000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--failover", action="store_true")
    parser.add_argument("--calls", action="store_true", help="print the commands per task of each drain")
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()
    log_dir = own_redis_log_dir()
    (failover if args.failover else spread)(args, log_dir)


if __name__ == "__main__":
    main()

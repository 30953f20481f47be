"""Fleet state for the status, metrics and Prometheus endpoints, read from Redis in a few round trips."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from typing import cast

import psutil
import redis
from django.conf import settings
from redis.cluster import RedisCluster

from tasks.counters import OUTCOMES
from vokaflow.core import keys
from vokaflow.core.priorities import Priority
from vokaflow.core.queues import all_queues, parse_queue
from vokaflow.core.workers import WorkerType
from vokaflow.redis import get_redis
from vokaflow.redis_connect import as_text, is_cluster_client, mget, redacted_url
from workers.live import live_workers
from workers.queues import paused_levels

THROUGHPUT_WINDOW = 60


def queue_depths() -> dict[str, int]:
    """Every VokaFlow queue and its length (one pipelined round trip)."""
    queues = all_queues(settings.VOKAFLOW_PARTITIONS)
    with get_redis().pipeline(transaction=False) as pipe:
        for queue in queues:
            pipe.llen(queue)
        return dict(zip(queues, pipe.execute()))


def task_counts() -> dict[str, dict[str, dict[str, int]]]:
    """{worker type: {priority: {outcome: count}}} since the counters began."""
    levels = [(t.value, p.name) for t in WorkerType for p in Priority]
    with get_redis().pipeline(transaction=False) as pipe:
        for worker_type, priority in levels:
            pipe.hgetall(keys.STATS.format(worker_type, priority))
        rows = pipe.execute()
    counts: dict = defaultdict(dict)
    for (worker_type, priority), row in zip(levels, rows):
        if row:
            counts[worker_type][priority] = {o: int(row.get(o.encode(), 0)) for o in OUTCOMES}
    return dict(counts)


def throughput_per_second() -> float:
    """Tasks finished (succeeded or failed) per second over the last 60 s."""
    now = int(time.time())
    values = mget(get_redis(), [keys.DONE.format(s) for s in range(now - THROUGHPUT_WINDOW, now + 1)])
    return round(sum(int(v) for v in values if v) / THROUGHPUT_WINDOW, 3)


def outcome_history(bucket: int, count: int) -> list[dict]:
    """Tasks completed and failed in each of the last `count` buckets of `bucket` seconds (60 or
    900), oldest first: the workers' once-a-second flush adds to these buckets, kept 25 h."""
    first = int(time.time()) // bucket - count + 1
    span = range(first, first + count)
    values = mget(get_redis(), [keys.HISTORY.format(bucket, outcome, n) for n in span
                                for outcome in ("completed", "failed")])
    return [{"start": n * bucket, "completed": int(values[2 * i] or 0), "failed": int(values[2 * i + 1] or 0)}
            for i, n in enumerate(span)]


def redis_nodes() -> list[dict]:
    """The Redis behind REDIS_URL; on a cluster every primary and replica, with its role and
    the slots it serves (a replica: its primary's)."""
    single = get_redis()
    if not is_cluster_client(single):
        return [_node(redacted_url(settings.REDIS_URL), single.info())]
    client = cast(RedisCluster, single)
    slots: dict[str, list[list[int]]] = {}
    primary_of: dict[str, str] = {}
    for (start, end), holders in sorted(cast(dict, client.cluster_slots()).items()):
        primary = f"{holders['primary'][0]}:{holders['primary'][1]}"
        slots.setdefault(primary, []).append([start, end])
        for host, port, *_ in holders.get("replicas", []):
            primary_of[f"{host}:{port}"] = primary
    found = []
    for node in sorted(client.get_nodes(), key=lambda n: n.name):
        try:
            info = client.get_redis_connection(node).info()
        except (redis.RedisError, OSError) as exc:
            found.append({"url": node.name, "node": node.name, "role": "unreachable", "error": str(exc)})
            continue
        entry = _node(node.name, info) | {"node": node.name}
        if node.name in slots:
            entry["slots"] = slots[node.name]
        elif node.name in primary_of:
            entry |= {"replica_of": primary_of[node.name], "slots": slots.get(primary_of[node.name], [])}
        found.append(entry)
    return found


def _node(url: str, info: dict) -> dict:
    return {"url": url, "role": info.get("role"), "version": info.get("redis_version"),
            "connected_clients": info.get("connected_clients"), "used_memory": info.get("used_memory"),
            "maxmemory_policy": info.get("maxmemory_policy"), "uptime_seconds": info.get("uptime_in_seconds")}


def system_resources() -> dict:
    """This API host's load (each worker host reports its own in its heartbeat's host name)."""
    return {"cpu_percent": psutil.cpu_percent(interval=None), "memory_percent": psutil.virtual_memory().percent,
            "disk_usage": psutil.disk_usage(str(settings.BASE_DIR)).percent}


def worker_pools(workers: list[dict]) -> dict[str, dict]:
    pools = {}
    for worker_type in WorkerType:
        mine = [w for w in workers if worker_type.value in w["worker_types"]]
        pools[worker_type.value] = {
            "max_workers": sum(w["concurrency"] for w in mine),  # the slots now (autoscaling moves them)
            "target_workers": target_slots(mine),
            "pool_type": sorted({w["pool"] for w in mine}) or None,
            "hosts": sorted({w["host"] for w in mine}),
            "workers": [w["name"] for w in mine],
            "busy": sum(w["busy"] for w in mine),
            "autoscale": autoscale_summary(mine),
        }
    return pools


def target_slots(workers: list[dict]) -> int:
    """The slots autoscaling decided for these workers (their slots now where it is off); solo
    processes count their host's decision once per host (`scope`)."""
    total, hosts = 0, {}
    for worker in workers:
        report = worker.get("autoscale") or {}
        if report.get("scope"):
            hosts[report["scope"]] = report.get("target_processes", 0)
        else:
            total += report.get("target", worker["concurrency"])
    return total + sum(hosts.values())


def autoscale_summary(workers: list[dict]) -> dict | None:
    """A type's autoscaling over its workers: the range of its slots (each worker's summed), the
    target wait, the latest change and the last decisions; None when none of them autoscales.
    A solo type's processes all carry their host's report: it is counted once per host."""
    reports = {}
    for worker in workers:
        report = worker.get("autoscale")
        if report:
            reports[report.get("scope") or worker["name"]] = report
    if not reports:
        return None
    decisions = sorted((d for r in reports.values() for d in r.get("decisions", ())), key=lambda d: d["at"],
                       reverse=True)[:10]
    return {
        "min": sum(r["min"] for r in reports.values()),
        "max": sum(r["max"] for r in reports.values()),
        "target_wait_seconds": max(r["target_wait_seconds"] for r in reports.values()),
        "last_change": decisions[0] if decisions else None,
        "decisions": decisions,
    }


def worker_counts(workers: list[dict]) -> dict[str, int]:
    """The two worker figures, named the same in status, metrics and Prometheus:
    `active_workers` are live (fresh heartbeat), `busy_workers` are running at least one task."""
    return {"active_workers": len(workers), "busy_workers": sum(1 for w in workers if w["busy"])}


def workers_status() -> dict:
    workers = live_workers()
    return {
        "total_workers": len(workers),
        **worker_counts(workers),
        "worker_pools": worker_pools(workers),
        "workers": workers,
        "redis_nodes": redis_nodes(),
        "partitions": settings.VOKAFLOW_PARTITIONS,
        "system_resources": system_resources(),
    }


# What only staff see: where Redis and the workers run (addresses, host names in worker names, pids).
STAFF_ONLY_REDIS_FIELDS = ("url", "version", "node", "replica_of", "error")
STAFF_ONLY_WORKER_FIELDS = ("name", "host", "pid")
STAFF_ONLY_POOL_FIELDS = ("hosts", "workers")
STAFF_ONLY_AUTOSCALE_FIELDS = ("scope",)


def redacted(report: dict) -> dict:
    """A status or metrics report as a non-staff user sees it: the same figures without the
    Redis URL and version, host names, worker names and pids."""
    report = dict(report)
    if "redis_nodes" in report:
        report["redis_nodes"] = [_without(node, STAFF_ONLY_REDIS_FIELDS) for node in report["redis_nodes"]]
    if "workers" in report:
        report["workers"] = [_without(w, STAFF_ONLY_WORKER_FIELDS) for w in report["workers"]]
        for worker in report["workers"]:
            if isinstance(worker.get("autoscale"), dict):  # a solo host's report names its host
                worker["autoscale"] = _without(worker["autoscale"], STAFF_ONLY_AUTOSCALE_FIELDS)
    if "worker_pools" in report:
        report["worker_pools"] = {worker_type: _without(pool, STAFF_ONLY_POOL_FIELDS)
                                  for worker_type, pool in report["worker_pools"].items()}
    return report


def _without(entry: dict, fields: tuple[str, ...]) -> dict:
    return {k: v for k, v in entry.items() if k not in fields}


def fleet_metrics(depths: dict[str, int] | None = None, workers: list[dict] | None = None) -> dict:
    """Everything GET metrics shows; pass depths and workers already read to avoid reading twice."""
    from tasks.dlq import dead_letter_counts

    depths = queue_depths() if depths is None else depths
    workers = live_workers() if workers is None else workers
    by_priority = {p.name: 0 for p in Priority}
    for queue, depth in depths.items():
        route = parse_queue(queue)
        if route:
            by_priority[route.priority.name] += depth
    counts = task_counts()
    totals = {o: sum(c[o] for per_type in counts.values() for c in per_type.values()) for o in OUTCOMES}
    return {
        "throughput_per_second": throughput_per_second(),
        "total_pending_tasks": sum(depths.values()),
        **worker_counts(workers),
        "redis_nodes": redis_nodes(),
        "partitions": settings.VOKAFLOW_PARTITIONS,
        "queue_distribution": by_priority,
        "queues": {q: d for q, d in depths.items() if d},
        "paused_levels": paused_levels(),  # levels whose queues workers do not consume (workers.queues)
        "system_resources": system_resources(),
        "memory_mode": {
            # Counters are kept in each worker's memory and added to Redis once a second.
            "enabled": True,
            "processed_tasks": totals["completed"] + totals["failed"] + totals["retried"],
            "completed_tasks": totals["completed"],
            "failed_tasks": totals["failed"],
            "retried_tasks": totals["retried"],
            "dead_lettered_tasks": totals["dead_lettered"],
        },
        "tasks_by_type": counts,
        "dead_letters": dead_letter_counts(),
    }


LAUNCHER_STALE_SECONDS = 30


def given_up_processes() -> dict[str, list[str]]:
    """{host: [process names its launcher gave up on]}, from launchers that reported recently."""
    found = {}
    for host, raw in get_redis().hgetall(keys.LAUNCHERS).items():
        report = json.loads(raw)
        if time.time() - report["reported_at"] > LAUNCHER_STALE_SECONDS:
            continue
        dead = sorted(name for name, p in report["processes"].items() if p["state"] == "given_up")
        if dead:
            found[as_text(host)] = dead
    return found

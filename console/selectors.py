"""What the console's pages show, gathered from the platform's services in few round trips.
Views call these; nothing here renders, and nothing else in the console talks to Redis."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime

from console import charts
from vokaflow.core.priorities import Priority
from vokaflow.core.workers import WorkerType
from workers import queues, status

DEAD_LETTER_COUNTS_SECONDS = 5  # a GROUP BY over 100,000 rows, shared by every open console


def overview() -> dict:
    from django.core.cache import cache

    from tasks.dlq import dead_letter_counts
    from workers.health import health

    workers = status.live_workers()
    pools = status.worker_pools(workers)
    waiting = queues.non_empty_queues()
    paused = queues.paused_levels_set()
    pending = _pending_by_level(waiting)
    oldest: dict[str, float] = {}
    for q in waiting:
        if q.oldest_age_seconds is not None:
            oldest[q.priority] = max(oldest.get(q.priority, 0.0), q.oldest_age_seconds)
    grid = []
    for worker_type in WorkerType:
        pool = pools[worker_type.value]
        cells: list[dict] = []
        for priority in Priority:
            depth = pending.get((worker_type.value, priority.name), 0)
            cells.append({"priority": priority.name, "depth": depth, "heat": heat(depth),
                          "paused": queues.Level(worker_type, priority) in paused})
        grid.append({"worker_type": worker_type.value, "short": worker_type.short, "cells": cells,
                     "total": sum(int(c["depth"]) for c in cells), "live": len(pool["workers"]),
                     "busy": pool["busy"], "slots": pool["max_workers"], "hosts": pool["hosts"],
                     "pool": ", ".join(pool["pool_type"] or []), "autoscale": pool["autoscale"]})
    decisions = sorted(({**d, "worker_type": row["worker_type"]} for row in grid if row["autoscale"]
                        for d in row["autoscale"]["decisions"]), key=lambda d: d["at"], reverse=True)[:8]
    letters: dict = cache.get_or_set("console:dead-letter-counts", dead_letter_counts, DEAD_LETTER_COUNTS_SECONDS)
    return {
        "grid": grid, "priorities": [p.name for p in Priority],
        "totals": [sum(row["cells"][i]["depth"] for row in grid) for i in range(len(Priority))],
        "total_pending": sum(q.depth for q in waiting),
        "oldest": [{"priority": p.name, "age": oldest.get(p.name)} for p in Priority],
        "hour": charts.bars(status.outcome_history(60, 60), 60),
        "day": charts.bars(status.outcome_history(900, 96), 900),
        "throughput": status.throughput_per_second(),
        "workers": len(workers), "busy_slots": sum(w["busy"] for w in workers),
        "slots": sum(w["concurrency"] for w in workers),
        "dead_letters": [{"status": s, "count": letters.get(s, 0)} for s in ("dead", "retried", "resolved",
                                                                             "discarded")],
        "health": health()["checks"],
        "decisions": [{**d, "at": datetime.fromtimestamp(d["at"], tz=UTC)} for d in decisions],
    }


def _pending_by_level(waiting: list[queues.QueueInfo]) -> dict[tuple[str, str], int]:
    pending: dict[tuple[str, str], int] = {}
    for q in waiting:
        pending[q.worker_type, q.priority] = pending.get((q.worker_type, q.priority), 0) + q.depth
    return pending


def heat(depth: int) -> int:
    """0 for an empty cell, then 1-5 by order of magnitude (1-9, 10-99, …, 10,000 and more)."""
    return 0 if depth <= 0 else min(5, 1 + int(math.log10(depth)))


def queue_page(worker_type: str | None = None, priority: str | None = None) -> dict:
    waiting = queues.non_empty_queues()
    shown = [q for q in waiting if (not worker_type or q.worker_type == worker_type)
             and (not priority or q.priority == priority)]
    paused = queues.paused_levels_set()
    pending = _pending_by_level(waiting)
    levels = [{"worker_type": w.value, "cells": [
        {"priority": p.name, "paused": queues.Level(w, p) in paused, "depth": pending.get((w.value, p.name), 0),
         "chosen": w.value == worker_type and p.name == priority} for p in Priority]} for w in WorkerType]
    return {"queues": shown, "levels": levels, "total": sum(q.depth for q in shown), "paused_count": len(paused),
            "worker_types": [w.value for w in WorkerType], "priorities": [p.name for p in Priority]}


def running_tasks() -> list[dict]:
    """Every task the live workers reported running in their last heartbeat, oldest first."""
    now = time.time()
    running = []
    for worker in status.live_workers():
        for task in worker.get("active", []):
            started = task.get("started_at")
            running.append({**task, "worker": worker["name"], "pool": worker["pool"], "started": _datetime(started),
                            "started_clock": time.strftime("%H:%M:%S", time.gmtime(started)) if started else "—",
                            "running_for": now - started if started else None})
    return sorted(running, key=lambda t: t["started_at"] or now)


def running_task(task_id: str) -> dict | None:
    return next((t for t in running_tasks() if t["id"] == task_id), None)


def task_page(task_id: str) -> dict:
    """The task's state (tasks.state.task_status), its dead letter if any, and its timeline."""
    from tasks.models import DeadLetter
    from tasks.state import FINISHED_STATES, task_status

    info = task_status(task_id)
    letter = DeadLetter.objects.filter(task_id=task_id).first()
    running = running_task(task_id) if info["state"] not in FINISHED_STATES else None
    timeline = [("submitted", info.get("submitted_at")), ("due", info.get("eta")),
                ("started", running and running["started"]), ("finished", info.get("finished_at"))]
    return {
        "task": info, "dead_letter": letter, "running": running,
        "timeline": [(label, _datetime(value)) for label, value in timeline if value],
        "can_revoke": info["state"] not in FINISHED_STATES,
        "can_retry": letter is not None and letter.status in (DeadLetter.Status.DEAD, DeadLetter.Status.DISCARDED),
    }


def _datetime(value) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, UTC)
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def schedules_page(limit: int) -> dict:
    """Schedules by name, each with its next and last run and its last five occurrences."""
    from tasks.models import Schedule
    from tasks.schedules.services import schedule_details

    total = Schedule.objects.count()
    rows = []
    for schedule in Schedule.objects.order_by("name", "id")[:limit]:
        details = schedule_details(schedule, states=5)
        rows.append({"schedule": schedule, "next_run_at": details["next_run_at"],
                     "last_run_at": details["last_run_at"], "recent": details["recent_runs"][:5]})
    return {"schedules": rows, "total": total, "limit": limit}

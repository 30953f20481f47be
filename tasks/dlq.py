"""The dead-letter service: record, retry, discard and prune dead letters.

Recording never loses a record: when the database does not answer, the record waits in a
Redis list and is moved into the table by the next write or by the periodic flush.
"""

from __future__ import annotations

import json
import logging
import socket
from dataclasses import dataclass
from datetime import UTC, datetime

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import Q

from tasks.models import DeadLetter
from tasks.routing import parse_queue
from vokaflow import locks
from vokaflow.redis import get_redis

logger = logging.getLogger(__name__)

PENDING_KEY = "vokaflow:dlq:pending"
FLUSH_BATCH = 500


class DeadLetterNotFound(LookupError):
    pass


class DeadLetterNotRetriable(RuntimeError):
    pass


@dataclass
class BulkOutcome:
    matched: int
    retried: int
    failed: int


def dead_letter_record(*, task_id: str, task_name: str, args, kwargs, queue: str | None, reason: str,
                       exception_type: str, error: str, traceback: str, total_retries: int,
                       worker: str = "", retried_from: str = "", first_submitted_at: str | None = None) -> None:
    """Write one dead letter (once per task id); fall back to Redis when the database fails."""
    route = parse_queue(queue or "")
    record = {
        "task_id": task_id, "task_name": task_name, "args": list(args or []), "kwargs": dict(kwargs or {}),
        "worker_type": route.worker_type.value if route else "", "priority": route.priority.name if route else "",
        "partition": route.partition if route else None, "queue": queue or "", "reason": reason,
        "exception_type": exception_type[:255], "error": error, "traceback": traceback or "",
        "total_retries": total_retries, "first_submitted_at": first_submitted_at,
        "dlq_timestamp": datetime.now(UTC).isoformat(), "hostname": socket.gethostname(), "worker": worker or "",
        "retried_from": retried_from or "",
    }
    from workers.heartbeat import counters

    counters.add(queue, "dead_lettered")
    try:
        _insert([record])
    except DatabaseError as exc:
        logger.warning("database unavailable, dead letter %s kept in Redis until it is back: %s", task_id, exc)
        connection.close()  # reconnect next time instead of reusing a broken connection
        get_redis().rpush(PENDING_KEY, json.dumps(record, default=str))
        return
    dead_letter_flush_pending()


def _insert(records: list[dict]) -> None:
    # ignore_conflicts + the unique task_id: a redelivered failure never makes a second row.
    DeadLetter.objects.bulk_create([DeadLetter(**r) for r in records], ignore_conflicts=True)


def dead_letter_flush_pending() -> int:
    """Move records that waited in Redis into the table; returns how many moved."""
    r = get_redis()
    if not r.llen(PENDING_KEY):
        return 0
    try:
        return locks.execute_with_lock("dlq-flush", _flush, r, ttl=60, wait=0, client=r)
    except locks.LockNotAcquired:
        return 0  # another process is flushing


def _flush(r) -> int:
    moved = 0
    while True:
        raw = r.lrange(PENDING_KEY, 0, FLUSH_BATCH - 1)
        if not raw:
            return moved
        records = [json.loads(item) for item in raw]
        _insert(records)  # a DatabaseError leaves them in Redis for the next flush
        r.ltrim(PENDING_KEY, len(raw), -1)  # safe: only this lock holder removes from the head
        moved += len(raw)


def dead_letter_get(*, task_id: str) -> DeadLetter:
    try:
        return DeadLetter.objects.get(task_id=task_id)
    except DeadLetter.DoesNotExist:
        raise DeadLetterNotFound(task_id) from None


def dead_letter_retry(*, task_id: str, priority: str | None = None, worker_type: str | None = None,
                      partition_key: str | None = None) -> DeadLetter:
    """Enqueue the task again with its original arguments and routing (or the overrides).
    The row becomes `retried` and names the new task; it becomes `resolved` when that succeeds."""
    from tasks.submit import enqueue, prepare

    with transaction.atomic():
        letter = DeadLetter.objects.select_for_update().filter(task_id=task_id).first()
        if letter is None:
            raise DeadLetterNotFound(task_id)
        if letter.status not in (DeadLetter.Status.DEAD, DeadLetter.Status.DISCARDED):
            retried_as = f" (retried as {letter.retried_task_id})" if letter.retried_task_id else ""
            raise DeadLetterNotRetriable(f"dead letter {task_id} is {letter.status}, not dead{retried_as}")
        request = prepare(letter.task_name, args=letter.args, kwargs=letter.kwargs,
                          priority=priority or letter.priority or None,
                          worker_type=worker_type or letter.worker_type or None,
                          partition_key=partition_key,
                          partition=None if partition_key else letter.partition,
                          retried_from=letter.task_id)
        enqueue([request])
        letter.status = DeadLetter.Status.RETRIED
        letter.retried_task_id = request.task_id
        letter.save(update_fields=["status", "retried_task_id", "updated_at"])
    return letter


def dead_letter_retry_many(**filters) -> BulkOutcome:
    """Retry every dead letter matching the filters (status defaults to dead)."""
    filters.setdefault("status", DeadLetter.Status.DEAD)
    task_ids = list(DeadLetter.objects.matching(**filters).values_list("task_id", flat=True))
    retried = failed = 0
    for task_id in task_ids:
        try:
            dead_letter_retry(task_id=task_id)
            retried += 1
        except (DeadLetterNotFound, DeadLetterNotRetriable, ValueError) as exc:
            logger.warning("could not retry dead letter %s: %s", task_id, exc)
            failed += 1
    return BulkOutcome(matched=len(task_ids), retried=retried, failed=failed)


def dead_letter_discard(*, task_id: str) -> DeadLetter:
    """Mark as discarded; the row stays for audit."""
    letter = dead_letter_get(task_id=task_id)
    letter.status = DeadLetter.Status.DISCARDED
    letter.save(update_fields=["status", "updated_at"])
    return letter


def dead_letter_discard_many(task_ids: list[str]) -> int:
    return DeadLetter.objects.filter(task_id__in=task_ids).exclude(status=DeadLetter.Status.DISCARDED) \
        .update(status=DeadLetter.Status.DISCARDED)


def dead_letter_resolve(*, retried_from: str) -> None:
    """The retry of `retried_from` succeeded.

    The retry is enqueued inside dead_letter_retry's transaction, so a fast worker can finish
    it before the row says `retried`: locking the row first waits for that commit (a plain
    UPDATE … WHERE status = 'retried' would see the old status and change nothing)."""
    with transaction.atomic():
        letter = DeadLetter.objects.select_for_update().filter(task_id=retried_from).first()
        if letter is not None and letter.status == DeadLetter.Status.RETRIED:
            letter.status = DeadLetter.Status.RESOLVED
            letter.save(update_fields=["status", "updated_at"])


def dead_letter_prune(*, keep: int | None = None) -> int:
    """Keep the newest `keep` (VOKAFLOW_DLQ_RETENTION) per worker type; delete the rest."""
    keep = settings.VOKAFLOW_DLQ_RETENTION if keep is None else keep
    deleted = 0
    for worker_type in DeadLetter.objects.values_list("worker_type", flat=True).distinct().order_by():
        rows = DeadLetter.objects.filter(worker_type=worker_type).newest_first()
        cutoff = rows.values("dlq_timestamp", "id")[keep:keep + 1].first()
        if cutoff is None:
            continue
        older = rows.filter(Q(dlq_timestamp__lt=cutoff["dlq_timestamp"])
                            | Q(dlq_timestamp=cutoff["dlq_timestamp"], id__lte=cutoff["id"]))
        while True:  # in batches: a long DELETE would hold locks for its whole length
            batch = list(older.values_list("id", flat=True)[:5000])
            if not batch:
                break
            deleted += DeadLetter.objects.filter(id__in=batch).delete()[0]
    return deleted


def dead_letter_counts() -> dict:
    from django.db.models import Count

    return {row["status"]: row["n"] for row in DeadLetter.objects.values("status").annotate(n=Count("id")).order_by()}

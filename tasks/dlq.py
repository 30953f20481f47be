"""The dead-letter service: record, retry, discard and prune dead letters.

Recording never loses a record: when the database does not answer, the record waits in a
Redis list and is moved into the table by the next write or by the periodic flush.
"""

from __future__ import annotations

import json
import logging
import socket
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from django.conf import settings
from django.db import Error, connection, transaction
from django.db.models import Q
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from tasks.models import DeadLetter
from tasks.validation import SubmissionError, TaskRequest
from vokaflow import locks
from vokaflow.core import keys
from vokaflow.core.errors import Conflict, NotFound, Unavailable
from vokaflow.core.queues import parse_queue
from vokaflow.redis import get_redis

logger = logging.getLogger(__name__)

FLUSH_BATCH = 500


class DeadLetterNotFound(NotFound):
    def __init__(self, task_id: str):
        super().__init__(f"no dead letter for task {task_id}")


class DeadLetterNotRetriable(Conflict):
    pass


@dataclass
class BulkOutcome:
    matched: int
    retried: int
    failed: int


class BulkRetryInterrupted(Unavailable):
    """Redis stopped answering part way through a bulk retry; `outcome` counts what was retried."""

    def __init__(self, outcome: BulkOutcome, cause: Exception):
        self.outcome = outcome
        super().__init__(f"{cause} Retried {outcome.retried} of {outcome.matched} dead letters before that; "
                         "the others are unchanged (still dead): retry them when Redis is back.",
                         **asdict(outcome))


RETRIABLE = (DeadLetter.Status.DEAD, DeadLetter.Status.DISCARDED)
RETRY_BATCH = 500


def dead_letter_record(*, task_id: str, task_name: str, args, kwargs, queue: str | None, reason: str,
                       exception_type: str, error: str, traceback: str, total_retries: int,
                       worker: str = "", retried_from: str = "", first_submitted_at: str | None = None,
                       owner: int | None = None, schedule: int | None = None) -> None:
    """Write one dead letter (once per task id); fall back to Redis when the database fails."""
    route = parse_queue(queue or "")
    record = {
        "task_id": task_id, "task_name": task_name, "args": list(args or []), "kwargs": dict(kwargs or {}),
        "worker_type": route.worker_type.value if route else "", "priority": route.priority.name if route else "",
        "partition": route.partition if route else None, "queue": queue or "", "reason": reason,
        "exception_type": exception_type[:255], "error": error, "traceback": traceback or "",
        "total_retries": total_retries, "first_submitted_at": first_submitted_at,
        "dlq_timestamp": datetime.now(UTC).isoformat(), "hostname": socket.gethostname(), "worker": worker or "",
        "retried_from": retried_from or "", "owner_id": owner,
        "schedule_id": schedule if isinstance(schedule, int) else None,
    }
    from tasks.counters import counters

    counters.add(queue, "dead_lettered")
    try:
        _insert([record])
    except Error as exc:  # DatabaseError, and InterfaceError for a connection an outage closed
        logger.warning("database unavailable, dead letter %s kept in Redis until it is back: %s", task_id, exc)
        connection.close()  # reconnect next time instead of reusing a broken connection
        get_redis().rpush(keys.DLQ_PENDING, json.dumps(record, default=str))
        return
    dead_letter_flush_pending()


def _insert(records: list[dict]) -> None:
    # ignore_conflicts + the unique task_id: a redelivered failure never makes a second row.
    DeadLetter.objects.bulk_create([DeadLetter(**r) for r in records], ignore_conflicts=True)


def dead_letter_flush_pending() -> int:
    """Move records that waited in Redis into the table; returns how many moved."""
    r = get_redis()
    try:
        if not r.llen(keys.DLQ_PENDING):
            return 0
        return locks.execute_with_lock("dlq-flush", _flush, r, ttl=60, wait=0, client=r)
    except locks.LockNotAcquired:
        return 0  # another process is flushing
    except (RedisConnectionError, RedisTimeoutError) as exc:
        # Redis restarting: the records stay where they are and the next flush moves them. A
        # failure here would dead-letter the flush task itself.
        logger.warning("Redis unavailable, dead letters are flushed next time: %s", exc)
        return 0


def _flush(r) -> int:
    moved = 0
    while True:
        raw = r.lrange(keys.DLQ_PENDING, 0, FLUSH_BATCH - 1)
        if not raw:
            return moved
        records = [json.loads(item) for item in raw]
        try:
            _insert(records)
        except Error as exc:  # DatabaseError, and InterfaceError for a connection the outage closed
            # Still away: they wait in Redis for the next flush. Not a failure of the flush task
            # (which would be dead-lettered itself, one row per flush for as long as the outage lasts).
            logger.warning("database unavailable, %d dead letters stay in Redis until it is back: %s",
                           r.llen(keys.DLQ_PENDING), exc)
            connection.close()
            return moved
        r.ltrim(keys.DLQ_PENDING, len(raw), -1)  # safe: only this lock holder removes from the head
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
    from tasks.submit import enqueue

    with transaction.atomic():
        letter = DeadLetter.objects.select_for_update().filter(task_id=task_id).first()
        if letter is None:
            raise DeadLetterNotFound(task_id)
        if letter.status not in RETRIABLE:
            retried_as = f" (retried as {letter.retried_task_id})" if letter.retried_task_id else ""
            raise DeadLetterNotRetriable(f"dead letter {task_id} is {letter.status}, not dead{retried_as}")
        request = _retry_request(letter, priority=priority, worker_type=worker_type, partition_key=partition_key)
        enqueue([request])  # raises before the row changes when Redis is down
        letter.status = DeadLetter.Status.RETRIED
        letter.retried_task_id = request.task_id
        letter.save(update_fields=["status", "retried_task_id", "updated_at"])
    return letter


def _retry_request(letter: DeadLetter, *, priority: str | None = None, worker_type: str | None = None,
                   partition_key: str | None = None) -> TaskRequest:
    from tasks.validation import prepare

    return prepare(letter.task_name, args=letter.args, kwargs=letter.kwargs,
                   priority=priority or letter.priority or None,
                   worker_type=worker_type or letter.worker_type or None,
                   partition_key=partition_key, partition=None if partition_key else letter.partition,
                   retried_from=letter.task_id, owner=letter.owner_id)


def dead_letter_retry_many(**filters) -> BulkOutcome:
    """Retry every dead letter matching the filters (status defaults to dead), RETRY_BATCH at a
    time: one Redis round trip and one transaction per batch, so a batch is retried whole or not
    at all. When Redis stops answering, BulkRetryInterrupted says how many were retried before."""
    from tasks.submit import BrokerUnavailable, enqueue

    filters.setdefault("status", DeadLetter.Status.DEAD)
    task_ids = list(DeadLetter.objects.matching(**filters).values_list("task_id", flat=True))
    outcome = BulkOutcome(matched=len(task_ids), retried=0, failed=0)
    for start in range(0, len(task_ids), RETRY_BATCH):
        chunk = task_ids[start:start + RETRY_BATCH]
        with transaction.atomic():
            letters = list(DeadLetter.objects.select_for_update().filter(task_id__in=chunk, status__in=RETRIABLE))
            outcome.failed += len(chunk) - len(letters)  # retried or removed meanwhile
            ready: list[tuple[DeadLetter, TaskRequest]] = []
            for letter in letters:
                try:
                    ready.append((letter, _retry_request(letter)))
                except SubmissionError as exc:  # e.g. the task no longer exists
                    logger.warning("could not retry dead letter %s: %s", letter.task_id, exc)
                    outcome.failed += 1
            try:
                enqueue([request for _, request in ready])
            except BrokerUnavailable as exc:
                raise BulkRetryInterrupted(outcome, exc) from exc
            for letter, request in ready:
                letter.status, letter.retried_task_id = DeadLetter.Status.RETRIED, request.task_id
            DeadLetter.objects.bulk_update([letter for letter, _ in ready], ["status", "retried_task_id"])
        outcome.retried += len(ready)
    return outcome


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

"""submit_task(): the one path every enqueue takes (REST, Python API, retries).

Validation lives in tasks.validation, records in tasks.records, idempotency keys in
tasks.idempotency; this module publishes: one atomic, pipelined round trip per batch (a batch
with idempotency keys first WATCHes and reads them).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import redis
from celery import Task
from celery.utils.nodenames import anon_nodename
from django.conf import settings
from redis.exceptions import RedisClusterException

from tasks.idempotency import KeyLook, watch_idempotency_keys, write_claims
from tasks.messages import encode_json, task_message
from tasks.quota import release_pending, reserve_pending
from tasks.records import Submission, store_records
from tasks.scheduled import is_delayed, schedule, scheduled_key
from tasks.validation import SubmissionError, TaskRequest, prepare, prepare_payload
from vokaflow.announce import announce, announce_in, needs_announcing, new_token
from vokaflow.celery import app
from vokaflow.core import keys
from vokaflow.core.errors import Unavailable
from vokaflow.core.queues import Route, partition_for
from vokaflow.core.slots import group_tag
from vokaflow.redis import get_redis
from vokaflow.redis_connect import redacted_url, refresh_slots
from vokaflow.transport import publish, push, ring_woken, woken

logger = logging.getLogger(__name__)


class BrokerUnavailable(Unavailable):
    """Redis did not answer; nothing was enqueued."""


def submit_task(task_or_name: Task | str, *, args: Any = (), kwargs: Any = None, priority: Any = None,
                worker_type: Any = None, partition_key: str | None = None, countdown: float | None = None,
                eta: datetime | str | None = None, lock: dict | None = None,
                idempotency_key: str | None = None, owner: int | None = None) -> str:
    """Validate, route and enqueue one task; returns its task id.

    `owner` is the id of the user the task belongs to (None: the system, visible to staff);
    idempotency keys are scoped to it. Raises SubmissionError for bad input and
    BrokerUnavailable when Redis is down; in both cases nothing is enqueued. Needs no web
    server, only Django settings.
    """
    request = prepare(task_or_name, args=args, kwargs=kwargs, priority=priority,
                      worker_type=worker_type, partition_key=partition_key,
                      countdown=countdown, eta=eta, lock=lock, idempotency_key=idempotency_key)
    return enqueue([request], owner=owner)[0].task_id


def submit_payloads(items: Any, *, owner: int | None = None) -> list[Submission]:
    """A REST batch: 1 to VOKAFLOW_BATCH_LIMIT task objects, all validated before any is enqueued."""
    if not isinstance(items, list) or not items:
        raise SubmissionError("tasks", "required: a non-empty list of task objects")
    limit = settings.VOKAFLOW_BATCH_LIMIT
    if len(items) > limit:
        raise SubmissionError("tasks", f"{len(items)} tasks is over the limit of {limit} per batch")
    return enqueue([prepare_payload(item, index=i) for i, item in enumerate(items)], owner=owner)


ATTEMPTS = 10  # reads of the idempotency keys before a submission whose keys keep being taken gives up


def enqueue(requests: list[TaskRequest], *, owner: int | None = None) -> list[Submission]:
    """Publish validated requests in one atomic, pipelined round trip (messages and records).
    A request whose idempotency key the same owner used within 24 h returns the first task
    instead. `owner` (the API user's id) owns the new tasks (their records name it: tasks.ownership)
    and counts them against that user's pending quota (tasks.quota: QuotaExceeded, 429, and
    nothing enqueued when it is full); None = the system: no quota, visible to staff only. A
    request that names its own owner (a dead letter's retry) is that user's task instead, counted
    against no quota: an operator asked for it.

    BrokerUnavailable (nothing was enqueued) comes only from a failure before or during the
    push; once it succeeded the answer is built without Redis. Idempotency keys are written
    with the push and WATCHed from their read until then (tasks.idempotency): a key taken by a
    concurrent submission meanwhile makes the push fail whole, and the keys are read again.

    On a Redis Cluster each partition group (one slot: vokaflow.core.slots) is one such atomic
    step, and a batch spread over several groups is several: when one fails after others were
    applied, PartlyEnqueued (503) says which tasks were enqueued; a retry with the same
    idempotency keys enqueues only the rest."""
    r = get_redis()
    if not keys.cluster_layout():
        return _replicated(r, None, _enqueue_atomically(r, requests, owner, bells=True)[0])
    groups: dict[str | None, list[TaskRequest]] = {}
    for req in requests:
        groups.setdefault(group_tag(req.route.partition), []).append(req)
    answers: dict[str, Submission] = {}
    filled: set[str] = set()
    announcing: list[tuple[dict[str, int], str]] = []
    try:
        for tag, group in groups.items():
            try:
                done, pushed = _enqueue_atomically(r, group, owner, bells=False)
            except BrokerUnavailable as exc:
                if not answers:
                    raise
                raise PartlyEnqueued(requests, answers, exc) from exc
            announcing.append((pushed.states, pushed.token))
            filled |= pushed.woken
            answers.update((req.task_id, answer) for req, answer in zip(group, _replicated(r, tag, done), strict=True))
    finally:  # before any answer, also for the part of a batch a failing shard cut short
        announce(r, announcing)
        ring_woken(r, filled)
    return [answers[req.task_id] for req in requests]


def _replicated(r, group: str | None, answers: list[Submission]) -> list[Submission]:
    """With VOKAFLOW_REDIS_REPLICAS_ACK, wait until that many replicas have this submission's
    writes (or the timeout passes) and say so in each new task's answer. WAIT counts the writes of
    its own connection, so a marker is written on one connection to the group's primary and WAIT
    follows on it: Redis replicates in order, so a replica that has the marker has the MULTI
    before it. Never a 503: the tasks are enqueued, `replicated: false` says they might not survive
    a failover right now."""
    needed = settings.VOKAFLOW_REDIS_REPLICAS_ACK
    if needed <= 0 or not any(not a.duplicate for a in answers):
        return answers
    marker = keys.in_group(keys.REPLICATED, group)
    try:
        node = r.get_redis_connection(r.get_node_from_key(marker)) if keys.cluster_layout() else r
        with node.pipeline(transaction=False) as pipe:
            pipe.set(marker, "1", px=60_000)
            pipe.execute_command("WAIT", needed, settings.VOKAFLOW_REDIS_REPLICAS_ACK_TIMEOUT_MS)
            acknowledged = pipe.execute()[1] >= needed
    except (redis.RedisError, OSError) as exc:
        logger.warning("could not wait for replicas of enqueued tasks: %s", exc)
        acknowledged = False
    return [a if a.duplicate else replace(a, replicated=acknowledged) for a in answers]


class PartlyEnqueued(BrokerUnavailable):
    """A batch over several partition groups of a Redis Cluster, cut short by a failing shard:
    `enqueued` lists the tasks that were (their answers), `not_enqueued` the indexes of the rest."""

    def __init__(self, requests: list[TaskRequest], answers: dict[str, Submission], cause: Exception):
        enqueued = [{"index": i, **answers[req.task_id].public()} for i, req in enumerate(requests)
                    if req.task_id in answers]
        missing = [i for i, req in enumerate(requests) if req.task_id not in answers]
        super().__init__(f"{len(enqueued)} of {len(requests)} tasks were enqueued before a Redis Cluster shard "
                         f"failed: {cause}. Retry the others (not_enqueued: their indexes in the batch); with "
                         "idempotency keys a retry of the whole batch enqueues only those.",
                         enqueued=enqueued, not_enqueued=missing)


class Pushed(NamedTuple):
    """What a push on a cluster leaves its caller to do: ring the bells of the queues it found
    empty, finish its announcements (vokaflow.announce: ANNOUNCE's reply per queue, its token)."""

    woken: set[str]
    states: dict[str, int]
    token: str


NOTHING_PUSHED = Pushed(set(), {}, "")


def _enqueue_atomically(r, requests: list[TaskRequest], owner: int | None, *,
                        bells: bool) -> tuple[list[Submission], Pushed]:
    """enqueue() of requests whose keys share one slot (all of them, on one Redis): their answers
    and, without `bells` (a cluster), what the caller has to do after the push (Pushed)."""
    now = datetime.now(UTC).isoformat()
    token = "" if bells else new_token()  # of this submission's announcements (vokaflow.announce)
    tried: tuple[KeyLook, dict[str, Submission]] | None = None  # the last push that ended in a WatchError
    for _ in range(ATTEMPTS):
        attempt = None
        try:
            with r.pipeline(transaction=True) as pipe:
                look = watch_idempotency_keys(pipe, requests, owner)
                if tried and any(look.repeats.get(task_id) == task_id for task_id in tried[1]):
                    # Its EXEC was applied, only the reply was lost: what it would have left to do
                    # is not known, so every queue it pushed to is rung for and announced.
                    return _answers(requests, *tried), _pushed_blind(tried[1], bells, token)
                fresh = [req for req in requests if req.task_id not in look.repeats]
                # A request that names its owner (a dead letter's retry) is that user's task.
                submissions = {req.task_id: _submission(req, now, owner if req.owner is None else req.owner)
                               for req in fresh}
                reserved = reserve_pending(r, owner, fresh)
                attempt = (look, submissions)
                try:
                    pushed = _push(pipe, fresh, submissions, look.claims, bells=bells, token=token)
                except BaseException:
                    if reserved:
                        release_pending(r, owner, list(submissions))
                    raise
        except redis.WatchError:
            # A key was taken meanwhile (nothing was applied), or the connection dropped while
            # watching (then an EXEC may have been applied: the next look finds its keys naming
            # its own tasks). Either way, look again.
            tried = attempt or tried
            continue
        except (redis.RedisError, RedisClusterException, OSError) as exc:
            refresh_slots(r)
            raise BrokerUnavailable(f"the broker at {redacted_url(settings.REDIS_URL)} is unreachable or refused "
                                    f"the tasks: {exc}. Nothing was enqueued; retry when Redis is back.") from exc
        return _answers(requests, look, submissions), pushed
    raise BrokerUnavailable(f"the idempotency keys of this submission were taken by concurrent submissions "
                            f"{ATTEMPTS} times while it was being enqueued. Nothing was enqueued; retry.")


def _answers(requests: list[TaskRequest], look: KeyLook, submissions: dict[str, Submission]) -> list[Submission]:
    """Each request's answer: its new task, or the first submission's stored record for a repeat."""
    firsts = {**look.firsts, **submissions}
    return [replace(firsts[look.repeats[req.task_id]], duplicate=True) if req.task_id in look.repeats
            else submissions[req.task_id] for req in requests]


def _pushed_blind(submissions: dict[str, Submission], bells: bool, token: str) -> Pushed:
    """Pushed for a push whose replies were lost: each queue as found empty (an extra bell and
    announcement cost nothing wrong; ANNOUNCED marks only this token's own announcements done)."""
    if bells:
        return NOTHING_PUSHED
    queues = {s.queue for s in submissions.values()}
    return Pushed(queues, {q: 2 for q in queues if needs_announcing(q)}, token)


def _push(pipe, requests: list[TaskRequest], submissions: dict[str, Submission], claims: dict[str, str], *,
          bells: bool = True, token: str = "") -> Pushed:
    """LPUSH each queue's messages (FIFO for BRPOP), or ZADD a delayed one to its type's scheduled
    set (tasks.scheduled), SET each task's record and each new idempotency key, in one MULTI on
    `pipe` (which may WATCH the keys). A keyed task's record lives as long as its key. Without
    `bells` (a cluster) the MULTI also runs ANNOUNCE on each queue (vokaflow.announce), and
    returns what the caller does next (Pushed)."""
    if not requests:
        return NOTHING_PUSHED
    now = time.time()
    origin = anon_nodename()
    parent = app.current_worker_task
    parent_id = parent.request.id if parent else None
    root_id = (parent.request.root_id or parent_id) if parent else None
    by_queue: dict[str, list[str]] = {}
    delayed: dict[str, dict[str, float]] = {}
    for req in requests:
        message = task_message(
            task_id=req.task_id, name=req.task.name, args_json=req.args_json, kwargs_json=req.kwargs_json,
            queue=req.route.queue, eta=req.eta, origin=origin, parent_id=parent_id, root_id=root_id,
            lock=req.lock, retried_from=req.retried_from, owner=submissions[req.task_id].owner,
            schedule=req.schedule)
        if req.eta is not None and is_delayed(req.eta, now):
            delayed.setdefault(scheduled_key(req.route.worker_type.short, req.route.partition), {})[message] = \
                req.eta.timestamp()
        else:
            by_queue.setdefault(req.route.queue, []).append(message)
    result_ttl = settings.VOKAFLOW_RESULT_TTL
    keyed_ttl = max(result_ttl, settings.VOKAFLOW_IDEMPOTENCY_TTL)
    pipe.multi()
    pushes = publish(pipe, by_queue, bells=bells) if by_queue else []
    checks = {} if bells else {q: announce_in(pipe, q, n, token) for _, q, n in pushes if needs_announcing(q)}
    schedule(pipe, delayed)
    for ttl, group in _by_ttl(submissions, claims, result_ttl, keyed_ttl).items():
        store_records(pipe, group, ttl)
    write_claims(pipe, claims)
    replies = pipe.execute()
    if bells:
        return NOTHING_PUSHED
    return Pushed(woken(pushes, replies), {q: replies[at] for q, at in checks.items()}, token)


def _by_ttl(submissions: dict[str, Submission], claims: dict[str, str], result_ttl: int,
            keyed_ttl: int) -> dict[int, list[Submission]]:
    groups: dict[int, list[Submission]] = {}
    for task_id, submission in submissions.items():
        groups.setdefault(keyed_ttl if task_id in claims else result_ttl, []).append(submission)
    return groups


def _submission(req: TaskRequest, now: str, owner: int | None) -> Submission:
    return Submission(task_id=req.task_id, task=req.task.name, queue=req.route.queue,
                      priority=req.route.priority.name, worker_type=req.route.worker_type.value,
                      partition=req.route.partition, submitted_at=now,
                      eta=req.eta.isoformat() if req.eta else None, owner=owner)


def running_message(task: Task, delay: float | None = None) -> tuple[str, str]:
    """(queue, message) of the running task, unchanged (same id, retries, lock, owner, schedule),
    due in `delay` seconds if given."""
    request = task.request
    queue = (request.delivery_info or {}).get("routing_key")
    if not queue:
        raise RuntimeError(f"task {request.id} has no queue to return to")
    message = task_message(
        task_id=request.id, name=task.name, args_json=encode_json(list(request.args or ())),
        kwargs_json=encode_json(request.kwargs or {}), queue=queue,
        eta=None if delay is None else datetime.now(UTC) + timedelta(seconds=delay), origin=anon_nodename(),
        parent_id=request.parent_id, root_id=request.root_id, retries=request.retries or 0,
        lock=getattr(request, "vokaflow_lock", None), retried_from=getattr(request, "vokaflow_retried_from", None),
        owner=getattr(request, "vokaflow_owner", None), schedule=getattr(request, "vokaflow_schedule", None),
        enqueued_at=getattr(request, "vokaflow_enqueued_at", None))
    return queue, message


def requeue_running(task: Task, delay: float) -> None:
    """Put the running task's message back, unchanged, due in `delay` s."""
    queue, message = running_message(task, delay)
    push(get_redis(), {queue: [message]})


def route_task(name, args, kwargs, options, task=None, **kw):
    """Celery router: a plain `.delay()` of a platform task goes to its type's queue too."""
    if options.get("queue") or task is None or not hasattr(task, "worker_type"):
        return None
    route = Route(task.worker_type, task.default_priority, partition_for(None, settings.VOKAFLOW_PARTITIONS))
    return {"queue": route.queue, "routing_key": route.queue, "exchange": ""}

"""Idempotency keys: the same key within VOKAFLOW_IDEMPOTENCY_TTL returns the first task.

Keys are scoped to their owner: two users (or a user and the system) with the same key are two
different submissions. The owner part never contains ':', so no key of one owner can spell
another owner's key.

A key exists only once its task does: it is written in the enqueue's own MULTI (tasks.submit),
never before it, so no request can be answered with a task whose push then failed. The
submission WATCHes its keys and reads them first; a key taken meanwhile by a concurrent
submission makes its EXEC fail, and it reads them again (WatchError). A repeat is answered with
the first task's stored record, read in that same look.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings

from tasks.records import Submission, load_records
from tasks.validation import TaskRequest
from vokaflow.core import keys
from vokaflow.core.slots import group_tag, tagged
from vokaflow.redis_connect import as_text


def idempotency_key(owner: int | None, key: str, partition: int = 0) -> str:
    """The Redis key of an owner's idempotency key; on a cluster in the slot of the partition its
    task goes to (a keyed task without a partition key is placed by its idempotency key, so a
    repeat lands on the same partition: tasks.validation)."""
    name = keys.IDEMPOTENCY.format("system" if owner is None else int(owner), key)
    tag = group_tag(partition)
    return tagged(tag) + name if tag else name


@dataclass
class KeyLook:
    """What a submission found of its idempotency keys, WATCHed until its EXEC."""

    repeats: dict[str, str]  # task id of a repeat → task id of the first submission
    firsts: dict[str, Submission]  # the first submissions' records, from Redis
    claims: dict[str, str]  # task id of a new keyed request → its key, to write with the push


def watch_idempotency_keys(pipe, requests: list[TaskRequest], owner: int | None) -> KeyLook:
    """WATCH the requests' keys on `pipe` (a transaction pipeline not yet in MULTI) and read them.

    A key that names a task whose record is gone (expired, deleted) counts as free. A second
    request of the same batch with the same key repeats the first one of the batch (whose
    record is the batch's own: not in `firsts`)."""
    keyed = [(req, idempotency_key(owner, req.idempotency_key, req.route.partition))
             for req in requests if req.idempotency_key]
    look = KeyLook({}, {}, {})
    if not keyed:
        return look
    names = sorted({key for _, key in keyed})
    pipe.watch(*names)
    # MGET by name: a cluster pipeline refuses its mget() even for keys of one slot
    held = {key: as_text(value) for key, value in zip(names, pipe.execute_command("MGET", *names), strict=True)
            if value is not None}
    look.firsts = load_records(pipe, set(held.values()), one_slot=True)
    in_batch: dict[str, str] = {}  # key → task id of the batch's request that claims it
    for req, key in keyed:
        first = held.get(key)
        if first is not None and first in look.firsts:
            look.repeats[req.task_id] = first
        elif key in in_batch:
            look.repeats[req.task_id] = in_batch[key]
        else:
            in_batch[key] = req.task_id
            look.claims[req.task_id] = key
    return look


def write_claims(pipe, claims: dict[str, str]) -> None:
    """Add to `pipe` (in MULTI, with the push) the SET of each new task's key."""
    ttl = settings.VOKAFLOW_IDEMPOTENCY_TTL
    for task_id, key in claims.items():
        pipe.set(key, task_id, ex=ttl)

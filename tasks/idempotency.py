"""Idempotency keys: the same key within VOKAFLOW_IDEMPOTENCY_TTL returns the first task.

Keys are scoped to their owner: two users (or a user and the system) with the same key are two
different submissions. The owner part never contains ':', so no key of one owner can spell
another owner's key.
"""

from __future__ import annotations

import redis
from django.conf import settings

from tasks.validation import TaskRequest
from vokaflow.core import keys


def idempotency_key(owner: int | None, key: str) -> str:
    return keys.IDEMPOTENCY.format("system" if owner is None else int(owner), key)


def claim_idempotency_keys(r, requests: list[TaskRequest], owner: int | None) -> dict[str, str]:
    """Claim each request's key; returns {task id of a repeat: task id of the first submission}."""
    keyed = [(req, idempotency_key(owner, req.idempotency_key)) for req in requests if req.idempotency_key]
    if not keyed:
        return {}
    ttl = settings.VOKAFLOW_IDEMPOTENCY_TTL
    with r.pipeline(transaction=False) as pipe:
        for req, key in keyed:
            pipe.set(key, req.task_id, nx=True, ex=ttl)
        claimed = pipe.execute()
    repeats = [(req, key) for (req, key), won in zip(keyed, claimed, strict=False) if not won]
    if not repeats:
        return {}
    firsts = r.mget([key for _, key in repeats])
    return {req.task_id: first.decode() for (req, _), first in zip(repeats, firsts, strict=False) if first}


def release_idempotency_keys(r, requests: list[TaskRequest], owner: int | None) -> None:
    """Give back the keys of requests that were not enqueued after all."""
    claimed = [idempotency_key(owner, req.idempotency_key) for req in requests if req.idempotency_key]
    if claimed:
        try:
            r.delete(*claimed)
        except redis.RedisError:
            pass  # the broker is down: the publish failed for the same reason

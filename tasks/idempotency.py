"""Idempotency keys: the same key within VOKAFLOW_IDEMPOTENCY_TTL returns the first task."""

from __future__ import annotations

import redis
from django.conf import settings

from tasks.validation import TaskRequest
from vokaflow.core import keys


def claim_idempotency_keys(r, requests: list[TaskRequest]) -> dict[str, str]:
    """Claim each request's key; returns {task id of a repeat: task id of the first submission}."""
    keyed = [req for req in requests if req.idempotency_key]
    if not keyed:
        return {}
    ttl = settings.VOKAFLOW_IDEMPOTENCY_TTL
    with r.pipeline(transaction=False) as pipe:
        for req in keyed:
            pipe.set(keys.IDEMPOTENCY.format(req.idempotency_key), req.task_id, nx=True, ex=ttl)
        claimed = pipe.execute()
    repeats = [req for req, won in zip(keyed, claimed, strict=False) if not won]
    if not repeats:
        return {}
    firsts = r.mget([keys.IDEMPOTENCY.format(req.idempotency_key) for req in repeats])
    return {req.task_id: first.decode() for req, first in zip(repeats, firsts, strict=False) if first}


def release_idempotency_keys(r, requests: list[TaskRequest]) -> None:
    """Give back the keys of requests that were not enqueued after all."""
    claimed = [keys.IDEMPOTENCY.format(req.idempotency_key) for req in requests if req.idempotency_key]
    if claimed:
        try:
            r.delete(*claimed)
        except redis.RedisError:
            pass  # the broker is down: the publish failed for the same reason

"""Celery result backends: final states never overwritten, results bounded and kept without arguments.

Celery's extended result (`result_extended`) stores the task's name, worker, retries and queue,
which the API shows, but also its args and kwargs: a second copy of an argument list that can be
2 MiB, kept for the result TTL. The arguments live in the message (until the task ran) and, for a
task that failed for good, in its DeadLetter; the result keeps the rest.

A stored result is at most VOKAFLOW_MAX_RESULT_BYTES: a larger one is replaced by a notice
(`result_dropped`: its size and the limit), and a failure keeps its error type and the first and
last lines of its message and traceback. The state is kept: a task that succeeded did its work.

Relies on two hooks of Celery's key-value backends (private API, checked in
tests/test_contracts.py): `_get_result_meta` builds the stored dict, `_set_with_state` writes
the encoded value.
"""

from __future__ import annotations

from celery import states
from celery.backends.base import SyncBackendMixin
from celery.backends.redis import RedisBackend, SentinelBackend
from celery.exceptions import BackendStoreError
from kombu.utils.encoding import bytes_to_str

from tasks.counters import counters
from vokaflow import hotpath
from vokaflow.core.slots import tagged, task_part
from vokaflow.redis_connect import cluster_client
from vokaflow.result_store import fits_a_script, store_unless_final

NOTICE = "result_dropped"


def max_result_bytes() -> int:
    from django.conf import settings

    return settings.VOKAFLOW_MAX_RESULT_BYTES


def _shorten(text, keep: int) -> str:
    text = str(text)
    if len(text) <= keep:
        return text
    half = max(keep // 2, 1)
    return f"{text[:half]}\n… {len(text) - 2 * half} characters left out …\n{text[-half:]}"


def shrink(meta: dict, size: int, limit: int) -> dict:
    """A stored result of `size` bytes cut down to fit `limit`: the value goes, the facts stay."""
    meta = dict(meta)
    meta[NOTICE] = {"bytes": size, "limit": limit}
    keep = max(limit // 4, 64)
    result = meta.get("result")
    if meta.get("status") in states.EXCEPTION_STATES and isinstance(result, dict) and "exc_type" in result:
        meta["result"] = {**result, "exc_type": _shorten(result.get("exc_type"), 200),
                          "exc_message": [_shorten(result.get("exc_message"), keep)]}
        meta["traceback"] = _shorten(meta.get("traceback") or "", keep) or None
    else:
        meta["result"] = None
    return meta


class PlatformResults:
    """The one write path of a task's state, for Celery's Redis backends (plain and Sentinel).

    * A stored SUCCESS, FAILURE or REVOKED is never overwritten (vokaflow.result_store): the
      check and the write are one script, one round trip, instead of Celery's GET then MULTI.
    * A SUCCESS of an acks-late task run by the consuming process waits for the worker's next
      fetch script, which writes it under the same rule before the acknowledgement it carries
      (vokaflow.hotpath, vokaflow.transport): no round trip of its own.
    * The stored meta leaves out the arguments and is at most VOKAFLOW_MAX_RESULT_BYTES.
    * A final state frees the task's place in its owner's pending quota (tasks.quota).

    Celery hooks overridden (private API, checked in tests/test_contracts.py): `_store_result`,
    `_get_result_meta`, and `_set_with_state`, which `_save_group` writes through too.
    """

    expires: int | None  # Celery's backend sets both (the result TTL)
    failure_expires: int | None

    def _get_result_meta(self, *args, **kwargs):
        meta = super()._get_result_meta(*args, **kwargs)
        meta.pop("args", None)
        meta.pop("kwargs", None)
        return meta

    def _store_result(self, task_id, result, state, traceback=None, request=None, **kwargs):
        meta = self._get_result_meta(result=result, state=state, traceback=traceback, request=request)
        meta["task_id"] = bytes_to_str(task_id)
        key = bytes_to_str(self.get_key_for_task(task_id))
        value = self.encode(meta)
        if state == states.SUCCESS and hotpath.can_buffer(self.app, request) \
                and fits_a_script(fitted := self._fit(value)):
            hotpath.hold(meta["task_id"], (key, fitted, self._ttl(state)))
        else:
            try:
                self._set_with_state(key, value, state)
            except BackendStoreError as exc:
                raise BackendStoreError(str(exc), state=state, task_id=task_id) from exc
        owner = getattr(request, "vokaflow_owner", None) if request is not None else None
        if owner and state in states.READY_STATES:
            counters.finished(owner, task_id)  # its place in the owner's pending quota is free again
        return result

    def write_held(self, stored):
        """Write a SUCCESS result that was held for the next fetch after all (vokaflow.hotpath)."""
        key, value, ttl = stored
        self.ensure(store_unless_final, (self.client, key, value, ttl))

    def _set_with_state(self, key, value, state):
        value = self._fit(value)
        if isinstance(value, str) and len(value) > self._MAX_STR_VALUE_SIZE:
            raise BackendStoreError("value too large for Redis backend")
        return self.ensure(store_unless_final, (self.client, key, value, self._ttl(state)))

    def _ttl(self, state: str) -> int:
        return int((self.failure_expires if state == states.FAILURE else self.expires) or 0)

    def _fit(self, value):
        """The encoded meta, cut down to VOKAFLOW_MAX_RESULT_BYTES when it is larger."""
        limit = max_result_bytes()
        # len() of the str is the byte size: Celery's JSON is ASCII (non-ASCII is escaped).
        if not limit or len(value) <= limit:
            return value
        meta = shrink(self.decode(value), len(value), limit)
        value = self.encode(meta)
        if len(value) > limit:  # a failure whose type name alone is huge: keep only the facts
            value = self.encode({k: meta.get(k) for k in ("status", "task_id", "date_done", NOTICE)}
                                | {"result": None, "traceback": None})
        return value


class SubmitOnlyRedisBackend(PlatformResults, RedisBackend):
    """Redis result backend with the platform's write path, that does not subscribe to a task's
    result when it is sent.

    Celery's Redis backend SUBSCRIBEs to every task's result channel as it is published, in
    case the caller waits on it: one extra round trip per task, which breaks pipelined batch
    submission and piles up subscriptions in the API. `AsyncResult.get()` still subscribes
    when someone actually waits (celery.backends.asynchronous.add_pending_result).
    """

    def on_task_call(self, producer, task_id):
        pass


class BoundedSentinelBackend(PlatformResults, SentinelBackend):
    """Celery's Sentinel result backend with the platform's write path."""


class ClusterResultBackend(SyncBackendMixin, SubmitOnlyRedisBackend):
    """The platform's results on a Redis Cluster (REDIS_URL=rediscluster://…): the process's
    RedisCluster, and keys that share their task's slot (vokaflow.core.slots): a result is stored
    by its task's fetch script, with the acknowledgement. A group's or chord's keys are tagged by
    the group id, so each of Celery's chord transactions touches one slot. Results are not
    published there (a PUBLISH reaches every node: result_store.quiet), so `AsyncResult.get()`
    polls the stored state every `interval` (Celery's synchronous wait) instead of subscribing."""

    def __init__(self, *args, **kwargs):
        kwargs.pop("url", None)
        super().__init__(*args, **kwargs)

    def _create_client(self, **params):
        from django.conf import settings

        return cluster_client(settings.REDIS_URL)

    def get_key_for_task(self, task_id, key=""):
        return (bytes_to_str(self.task_keyprefix) + task_part(bytes_to_str(task_id)) + bytes_to_str(key)).encode()

    def get_key_for_group(self, group_id, key=""):
        return (bytes_to_str(self.group_keyprefix) + tagged(bytes_to_str(group_id)) + bytes_to_str(key)).encode()

    def get_key_for_chord(self, group_id, key=""):
        return (bytes_to_str(self.chord_keyprefix) + tagged(bytes_to_str(group_id)) + bytes_to_str(key)).encode()

    def mget(self, keys):
        return self.client.mget_nonatomic(keys)

"""The one rule for writing a task's state: a stored final state is never overwritten.

A task's meta (`celery-task-meta-<id>`) may be written by several parties that race: the
worker that runs it (STARTED, then SUCCESS or FAILURE), the API that revokes it (REVOKED),
a worker that finds it revoked, a redelivery after a lost worker. Once SUCCESS, FAILURE or
REVOKED is stored, later writes are dropped, so a late SUCCESS cannot undo a revoke and a late
revoke cannot undo a SUCCESS.

The check and the write are one Lua script (atomic in Redis), not a GET then a SET: between
those two calls another writer could slip in. Whoever moves result stores elsewhere (another
script, a pipeline) must carry this rule with them; tests/test_result_store.py checks it
through the Celery backend.
"""

from __future__ import annotations

import json
from typing import Any

from celery import states
from redis.exceptions import WatchError

from vokaflow.redis_connect import is_cluster_client

# The states a stored meta keeps for good (Celery's READY_STATES).
FINAL_STATES = frozenset(states.READY_STATES)

# The rule as a Lua function, so every script that stores results carries the same code (the
# worker's fetch script, vokaflow.transport, embeds it for the results it writes). Returns 1 when
# written (and published to the key's channel, as Celery's backend does), 0 when a final state
# was already stored. A stored value that is not a JSON object with a "status" (not written by
# Celery) is overwritten, as Celery would.
STORE_LUA = """
local function store_unless_final(key, value, ttl)
  -- ttl: a string (a Lua number would be formatted again for each call); '0': none
  local has_ttl = ttl and ttl ~= '0'
  -- most tasks have no stored state yet (fast ones record no STARTED): one SET NX does it
  local written
  if has_ttl then written = redis.call('SET', key, value, 'NX', 'EX', ttl)
  else written = redis.call('SET', key, value, 'NX') end
  if not written then
    local ok, meta = pcall(cjson.decode, redis.call('GET', key))
    if ok and type(meta) == 'table' then
      local status = meta['status']
      if status == 'SUCCESS' or status == 'FAILURE' or status == 'REVOKED' then
        return 0
      end
    end
    if has_ttl then redis.call('SET', key, value, 'EX', ttl) else redis.call('SET', key, value) end
  end
  redis.call('PUBLISH', key, value)
  return 1
end
"""
# KEYS[1]: the meta key. ARGV[1]: the new meta (JSON), ARGV[2]: its TTL in whole seconds (0: none).
STORE_UNLESS_FINAL = STORE_LUA + "return store_unless_final(KEYS[1], ARGV[1], ARGV[2])"


def quiet(script: str) -> str:
    """`script` without the PUBLISH of each stored meta, for a Redis Cluster: there a PUBLISH goes
    to every node over the cluster bus (several µs of CPU on each, per task), so results are not
    published there and `AsyncResult.get()` polls instead (tasks.backends.ClusterResultBackend)."""
    quieted = script.replace(PUBLISH_LINE, "")
    assert quieted != script, "the script publishes no more: quiet() has nothing to take out"
    return quieted


PUBLISH_LINE = "  redis.call('PUBLISH', key, value)\n"
_scripts: dict[bool, Any] = {}  # a registered script per layout (quiet on a cluster)


# A meta larger than this is written without Lua: a script hashes every byte of every string it
# is handed (2 ms for 1 MiB, measured), and every client of the fleet waits behind it.
SCRIPT_VALUE_LIMIT = 16 * 1024


def fits_a_script(value: str | bytes) -> bool:
    return len(value) <= SCRIPT_VALUE_LIMIT


def store_unless_final(client, key: str | bytes, value: str | bytes, ttl: float | None) -> bool:
    """Write a task meta unless a final state is stored there; True when it was written.
    One round trip (EVALSHA; the script is loaded on first use); a large meta takes an
    optimistic transaction instead (WATCH, GET, MULTI SET PUBLISH EXEC), the same rule."""
    cluster = is_cluster_client(client)
    if not fits_a_script(value):
        return _store_large(client, key, value, ttl, publish=not cluster)
    script = _scripts.get(cluster)
    if script is None:
        script = _scripts[cluster] = client.register_script(quiet(STORE_UNLESS_FINAL) if cluster
                                                            else STORE_UNLESS_FINAL)
    return bool(script(keys=[key], args=[value, int(ttl or 0)], client=client))


def _is_final(stored: bytes | None) -> bool:
    try:
        meta = json.loads(stored) if stored else None
    except ValueError:
        return False  # not written by Celery: overwritten, as the script does
    return isinstance(meta, dict) and meta.get("status") in FINAL_STATES


def _store_large(client, key, value, ttl, publish: bool = True) -> bool:
    with client.pipeline() as pipe:
        while True:
            try:
                pipe.watch(key)
                if _is_final(pipe.get(key)):
                    return False
                pipe.multi()
                pipe.set(key, value, ex=int(ttl) if ttl else None)
                if publish:
                    pipe.publish(key, value)
                pipe.execute()
                return True
            except WatchError:  # written meanwhile: look again
                continue

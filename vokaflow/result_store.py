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

from celery import states

# The states a stored meta keeps for good (Celery's READY_STATES).
FINAL_STATES = frozenset(states.READY_STATES)

# The rule as a Lua function, so every script that stores results carries the same code (the
# worker's fetch script, vokaflow.transport, embeds it for the results it writes). Returns 1 when
# written (and published to the key's channel, as Celery's backend does), 0 when a final state
# was already stored. A stored value that is not a JSON object with a "status" (not written by
# Celery) is overwritten, as Celery would.
STORE_LUA = """
local function store_unless_final(key, value, ttl)
  local current = redis.call('GET', key)
  if current then
    local ok, meta = pcall(cjson.decode, current)
    if ok and type(meta) == 'table' then
      local status = meta['status']
      if status == 'SUCCESS' or status == 'FAILURE' or status == 'REVOKED' then
        return 0
      end
    end
  end
  if ttl and ttl ~= '0' then  -- a string: a Lua number would be formatted again for the call
    redis.call('SET', key, value, 'EX', ttl)
  else
    redis.call('SET', key, value)
  end
  redis.call('PUBLISH', key, value)
  return 1
end
"""
# KEYS[1]: the meta key. ARGV[1]: the new meta (JSON), ARGV[2]: its TTL in whole seconds (0: none).
STORE_UNLESS_FINAL = STORE_LUA + "return store_unless_final(KEYS[1], ARGV[1], ARGV[2])"

_script = None


def store_unless_final(client, key: str | bytes, value: str | bytes, ttl: float | None) -> bool:
    """Write a task meta unless a final state is stored there; True when it was written.
    One round trip (EVALSHA; the script is loaded on first use)."""
    global _script
    if _script is None:
        _script = client.register_script(STORE_UNLESS_FINAL)
    return bool(_script(keys=[key], args=[value, int(ttl or 0)], client=client))

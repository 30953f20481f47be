"""Distributed locks on one Redis primary, with owner-checked release and fencing tokens.

Importable without Django: pass a redis client, or let it connect to REDIS_URL.

* acquire: one Lua script that sets the key only when free (the effect of ``SET key NX PX``) and
  hands out a fencing token from a per-key counter that only grows, so a resource can refuse a
  writer whose lock has since passed to someone else;
* release and extend: Lua scripts that act only while the stored token is the caller's, so a
  slow holder whose lock expired cannot delete or prolong the next holder's lock;
* blocking acquire: polls with jitter for the first 100 ms (short holds hand over within a
  millisecond or two), then waits on a pub/sub message sent at release (or the holder's
  expiry), so a long wait returns as soon as the lock is free; it gives up at its deadline;
* a watchdog thread that extends the lock every third of its TTL while the holder lives.

Keys: ``vokaflow:lock:<key>`` holds ``<token> <JSON record>``, the record being {owner,
acquired_at, expires_at, fencing_token} (epoch seconds, from the Redis server's clock): the token
comes first so release compares a prefix without decoding JSON. ``vokaflow:fence:<key>`` counts;
it expires VOKAFLOW_FENCE_TTL (7 days) after the last acquire or extend, or at the end of the
lock's own TTL if that is later, so it keeps increasing for as long as any holder could still
write with a token it was given, and is gone a week after a key was last used.
"""

from __future__ import annotations

import functools
import json
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from vokaflow.core import keys
from vokaflow.core.errors import Conflict, NotFound
from vokaflow.redis_connect import client_from_url, is_cluster_client

POLL_START, POLL_MAX = 0.001, 0.016  # seconds between tries while a wait is young
POLL_PHASE = 0.1  # seconds of polling before a waiter subscribes to the release message
DEFAULT_FENCE_TTL = 7 * 24 * 3600  # seconds; the environment's VOKAFLOW_FENCE_TTL overrides it

# KEYS: lock, fence counter. ARGV: token, ttl ms, owner, fence ttl ms.
# Returns {1, fencing token, acquired ms, expires ms} when acquired, {0, holder value, holder pttl ms} when held.
# The counter's TTL is pushed out to max(lock ttl, fence ttl) on every acquire: a counter that
# expired and restarted at 1 would hand out tokens a fenced store has already seen.
_ACQUIRE = """
local held = redis.call('GET', KEYS[1])
if held then return {0, held, redis.call('PTTL', KEYS[1])} end
local fence = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], math.max(tonumber(ARGV[2]), tonumber(ARGV[4])))
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local value = ARGV[1] .. ' ' .. cjson.encode({owner = ARGV[3], fencing_token = fence,
                            acquired_at = now_ms / 1000, expires_at = (now_ms + tonumber(ARGV[2])) / 1000})
redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
return {1, fence, now_ms, now_ms + tonumber(ARGV[2])}
"""

# KEYS: lock. ARGV: token, release channel. Returns 1 released, 0 held by another, -1 free.
_RELEASE = """
local held = redis.call('GET', KEYS[1])
if not held then return -1 end
if string.sub(held, 1, #ARGV[1] + 1) ~= ARGV[1] .. ' ' then return 0 end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], '1')
return 1
"""

# KEYS: lock, fence counter. ARGV: token, ttl ms, fence ttl ms.
# Returns {1, record} extended, {0} held by another, {-1} free.
# An extended lock may outlive the counter's TTL, so the counter is kept at least as long.
_EXTEND = """
local held = redis.call('GET', KEYS[1])
if not held then return {-1} end
if string.sub(held, 1, #ARGV[1] + 1) ~= ARGV[1] .. ' ' then return {0} end
local lease = cjson.decode(string.sub(held, #ARGV[1] + 2))
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
lease.expires_at = (now_ms + tonumber(ARGV[2])) / 1000
local value = cjson.encode(lease)
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. value, 'PX', ARGV[2])
if redis.call('PTTL', KEYS[2]) < math.max(tonumber(ARGV[2]), tonumber(ARGV[3])) then
  redis.call('PEXPIRE', KEYS[2], math.max(tonumber(ARGV[2]), tonumber(ARGV[3])))
end
return {1, value}
"""


class LockError(Conflict):
    """A lock operation that did not happen because of who holds the lock (HTTP 409)."""


class LockNotAcquired(LockError):
    """The lock is held by someone else (and waiting, if asked for, did not help)."""

    def __init__(self, key: str, holder: dict | None, waited: float = 0.0):
        self.key, self.holder, self.waited = key, holder, waited
        who = f"held by {holder.get('owner')!r} until {holder.get('expires_at')}" if holder else "held"
        super().__init__(f"lock {key!r} is {who}" + (f"; gave up after waiting {waited:.2f} s" if waited else ""),
                         key=key, holder=holder)


class LockLost(LockError):
    """The caller's token no longer holds the lock: it expired and may belong to another now."""

    def __init__(self, key: str, holder: dict | None = None):
        self.key, self.holder = key, holder
        now = f"now held by {holder.get('owner')!r}" if holder else "now free"
        super().__init__(f"lock {key!r} was lost (expired before release or extend); {now}", key=key, holder=holder)


class LockNotHeld(NotFound):
    """Nobody holds the lock (HTTP 404)."""

    def __init__(self, key: str):
        self.key = key
        super().__init__(f"lock {key!r} is not held by anyone", key=key)


@dataclass(frozen=True)
class Lease:
    """A successful acquire: what the holder needs to extend, release and fence its writes."""

    key: str
    token: str
    owner: str
    fencing_token: int
    acquired_at: float
    expires_at: float

    @classmethod
    def from_record(cls, key: str, token: str, raw: bytes | str) -> Lease:
        data = json.loads(raw)
        return cls(key=key, token=token, owner=data["owner"], fencing_token=int(data["fencing_token"]),
                   acquired_at=float(data["acquired_at"]), expires_at=float(data["expires_at"]))


@functools.cache
def _hostname() -> str:
    return socket.gethostname()


def default_owner() -> str:
    return f"{_hostname()}:{os.getpid()}:{threading.get_ident()}"


@functools.cache
def _default_client(url: str, sentinel_master: str | None) -> redis.Redis:
    return client_from_url(url, sentinel_master=sentinel_master)


def client_for(client: redis.Redis | None) -> redis.Redis:
    return client or _default_client(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
                                     os.environ.get("VOKAFLOW_REDIS_SENTINEL_MASTER"))


class _Scripts:
    """Lua scripts registered once per client (sent by EVALSHA, loaded on first use)."""

    def __init__(self, client: redis.Redis):
        self.acquire = client.register_script(_ACQUIRE)
        self.release = client.register_script(_RELEASE)
        self.extend = client.register_script(_EXTEND)


_scripts: dict[int, _Scripts] = {}


def _scripts_for(client: redis.Redis) -> _Scripts:
    found = _scripts.get(id(client))
    if found is None:
        found = _scripts[id(client)] = _Scripts(client)
    return found


def fence_ttl_ms() -> int:
    """How long a fencing counter outlives its last use: VOKAFLOW_FENCE_TTL seconds from the
    environment (this module needs no Django, like REDIS_URL above), 7 days by default."""
    return int(float(os.environ.get("VOKAFLOW_FENCE_TTL") or DEFAULT_FENCE_TTL) * 1000)


def names(key: str, client: redis.Redis) -> tuple[str, str]:
    """The Redis names of lock `key` and of its fencing counter on `client`'s layout."""
    return keys.lock_keys(_check_key(key), is_cluster_client(client))


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not key or len(key) > 200:
        raise ValueError("a lock key must be a non-empty string of at most 200 characters")
    return key


def try_acquire(key: str, ttl: float, *, owner: str | None = None,
                client: redis.Redis | None = None) -> tuple[Lease | None, dict | None, float]:
    """One attempt: (lease, None, 0) when acquired, else (None, holder info, holder's seconds left)."""
    client = client_for(client)
    ttl_ms = max(1, int(ttl * 1000))
    token = os.urandom(16).hex()
    owner = owner or default_owner()
    result = _scripts_for(client).acquire(keys=list(names(key, client)),
                                          args=[token, ttl_ms, owner, fence_ttl_ms()])
    if result[0] == 1:
        return Lease(key, token, owner, int(result[1]), result[2] / 1000, result[3] / 1000), None, 0.0
    return None, _record(result[1]), max(0, int(result[2])) / 1000


def acquire(key: str, ttl: float = 30.0, *, wait: float = 0.0, owner: str | None = None,
            client: redis.Redis | None = None) -> Lease:
    """Acquire `key` for `ttl` seconds, waiting up to `wait` seconds; LockNotAcquired otherwise."""
    if ttl <= 0:
        raise ValueError("ttl must be positive")
    client = client_for(client)
    lease, holder, holder_left = try_acquire(key, ttl, owner=owner, client=client)
    if lease or wait <= 0:
        if lease:
            return lease
        raise LockNotAcquired(key, holder)
    started = time.monotonic()
    deadline = started + wait
    delay, pubsub = POLL_START, None
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LockNotAcquired(key, holder, time.monotonic() - started)
            if time.monotonic() - started < POLL_PHASE:
                # Short holds (the common case under contention): jittered polling hands the
                # lock over within a millisecond or two, like redis-py's Lock.
                time.sleep(min(remaining, delay * random.uniform(0.5, 1.5)))
                delay = min(delay * 2, POLL_MAX)
            elif pubsub is None:
                # A long hold: wait for the release message instead of polling. Subscribe
                # first, then try again below, so a release in between is not missed.
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(keys.LOCK_RELEASED + key)
            else:
                # A release publishes; an expiry does not, so wake up when the holder's TTL ends too.
                pubsub.get_message(timeout=min(remaining, max(holder_left, 0.001) + 0.001))
            lease, holder, holder_left = try_acquire(key, ttl, owner=owner, client=client)
            if lease:
                return lease
    finally:
        if pubsub is not None:
            pubsub.close()


def release(lease: Lease, *, client: redis.Redis | None = None) -> None:
    """Release a lease; LockLost when it is no longer ours (expired, maybe held by another)."""
    client = client_for(client)
    outcome = _scripts_for(client).release(keys=[names(lease.key, client)[0]],
                                           args=[lease.token, keys.LOCK_RELEASED + lease.key])
    if outcome != 1:
        raise LockLost(lease.key, holder(lease.key, client=client))


def release_by_token(key: str, token: str, *, client: redis.Redis | None = None) -> None:
    """Release `key` if `token` holds it; LockLost when another token does, LockNotHeld when nobody does."""
    client = client_for(client)
    outcome = int(_scripts_for(client).release(keys=[names(key, client)[0]],
                                               args=[token, keys.LOCK_RELEASED + key]))
    if outcome == 0:
        raise LockLost(key, holder(key, client=client))
    if outcome == -1:
        raise LockNotHeld(key)


def extend(lease: Lease, ttl: float, *, client: redis.Redis | None = None) -> Lease:
    """Push the expiry to now + ttl; LockLost when the lease is no longer ours."""
    return extend_by_token(lease.key, lease.token, ttl, client=client)


def extend_by_token(key: str, token: str, ttl: float, *, client: redis.Redis | None = None) -> Lease:
    client = client_for(client)
    result = _scripts_for(client).extend(keys=list(names(key, client)),
                                         args=[token, max(1, int(ttl * 1000)), fence_ttl_ms()])
    if result[0] != 1:
        raise LockLost(key, holder(key, client=client))
    return Lease.from_record(key, token, result[1])


def holder(key: str, *, client: redis.Redis | None = None) -> dict | None:
    """Who holds `key` and until when (epoch seconds), without the token; None when free."""
    client = client_for(client)
    raw = client.get(names(key, client)[0])
    return None if raw is None else _record(raw)


def _record(value: bytes | str) -> dict:
    """The stored record without the token in front of it (a holder's token is its secret)."""
    text = value.decode() if isinstance(value, bytes) else value
    return json.loads(text.split(" ", 1)[1])


class RedisLock:
    """Context manager around acquire/release, with an optional watchdog.

        with RedisLock("reports:daily", ttl=30, wait=5, watchdog=True) as lease:
            write(report, fencing_token=lease.fencing_token)

    With the watchdog, the lock is extended every ttl/3 while the block runs; if an extension
    fails (the lock was lost), `lost` is set and leaving the block raises LockLost.
    """

    def __init__(self, key: str, ttl: float = 30.0, *, wait: float = 0.0, owner: str | None = None,
                 watchdog: bool = False, client: redis.Redis | None = None):
        self.key, self.ttl, self.wait, self.owner = _check_key(key), ttl, wait, owner
        self.client = client_for(client)
        self.watchdog = watchdog
        self.lease: Lease | None = None
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> Lease:
        self.lease = acquire(self.key, self.ttl, wait=self.wait, owner=self.owner, client=self.client)
        if self.watchdog:
            self._stop.clear()
            self._thread = threading.Thread(target=self._keep_alive, name=f"lock-watchdog:{self.key}", daemon=True)
            self._thread.start()
        return self.lease

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        lease, self.lease = self.lease, None
        if lease is not None:
            release(lease, client=self.client)

    def _keep_alive(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            lease = self.lease
            if lease is None:  # released meanwhile
                return
            try:
                extend(lease, self.ttl, client=self.client)
            except LockLost:
                self.lost.set()
                return
            except redis.RedisError:
                continue  # Redis briefly away: try again next interval, while the TTL lasts

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


def execute_with_lock(key: str, fn: Callable[..., Any], *args, ttl: float = 30.0, wait: float = 0.0,
                      watchdog: bool = True, client: redis.Redis | None = None, **kwargs) -> Any:
    """Run fn(*args, **kwargs) while holding `key`; LockNotAcquired when it could not be had."""
    with RedisLock(key, ttl, wait=wait, watchdog=watchdog, client=client):
        return fn(*args, **kwargs)

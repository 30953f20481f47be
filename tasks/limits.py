"""Fleet-wide limits: a rate (`N/s`, `N/m`, `N/h`) and/or a concurrency, per limit or per value
of one of the task's arguments (`per`), enforced across every worker of every host.

How a limited task starts, or waits without holding a slot:
- when its worker is about to run it, one script in the limit's slot (every key of one limit
  instance shares the tag `{lim:<name>|<key>}`) either takes its place (a concurrency lease, a
  rate start) or puts the task in the instance's waiting room: a sorted set ordered by priority,
  then enqueue time, and the message in a hash beside it. The task is then acknowledged and its
  slot runs something else. It may start only when no better-placed task of the instance waits,
  so a waiting task keeps its place: nothing newer or of a lower priority overtakes it;
- every worker, about twice a second, and a task's end at once, let out as many of the best
  waiting tasks as can start now (the room: concurrency minus running and just let out; the
  starts the rate allows in the next half second) to the front of their queues;
- rate: GCRA with a burst of one, so at most `rate × T + 1` tasks start in any window of T s;
- concurrency: a place is a lease in a sorted set, taken when the task starts and given back when
  it ends, whatever the outcome; each worker renews the leases of what it runs every second, so
  the place of a SIGKILLed worker frees after VOKAFLOW_LIMIT_LEASE seconds (15) at most;
- waiting is not a retry: no retry count, no delivery count; `GET tasks/{id}/` says `held_by`.

Definitions come from the code (`platform_task(rate_limit=…, concurrency=…, limit_per=…)`,
`declare_limit`) and from the API (`PUT limits/{name}`, kept in the hash `vokaflow:limits`, which
wins until `DELETE limits/{name}`); workers read the API's every second.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import re
import threading
import time
from dataclasses import asdict, dataclass, field

from django.conf import settings

from vokaflow.core import keys
from vokaflow.core.autoscale import READY_AT_HEADER
from vokaflow.core.errors import BadRequest, NotFound
from vokaflow.core.priorities import Priority
from vokaflow.redis import get_redis
from vokaflow.redis_connect import as_text

logger = logging.getLogger(__name__)

RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*([smh])\s*$")
UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
MAX_CONCURRENCY = 1_000_000
MOVED_FOR = 5.0  # seconds a task let out counts against the room until it starts (else it comes back)
LET_OUT_AHEAD = 0.5  # seconds of a rate's starts let out at once
DEFINITIONS_FOR = 1.0  # seconds a worker keeps the API's definitions before reading them again


class LimitInvalid(BadRequest):
    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}", errors={field_name: [message]})


class LimitNotFound(NotFound):
    def __init__(self, name: str):
        super().__init__(f"no limit named {name!r}")


@dataclass(frozen=True)
class Limit:
    name: str
    rate: str | None = None  # "20/s"
    concurrency: int | None = None
    per: str | None = None  # the argument whose value splits it
    source: str = "code"  # or "api"

    @property
    def interval(self) -> float:
        """Seconds between two starts at the rate (0: no rate)."""
        if not self.rate:
            return 0.0
        count, unit = parse_rate(self.rate)
        return UNITS[unit] / count


@dataclass(frozen=True)
class Instance:
    """One limit for one value of its `per` argument (or the whole limit)."""

    limit: Limit
    key: str = ""

    @property
    def tag(self) -> str:
        return keys.limit_tag(self.limit.name, self.key)

    def names(self) -> list[str]:
        return [template.format(self.tag) for template in (keys.LIMIT_RUNNING, keys.LIMIT_TAT, keys.LIMIT_WAITING,
                                                           keys.LIMIT_MESSAGES, keys.LIMIT_MOVED, keys.LIMIT_PLAN)]


def parse_rate(text: str) -> tuple[float, str]:
    match = RATE.match(text) if isinstance(text, str) else None
    if not match or float(match.group(1)) <= 0 or float(match.group(1)) > 1_000_000:
        raise ValueError("a rate such as 20/s, 100/m or 5/h (more than 0, at most 1000000 per unit)")
    return float(match.group(1)), match.group(2)


def check_limit(name: str, rate, concurrency, per) -> Limit:
    """A limit from untrusted values; LimitInvalid names the bad field."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.:-]{1,200}", name):
        raise LimitInvalid("name", "1 to 200 letters, digits, _ . : -")
    if rate is not None:
        try:
            parse_rate(rate)
        except ValueError as exc:
            raise LimitInvalid("rate", str(exc)) from None
    if concurrency is not None and (isinstance(concurrency, bool) or not isinstance(concurrency, int)
                                    or not 1 <= concurrency <= MAX_CONCURRENCY):
        raise LimitInvalid("concurrency", f"a whole number from 1 to {MAX_CONCURRENCY}")
    if rate is None and concurrency is None:
        raise LimitInvalid("rate", "give a rate, a concurrency or both")
    if per is not None and (not isinstance(per, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,99}", per)):
        raise LimitInvalid("per", "the name of one of the task's arguments")
    return Limit(name, " ".join(rate.split()).replace(" ", "") if rate else None, concurrency, per)


# Definitions

_declared: dict[str, Limit] = {}


def declare_limit(name: str, *, rate: str | None = None, concurrency: int | None = None,
                  per: str | None = None) -> Limit:
    """A limit in code (shared by the tasks that name it in `limits=[...]`)."""
    limit = check_limit(name, rate, concurrency, per)
    _declared[name] = limit
    return limit


def _api_definitions() -> dict[str, Limit]:
    raw = get_redis().hgetall(keys.LIMITS)
    out = {}
    for name, value in raw.items():
        data = json.loads(value)
        out[as_text(name)] = Limit(as_text(name), data.get("rate"), data.get("concurrency"), data.get("per"), "api")
    return out


class _Definitions:
    """The API's definitions over the code's, re-read at most every DEFINITIONS_FOR seconds."""

    def __init__(self):
        self._lock = threading.Lock()
        self._read_at = -math.inf
        self._api: dict[str, Limit] = {}
        os.register_at_fork(after_in_child=self._after_fork)  # never a lock held by the parent's thread

    def _after_fork(self) -> None:
        self._lock = threading.Lock()

    def get(self) -> dict[str, Limit]:
        if time.monotonic() - self._read_at > DEFINITIONS_FOR:
            with self._lock:
                if time.monotonic() - self._read_at > DEFINITIONS_FOR:
                    try:
                        self._api = _api_definitions()
                    except Exception as exc:  # Redis away: the last ones read
                        logger.warning("could not read the limits' definitions: %s", exc)
                    self._read_at = time.monotonic()
        return {**_declared, **self._api}

    def forget(self) -> None:
        self._read_at = -math.inf


definitions = _Definitions()


def task_limit_names(task) -> list[str]:
    return list(getattr(task, "vokaflow_limits", ()) or ())


def instances_for(task, args, kwargs) -> list[Instance]:
    """The limit instances a run of `task` with these arguments takes a place in (sorted by name:
    every worker takes several in the same order)."""
    names = task_limit_names(task)
    if not names:
        return []
    known = definitions.get()
    out = []
    for name in sorted(names):
        limit = known.get(name)
        if limit is None:
            continue
        key = ""
        if limit.per:
            value = argument_value(task, args, kwargs, limit.per)
            key = "" if value is None else str(value)
        out.append(Instance(limit, key))
    return out


def argument_value(task, args, kwargs, name: str):
    """The value of argument `name` of a call, or None when it is not given."""
    try:
        bound = inspect.signature(task.run).bind_partial(*(args or ()), **(kwargs or {}))
    except TypeError:
        return (kwargs or {}).get(name)
    return bound.arguments.get(name)


def check_submission(task, args, kwargs, error) -> None:
    """A task whose limit is split `per` an argument needs that argument, as a scalar."""
    for name in task_limit_names(task):
        limit = definitions.get().get(name)
        if limit is None or not limit.per:
            continue
        value = argument_value(task, args, kwargs, limit.per)
        if value is None or isinstance(value, (list, dict)):
            where = "kwargs" if limit.per in (kwargs or {}) or value is None else "args"
            raise error(where, f"argument {limit.per!r} is required and must be a string, number or boolean: "
                               f"limit {name!r} is counted per value of it")


# The scripts. KEYS of an instance: running, tat, waiting, messages, moved, plan (one tag). Times
# come from Redis's own clock (TIME), in whole microseconds for the rate: every host's workers count
# on one clock, and the rate's arithmetic is exact (a double holds today's epoch in µs exactly;
# printed with %.0f, not tostring's 14 digits).
_NOW = """
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now = now_us / 1000000
"""

# ARGV: concurrency (0: none), interval µs (0: none), task id, lease s, message, place, idle ttl ms,
# longest early wait µs. Returns {1} when it may start (its place taken), {2, µs to wait} when it
# is early for the rate by at most that wait (nothing changed), {0, reason} when it was put in the
# waiting room. Tasks let out (in `moved`) hold their room: a newcomer counts them as running,
# and waits for the starts planned for them.
_START = _NOW + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local conc, interval = tonumber(ARGV[1]), tonumber(ARGV[2])
local let_out = redis.call('ZSCORE', KEYS[5], ARGV[3])
local reserved = redis.call('ZCARD', KEYS[5]) - (let_out and 1 or 0)
local tat = tonumber(redis.call('GET', KEYS[2]) or '0')
if not let_out then tat = math.max(tat, tonumber(redis.call('GET', KEYS[6]) or '0')) end
local reason = nil
if conc > 0 and redis.call('ZCARD', KEYS[1]) + reserved >= conc then reason = 'concurrency' end
if not reason then
  local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
  if first[2] and tonumber(first[2]) < tonumber(ARGV[6]) and first[1] ~= ARGV[3] then reason = 'queue' end
end
if not reason and interval > 0 and now_us < tat then
  if tat - now_us <= tonumber(ARGV[8]) then return {2, string.format('%.0f', tat - now_us)} end
  reason = 'rate'
end
redis.call('ZREM', KEYS[5], ARGV[3])
redis.call('HDEL', KEYS[4], 'm:' .. ARGV[3])  -- its let-out copy: this delivery is the task now
if not reason then
  redis.call('ZREM', KEYS[3], ARGV[3])
  redis.call('HDEL', KEYS[4], ARGV[3])
  if conc > 0 then redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[3]) end
  if interval > 0 then
    local own = tonumber(redis.call('GET', KEYS[2]) or '0')
    redis.call('SET', KEYS[2], string.format('%.0f', math.max(own, now_us) + interval))
  end
else
  redis.call('ZADD', KEYS[3], ARGV[6], ARGV[3])
  redis.call('HSET', KEYS[4], ARGV[3], ARGV[6] .. '\\n' .. ARGV[5])
end
-- The rate's state expires when idle; what holds tasks (running, waiting, let out) never does
-- (an empty sorted set or hash is gone by itself).
redis.call('PEXPIRE', KEYS[2], ARGV[7])
redis.call('PEXPIRE', KEYS[6], ARGV[7])
for _, i in ipairs({1, 3, 4, 5}) do redis.call('PERSIST', KEYS[i]) end
if reason then return {0, reason} end
return {1}
"""

# ARGV: concurrency, interval µs, ahead µs, most, moved for (s), idle ttl ms. Lets out the best
# waiting tasks that can start: the room the concurrency leaves (minus those let out and not
# started yet) and, for a rate, one per interval from the later of now, the rate's next start and
# the end of what was planned before, up to `ahead` from now. Returns {id, message, push at µs}
# triples, best first; each message stays in the hash until its push is done (push_out), and one
# whose push never came back goes back to its place after `moved for`.
_LET_OUT = _NOW + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now - tonumber(ARGV[5]))) do
  redis.call('ZREM', KEYS[5], id)
  local kept = redis.call('HGET', KEYS[4], 'm:' .. id)
  if kept then  -- let out, and its push never said it was done: back to its place
    redis.call('HDEL', KEYS[4], 'm:' .. id)
    if redis.call('HSETNX', KEYS[4], id, kept) == 1 then
      redis.call('ZADD', KEYS[3], string.sub(kept, 1, string.find(kept, '\\n') - 1), id)
    end
  end
end
local room = tonumber(ARGV[4])
local conc, interval = tonumber(ARGV[1]), tonumber(ARGV[2])
if conc > 0 then room = math.min(room, conc - redis.call('ZCARD', KEYS[1]) - redis.call('ZCARD', KEYS[5])) end
local first = now_us
if interval > 0 then
  first = math.max(now_us, tonumber(redis.call('GET', KEYS[2]) or '0'), tonumber(redis.call('GET', KEYS[6]) or '0'))
  room = math.min(room, math.floor((now_us + tonumber(ARGV[3]) - first) / interval) + 1)
end
if room <= 0 then return {} end
local out = {}
local n = 0
for _, id in ipairs(redis.call('ZRANGE', KEYS[3], 0, room - 1)) do
  redis.call('ZREM', KEYS[3], id)
  redis.call('ZADD', KEYS[5], now, id)
  local kept = redis.call('HGET', KEYS[4], id)
  if kept then
    -- Kept as 'm:<id>' until its push is done: the field <id> is free for the message of a
    -- later wait of the same task (it may be fetched and sent to wait again before that).
    redis.call('HDEL', KEYS[4], id)
    redis.call('HSET', KEYS[4], 'm:' .. id, kept)
    table.insert(out, id)
    table.insert(out, string.sub(kept, string.find(kept, '\\n') + 1))
    table.insert(out, string.format('%.0f', first + n * interval))
    n = n + 1
  end
end
if interval > 0 and n > 0 then
  redis.call('SET', KEYS[6], string.format('%.0f', first + n * interval), 'PX', ARGV[6])
end
return out
"""

EARLY_WAIT = 0.02  # seconds a task may wait in its slot for its rate's next start (pushes jitter)


def _idle_ttl_ms(instance: Instance) -> int:
    return int(1000 * max(60.0, 4 * settings.VOKAFLOW_LIMIT_LEASE, 4 * instance.limit.interval))


def _interval_us(instance: Instance) -> int:
    """The rate's interval in whole microseconds, rounded up (never a start too many)."""
    return math.ceil(instance.limit.interval * 1_000_000) if instance.limit.interval else 0


def place(priority: int, enqueued_at: float) -> float:
    """Where a task stands among those waiting for one limit: priority first, then enqueue time."""
    return priority * 1e11 + enqueued_at


def try_start(r, instance: Instance, task_id: str, message: str, priority: int, enqueued_at: float) -> str | None:
    """Take a place in `instance`; None when taken, else why the task now waits (it is in the
    waiting room). A task early for its rate by at most EARLY_WAIT (and half an interval) waits
    that long first, at most three times; then it waits in the room."""
    interval = _interval_us(instance)
    early = int(min(EARLY_WAIT * 1_000_000, interval / 2))

    def call(early_wait: int):
        return r.eval(_START, 6, *instance.names(), instance.limit.concurrency or 0, interval, task_id,
                      settings.VOKAFLOW_LIMIT_LEASE, message, place(priority, enqueued_at), _idle_ttl_ms(instance),
                      early_wait)

    reply = call(early)
    for _ in range(3):
        if int(reply[0]) != 2:
            break
        time.sleep(int(reply[1]) / 1_000_000)
        reply = call(early)
    if int(reply[0]) == 2:  # still early: wait in the room
        reply = call(0)
    if int(reply[0]) == 1:
        return None
    r.sadd(keys.LIMITS_WAITING, instance_id(instance))
    return as_text(reply[1])


def give_back(r, instance: Instance, task_id: str) -> None:
    if instance.limit.concurrency:
        r.zrem(keys.LIMIT_RUNNING.format(instance.tag), task_id)


def renew(r, leases: list[tuple[Instance, str]]) -> None:
    """Extend the leases of running tasks (instance, task id) by VOKAFLOW_LIMIT_LEASE, from this
    host's clock (the scripts end leases by Redis's: hosts' clocks must agree within the lease)."""
    until = time.time() + settings.VOKAFLOW_LIMIT_LEASE
    with r.pipeline(transaction=False) as pipe:
        for instance, task_id in leases:
            if instance.limit.concurrency:
                pipe.zadd(keys.LIMIT_RUNNING.format(instance.tag), {task_id: until}, xx=True)
        pipe.execute()


def instance_id(instance: Instance) -> str:
    return json.dumps([instance.limit.name, instance.key])


LET_OUT_MOST = 50  # tasks one let-out script takes out (about 15 µs of Redis each: a call stays under 1 ms)


def let_out(r, instance: Instance, most: int = LET_OUT_MOST, ahead: float = 0.0) -> list[tuple[float, str, str]]:
    """Take the waiting tasks of `instance` that can start by `ahead` seconds from now out of its
    room: (when to push, by Redis's clock, task id, message), best first. push_out pushes them."""
    reply = r.eval(_LET_OUT, 6, *instance.names(), instance.limit.concurrency or 0, _interval_us(instance),
                   int(ahead * 1_000_000), most, MOVED_FOR, _idle_ttl_ms(instance))
    return [(int(reply[i + 2]) / 1_000_000, as_text(reply[i]), as_text(reply[i + 1]))
            for i in range(0, len(reply), 3)]


def push_out(r, instance: Instance, planned: list[tuple[float, str, str]]) -> None:
    """Push each let-out task to the front of its queue at its time (a rate's are spaced by its
    interval: the pusher sleeps between them, no task slot does), then forget its kept message."""
    from vokaflow.transport import push

    if not planned:
        return
    # The push times are Redis's; this host's clock only measures the spacing from the first.
    start, first = time.monotonic(), min(at for at, _, _ in planned)
    for at, task_id, message in sorted(planned):
        time.sleep(max(0.0, at - first - (time.monotonic() - start)))
        envelope = json.loads(message)
        queue = envelope["properties"]["delivery_info"]["routing_key"]
        if isinstance(envelope.get("headers"), dict):
            # ready to run from now on: the autoscaler counts its wait from here, not from its enqueue
            envelope["headers"][READY_AT_HEADER] = round(time.time(), 3)
            message = json.dumps(envelope)
        push(r, {queue: [message]}, front=True)
        r.hdel(keys.LIMIT_MESSAGES.format(instance.tag), f"m:{task_id}")


def let_out_now(r, instance: Instance) -> int:
    """At a task's end: the places it freed go to the best waiting tasks at once (a limit with a
    rate is paced by the workers' pollers instead)."""
    if instance.limit.interval:
        return 0
    moved = 0
    for _ in range(20):  # a large concurrency freed at once: a few calls of LET_OUT_MOST
        planned = let_out(r, instance)
        push_out(r, instance, planned)
        moved += len(planned)
        if len(planned) < LET_OUT_MOST:
            break
    return moved


def let_out_all(r) -> int:
    """One pass over every instance with waiting tasks (each worker, about twice a second): the
    starts of the next LET_OUT_AHEAD seconds are let out and pushed at their times."""
    known = definitions.get()
    planned: list[tuple[float, str, str, Instance]] = []
    for raw in r.smembers(keys.LIMITS_WAITING):
        name, key = json.loads(raw)
        limit = known.get(name)
        if limit is None:  # the limit went away: let its waiting tasks out, unlimited now
            limit = Limit(name, concurrency=MAX_CONCURRENCY)
        instance = Instance(limit, key)
        planned += [(at, task_id, message, instance) for at, task_id, message in
                    let_out(r, instance, ahead=LET_OUT_AHEAD)]
        # Forgotten only once nothing of it waits or is let out and not started: a let-out task
        # whose push never came goes back to its place by a later let-out of this instance.
        holding = [keys.LIMIT_WAITING.format(instance.tag), keys.LIMIT_MOVED.format(instance.tag),
                   keys.LIMIT_MESSAGES.format(instance.tag)]
        if not r.exists(*holding):
            r.srem(keys.LIMITS_WAITING, raw)
            if r.exists(*holding):  # one came in meanwhile
                r.sadd(keys.LIMITS_WAITING, raw)
    by_instance: dict[str, tuple[Instance, list[tuple[float, str, str]]]] = {}
    for at, task_id, message, instance in planned:
        by_instance.setdefault(instance.tag, (instance, []))[1].append((at, task_id, message))
    pushes = sorted(((at, task_id, message, instance) for instance, items in by_instance.values()
                     for at, task_id, message in items), key=lambda item: item[0])
    if pushes:  # one timeline for every instance: each push at its time after the first
        start, first = time.monotonic(), pushes[0][0]
        for at, task_id, message, instance in pushes:
            time.sleep(max(0.0, at - first - (time.monotonic() - start)))
            push_out(r, instance, [(at, task_id, message)])
    return len(planned)


# Reading and changing them (API, console, metrics, Python)


@dataclass
class LimitStatus:
    name: str
    rate: str | None
    concurrency: int | None
    per: str | None
    source: str
    tasks: list[str] = field(default_factory=list)
    running: int = 0
    waiting: int = 0
    top_keys: list[dict] = field(default_factory=list)

    def public(self, *, keys_too: bool = False) -> dict:
        out = asdict(self)
        if not keys_too:
            out.pop("top_keys")
        return out


def _users() -> dict[str, list[str]]:
    from vokaflow.celery import app

    users: dict[str, list[str]] = {}
    for task in app.tasks.values():
        for name in task_limit_names(task):
            users.setdefault(name, []).append(task.name)
    return users


def limit_list() -> list[LimitStatus]:
    definitions.forget()
    known, users = definitions.get(), _users()
    r = get_redis()
    figures = _figures(r)
    out = []
    for name in sorted(set(known) | set(users)):
        limit = known.get(name, Limit(name, source="code"))
        running, waiting, per_key = figures.get(name, (0, 0, {}))
        ranked = sorted(per_key.items(), key=lambda item: (-item[1][1], -item[1][0], item[0]))[:20]
        top = [{"key": k, "running": k_running, "waiting": k_waiting} for k, (k_running, k_waiting) in ranked]
        out.append(LimitStatus(name, limit.rate, limit.concurrency, limit.per, limit.source,
                               sorted(users.get(name, [])), running, waiting, top))
    return out


def limit_get(*, name: str) -> LimitStatus:
    for status in limit_list():
        if status.name == name:
            return status
    raise LimitNotFound(name)


def _figures(r) -> dict[str, tuple[int, int, dict[str, tuple[int, int]]]]:
    """name → (running, waiting, key → (running, waiting)), from the instances' keys."""
    found: dict[str, tuple[int, int, dict]] = {}
    now = time.time()
    for raw in r.scan_iter(match=keys.LIMIT_SCAN, count=1000):
        text = as_text(raw)
        if not (text.endswith(":running") or text.endswith(":waiting")):
            continue
        name, key = keys.parse_limit_tag(text)
        count = r.zcount(text, now, "+inf") if text.endswith(":running") else r.zcard(text)
        running, waiting, per_key = found.get(name, (0, 0, {}))
        k_running, k_waiting = per_key.get(key, (0, 0))
        if text.endswith(":running"):
            running, k_running = running + count, k_running + count
        else:
            waiting, k_waiting = waiting + count, k_waiting + count
        per_key[key] = (k_running, k_waiting)
        found[name] = (running, waiting, per_key)
    return found


def limit_set(*, name: str, rate=None, concurrency=None, per=None) -> LimitStatus:
    """Create or replace a limit (it wins over the code's until limit_reset)."""
    limit = check_limit(name, rate, concurrency, per)
    get_redis().hset(keys.LIMITS, name, json.dumps({"rate": limit.rate, "concurrency": limit.concurrency,
                                                   "per": limit.per}))
    definitions.forget()
    return limit_get(name=name)


def limit_reset(*, name: str) -> LimitStatus | None:
    """Back to what the code declares (None: the limit was the API's only, and is gone)."""
    if not get_redis().hdel(keys.LIMITS, name) and name not in _declared and name not in _users():
        raise LimitNotFound(name)
    definitions.forget()
    try:
        return limit_get(name=name)
    except LimitNotFound:
        return None


def with_task_limits(task_name: str, options: dict) -> tuple[list[str], Limit | None]:
    """platform_task's limit options (rate_limit, concurrency, limit_per, limits) → the names its
    runs take places in, and its own limit (named after the task) if it declares one."""
    rate, concurrency, per = options.pop("rate_limit", None), options.pop("concurrency", None), \
        options.pop("limit_per", None)
    names = list(options.pop("limits", ()) or ())
    own = None
    if rate is not None or concurrency is not None:
        own = declare_limit(task_name, rate=rate, concurrency=concurrency, per=per)
        names.append(task_name)
    return names, own


def priority_of(request) -> int:
    queue = (request.delivery_info or {}).get("routing_key") or ""
    from vokaflow.core.queues import parse_queue

    route = parse_queue(queue)
    return int(route.priority.value) if route else int(Priority.NORMAL.value)


"""kombu's Redis transport with a fetch that cannot lose a message, and is cheaper to send.

kombu fetches with BRPOP and then records the message in the `unacked` hash in a second round
trip. A message is lost whenever the reply to BRPOP never arrives or Redis is gone before the
second step: on a graceful Redis restart, a busy consumer loses the message whose BRPOP Redis
served last (Redis writes the pop to its AOF but exits before sending the reply; measured in
bench/restart.py: plain Celery loses one or two tasks per restart). Here one Lua script takes
waiting messages in queue order and records them as unacknowledged in the same atomic step, so
a lost reply leaves them in `unacked`, and kombu's visibility timeout brings them back.

One round trip per task: that script also carries the acknowledgements of the tasks finished
since the previous fetch and, in the consuming process, their SUCCESS results (written first:
acknowledged ⇒ stored). It takes up to 8 messages from the highest non-empty priority level
only, as many of each task type as that type's measured duration fits into
`prefetch_wait_ms` (VOKAFLOW_PREFETCH_WAIT_MS; vokaflow.hotpath).

Scripts cannot block, so an idle consumer waits with XREAD on a per-type "bell" stream that
every publisher of a message writes to (`ring`), starting from the bell entries it saw when its
script found the queues empty: no push between the script and the wait goes unnoticed. A lost
bell costs at most `brpop_timeout` (1 s) of latency, never a message.

A worker of one type consumes 8 priorities × 8 partitions = 64 queues; the command is built
from each key's cached wire encoding, in the order vokaflow.core.queues.PriorityFairCycle keeps.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections import deque
from math import ceil
from queue import Empty
from time import monotonic, time
from typing import TYPE_CHECKING

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads
from redis.exceptions import NoScriptError, RedisClusterException, RedisError
from typing_extensions import override

from vokaflow.announce import announce, announce_in, needs_announcing, new_token
from vokaflow.core import keys
from vokaflow.core.queues import queue_tag
from vokaflow.hotpath import BUDGET, consume_here, durations, fetched_wait, pending_releases, pending_results
from vokaflow.redis_connect import refresh_slots
from vokaflow.result_store import STORE_LUA

logger = logging.getLogger(__name__)


# Where kombu's JSON keeps the fields the script reads, searched first (then the whole message):
# the delivery tag ends the message; the task name opens Celery's headers, which end with
# argsrepr and kwargsrepr (1 KiB each at most by Celery's default) and VokaFlow's few headers.
TAIL_WINDOW = 128
BODY_BYTES = "vokaflow_body_bytes"  # property of a message whose body waits in keys.BODY (outline)
BODY_CHUNK = 256 * 1024  # bytes of such a body read per command
HEADERS_WINDOW = 8192

# A string field of a kombu message read without decoding it (see the fetch script below): the
# text between `name` (`"key": "`) and the next quote, searched first in the last `window` bytes,
# then in the whole message; nil when absent.
FIELD_LUA = """
local find, sub = string.find, string.sub
local function field(item, name, window)
  local _, e = find(item, name, -window, true)
  if not e and window < #item then _, e = find(item, name, 1, true) end
  if not e then return nil end
  local close = find(item, '"', e + 1, true)
  return close and sub(item, e + 1, close - 1)
end
"""

# KEYS: unacked hash, unacked index, the queues (highest priority level first), the bells, then
#       what the script carries: the result keys, the pending quota keys (one per release) and
#       the body keys of acknowledged large messages. Every key it touches is in KEYS.
# ARGV: queue count, bell count, now, level count, the size of each level, most messages to look
#       at per queue, most bytes per batch, cost count, (task name, cost) pairs, result count,
#       (value, ttl) pairs, release count, the released task ids, body key count, then the
#       delivery tags to acknowledge.
# Results are written before the acknowledgements are removed from `unacked`: acknowledged ⇒
# stored. Each level is probed with one EXISTS; a batch comes from the first non-empty level
# only, messages in queue order, as many as the budgets allow (expected run time and bytes; the
# first message always), each recorded as unacknowledged before it leaves its queue (if Redis
# refuses the record, out of memory, nothing has been taken off the queue).
#
# Nothing here decodes a message: a 2 MiB task would cost Redis milliseconds of JSON parsing,
# and every client of the fleet waits behind a script. The delivery tag and the task name are
# read with plain substring searches in the message's tail, where kombu's JSON puts them (after
# the body, which is base64 and holds no quote); JSON escapes every quote inside a string, so
# the searched `"key": "` can only match a key. A message without a task name costs the whole
# budget (a batch of one); one without a delivery tag is recorded by kombu's own QoS after
# delivery, as before. Messages are read one at a time (LINDEX from the right), so a batch never
# copies more than one message past its byte budget.
#
# The unacknowledged record is the message itself, not kombu's `[message, exchange, routing
# key]`: building that copy cost a tenth of the script (Lua hashes every string it makes, whole).
# QoS.restore_by_tag and unacked_record() read both forms; a bare record goes back to the queue
# its delivery_info names, as kombu's would. Scores in the unacked index are whole seconds
# (rounded up): a fraction costs a printf per entry, and the visibility timeout counts seconds.
_FETCH = STORE_LUA + FIELD_LUA + """
local queues, bells = tonumber(ARGV[1]), tonumber(ARGV[2])
local k = 3 + queues + bells  -- the first key of what the script carries
local p = 4
local levels = {}
for l = 1, tonumber(ARGV[p]) do levels[l] = tonumber(ARGV[p + l]) end
p = p + #levels + 1
local limit, max_bytes = tonumber(ARGV[p]), tonumber(ARGV[p + 1])
local cost = {}
for i = 1, tonumber(ARGV[p + 2]) do cost[ARGV[p + 1 + 2 * i]] = tonumber(ARGV[p + 2 + 2 * i]) end
p = p + 3 + 2 * tonumber(ARGV[p + 2])
local results = tonumber(ARGV[p])
for i = 0, results - 1 do store_unless_final(KEYS[k + i], ARGV[p + 1 + 2 * i], ARGV[p + 2 + 2 * i]) end
p, k = p + 1 + 2 * results, k + results
local releases = tonumber(ARGV[p])
for i = 1, releases do redis.call('ZREM', KEYS[k + i - 1], ARGV[p + i]) end
p, k = p + 1 + releases, k + releases
local bodies = tonumber(ARGV[p])
if bodies > 0 then redis.call('DEL', unpack(KEYS, k, k + bodies - 1)) end
p = p + 1
if p <= #ARGV then
  redis.call('ZREM', KEYS[2], unpack(ARGV, p))
  redis.call('HDEL', KEYS[1], unpack(ARGV, p))
end
-- (on a Redis Cluster the check of the group's marks goes here: vokaflow.cluster_transport.FETCH)
--MARKS--
-- list indexes as strings: a Lua number passed to a command is formatted with printf each time
local from_right = {'-1', '-2', '-3', '-4', '-5', '-6', '-7', '-8', '-9'}
local first = 3
for l = 1, #levels do
  local last = first + levels[l] - 1
  if redis.call('EXISTS', unpack(KEYS, first, last)) > 0 then
    local out = {'message'}
    local budget, bytes, full = BUDGET, max_bytes, false
    for i = first, last do
      local zadd, hset, taken = {}, {}, 0
      for j = 1, limit do
        local item = redis.call('LINDEX', KEYS[i], from_right[j])
        if not item then break end
        local price = cost[field(item, '"task": "', HEADERS) or ''] or BUDGET
        -- a message whose body waits in its own key comes alone: the worker GETs one body a fetch
        local size = find(item, '"BODY_BYTES": ', -TAIL, true) and max_bytes or #item
        if #out > 1 and (price > budget or size > bytes) then full = true break end
        budget, bytes, taken = budget - price, bytes - size, taken + 1
        local tag = field(item, '"delivery_tag": "', TAIL)
        local recorded = 0
        if tag then
          zadd[#zadd + 1] = ARGV[3]
          zadd[#zadd + 1] = tag
          hset[#hset + 1] = tag
          hset[#hset + 1] = item
          recorded = 1
        end
        out[#out + 1] = KEYS[i]
        out[#out + 1] = item
        out[#out + 1] = recorded
        if budget <= 0 or bytes <= 0 then full = true break end
      end
      if #zadd > 0 then
        redis.call('ZADD', KEYS[2], unpack(zadd))
        redis.call('HSET', KEYS[1], unpack(hset))
      end
      if taken > 0 then redis.call('LTRIM', KEYS[i], '0', from_right[taken + 1]) end
      if full then break end
    end
    return out
  end
  first = last + 1
end
local seen = {'empty'}
for i = queues + 3, queues + 2 + bells do
  local last = redis.call('XREVRANGE', KEYS[i], '+', '-', 'COUNT', '1')[1]
  seen[#seen + 1] = last and last[1] or '0-0'
end
return seen
""".replace("BUDGET", str(BUDGET)).replace("HEADERS", str(HEADERS_WINDOW)).replace("TAIL", str(TAIL_WINDOW)) \
    .replace("BODY_BYTES", BODY_BYTES)
_FETCH_SHA = hashlib.sha1(_FETCH.encode()).hexdigest()
BELL_ENTRY = {"m": 1}


def bell_key(queue: str) -> str:
    """The stream an idle consumer of `queue` waits on: one per worker type (`io.high.p3` → io)."""
    return keys.BELL.format(queue.split(".", 1)[0])


def ring(pipe, queues) -> None:
    """Add to `pipe` one bell entry per worker type among `queues` (after their pushes)."""
    for bell in sorted({bell_key(q) for q in queues}):
        pipe.xadd(bell, BELL_ENTRY, maxlen=1, approximate=False)


# A message larger than this waits in its queue without its body, which waits in a key of its
# own (keys.BODY, by delivery tag) until the task is acknowledged: every script that reads a
# queue copies each message it touches into Lua, which hashes every byte of it (4 ms for 2 MB,
# measured), and every client of the fleet waits behind a running script. The worker reads the
# body with plain GETRANGEs (ReliableFetch._inline). Set from VOKAFLOW_INLINE_BODY_BYTES by
# tasks.apps.
INLINE_BYTES = 16 * 1024


def body_key(delivery_tag: str, tag: str | None) -> str:
    """Where a large message's body waits: by delivery tag, in its partition group's slot on a
    cluster (`tag`: the group's hash tag, None on one Redis)."""
    return keys.in_group(keys.BODY.format(delivery_tag), tag)


def outline(message: str, group: str | None = None) -> tuple[str, tuple[str, str] | None]:
    """The message to queue and, for a large one, (body key, body) to SET beside it; `group`: the
    hash tag of the partition group it is queued in (a cluster), None on one Redis."""
    if len(message) <= INLINE_BYTES:
        return message, None
    envelope = loads(message)
    props = envelope.get("properties") if isinstance(envelope, dict) else None
    if not isinstance(props, dict) or not isinstance(envelope.get("body"), str) or BODY_BYTES in props:
        return message, None
    tag = props.pop("delivery_tag", None)
    if not isinstance(tag, str):
        return message, None
    body, envelope["body"] = envelope["body"], ""
    props[BODY_BYTES] = len(body)
    props["delivery_tag"] = tag  # last, as kombu writes it: the fetch script reads both in the tail
    return dumps(envelope), (body_key(tag, group), body)


def body_keys(messages, group: str | None = None) -> list[str]:
    """The body keys of the large messages among `messages` (as queued in `group`'s slot)."""
    marker = b'"%s": ' % BODY_BYTES.encode()
    return [body_key(loads(bytes_to_str(m))["properties"]["delivery_tag"], group) for m in messages
            if marker in (m if isinstance(m, bytes) else m.encode())[-TAIL_WINDOW:]]


def outline_all(pipe, messages, group: str | None = None):
    """Each message as it is queued, the SET of a large one's body added to `pipe` first."""
    for message in messages:
        queued, body = outline(message, group)
        if body is not None:
            pipe.set(*body)
        yield queued


def publish(pipe, by_queue: dict[str, list[str]], *, bells: bool = True,
            front: bool = False) -> list[tuple[int, str, int]]:
    """The wire format of an enqueue, in one place: LPUSH each queue's serialised messages (the
    consumer takes from the right, so the list is FIFO; a large one's body goes to its own key
    first), then ring the bells of their types. Returns (position in `pipe`, queue, count) of each
    LPUSH: with `bells` off (a cluster, whose bells lie outside a partition group's slot) the
    caller rings, after the pipeline ran, the bells of the queues that were empty (woken)."""
    pushes = []
    for queue, messages in by_queue.items():
        queued = list(outline_all(pipe, messages, queue_tag(queue)))
        pushes.append((len(pipe), queue, len(queued)))
        if front:
            pipe.rpush(queue, *reversed(queued))
        else:
            pipe.lpush(queue, *queued)
    if bells:
        ring(pipe, by_queue)
    return pushes


def push(client, by_queue: dict[str, list[str]], *, front: bool = False) -> None:
    """Publish outside a transaction (kombu's own publishes, a retry's requeue; with `front`, a
    task let out of a limit's waiting room, next to be taken, the first message first). On one
    Redis the bells ring in the same pipeline. On a cluster each partition group's queues are
    pushed in a MULTI of their own that also runs ANNOUNCE (vokaflow.announce); the bells, in
    other slots, ring after it, only for queues the push found empty (ring_woken)."""
    if not keys.cluster_layout():
        with client.pipeline(transaction=False) as pipe:
            publish(pipe, by_queue, front=front)
            pipe.execute()
        return
    by_group: dict[str | None, dict[str, list[str]]] = {}
    for queue, messages in by_queue.items():
        by_group.setdefault(queue_tag(queue), {})[queue] = messages
    foreign = by_group.pop(None, None)
    if foreign:  # queues that are not a partition group's (a remote-control reply): each its own slot
        with client.pipeline(transaction=False) as pipe:
            publish(pipe, foreign, bells=False, front=front)
            pipe.execute()
    filled: set[str] = set()
    announcing: list[tuple[dict[str, int], str]] = []
    try:
        for group_queues in by_group.values():
            token = new_token()
            try:
                with client.pipeline(transaction=True) as pipe:
                    pushes = publish(pipe, group_queues, bells=False, front=front)
                    checks = {q: announce_in(pipe, q, n, token) for _, q, n in pushes if needs_announcing(q)}
                    replies = pipe.execute()
            except (RedisError, RedisClusterException, OSError):
                refresh_slots(client)
                raise
            announcing.append(({q: replies[at] for q, at in checks.items()}, token))
            filled |= woken(pushes, replies)
    finally:  # what was pushed is announced and rung for, even when a later group failed
        announce(client, announcing)
        ring_woken(client, filled)


def ring_woken(client, queues: set[str]) -> None:
    """Wake the idle consumers of queues that were empty; a bell that fails costs them at most
    their idle wait (ReliableFetch), never a task."""
    if not queues:
        return
    try:
        with client.pipeline(transaction=False) as pipe:
            ring(pipe, queues)
            pipe.execute()
    except (RedisError, RedisClusterException, OSError) as exc:
        logger.warning("could not ring the bells of %s: %s", ", ".join(sorted(queues)), exc)


def woken(pushes: list[tuple[int, str, int]], replies: list) -> set[str]:
    """The queues an enqueue found empty (each LPUSH's new length is its own count): only their
    consumers may be asleep. A queue that had messages has consumers awake, or on their way."""
    return {queue for at, queue, count in pushes if replies[at] == count}


def _bulk(value: bytes | str) -> bytes:
    if isinstance(value, str):
        value = value.encode()
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _level(queue: str) -> str:
    """The priority level a queue belongs to (`io.high.p3` → high); a foreign queue is its own."""
    parts = queue.split(".")
    return parts[1] if len(parts) == 3 else queue


# What a fetch script carries besides its fetch: results, quota releases, acks, body keys.
Pending = tuple[list, list, list, list]


def _drain(shared: deque) -> list:
    """Everything in a deque that other threads or channels of this process may append to or
    take from at the same time."""
    taken = []
    while shared:
        try:
            taken.append(shared.popleft())
        except IndexError:  # taken by another channel of this process
            break
    return taken


def unacked_record(raw: bytes | str) -> tuple[dict, str, str]:
    """A message held in `unacked` and where it goes back: (message, exchange, routing key).
    The fetch script records the bare message (its delivery_info names its queue); kombu's own
    QoS records `[message, exchange, routing key]`."""
    record = loads(bytes_to_str(raw))
    if isinstance(record, dict):
        info = (record.get("properties") or {}).get("delivery_info") or {}
        return record, info.get("exchange") or "", info.get("routing_key") or ""
    message, exchange, routing_key = record
    return message, exchange, routing_key


class QoS(kombu_redis.QoS):
    @override
    def append(self, message, delivery_tag):
        recorded = self.channel._recorded_tags
        if delivery_tag in recorded:
            # The fetch script recorded it in Redis already; keep only the in-memory delivery.
            recorded.discard(delivery_tag)
            return virtual.QoS.append(self, message, delivery_tag)
        return self._record(message, delivery_tag)

    def _record(self, message, delivery_tag):
        """Record a delivery the fetch script did not (no delivery tag in its tail): kombu's way."""
        return kombu_redis.QoS.append(self, message, delivery_tag)

    @override
    def ack(self, delivery_tag):
        channel = self.channel
        if not channel._reliable():
            return super().ack(delivery_tag)
        if channel.closed:
            # A task that outlived its channel: Redis went away while it ran (a thread cannot be
            # stopped) and the consumer reconnected on a new channel. The closed one has no
            # connection to write with (kombu's client raised AttributeError there, and the worker
            # died of it), so the record stays in `unacked` and the task comes back after the
            # visibility timeout, as any unacknowledged one: at least once.
            return virtual.QoS.ack(self, delivery_tag)
        # Deferred: the next fetch script removes it from `unacked` (after the results it
        # carries). An ack no fetch will carry soon (idle wait, no consumer) is written at once.
        channel._acks.append(delivery_tag)
        if delivery_tag in channel._bodies:
            channel._body_keys.append(channel._bodies.pop(delivery_tag))
        virtual.QoS.ack(self, delivery_tag)
        if not channel._fetch_coming():
            channel.flush()

    @override
    def reject(self, delivery_tag, requeue=False):
        super().reject(delivery_tag, requeue)
        if not requeue:  # dropped for good: so is the body of a large message
            self.channel.drop_body(delivery_tag)

    @override
    def restore_by_tag(self, tag, client=None, leftmost=False):
        # kombu's, reading both forms of the record (unacked_record).
        def restore_transaction(pipe):
            raw = pipe.hget(self.unacked_key, tag)
            pipe.multi()
            self._remove_from_indices(tag, pipe)
            if raw:
                try:
                    record = unacked_record(raw)
                except (ValueError, TypeError):  # not a message: dropped, the others go on
                    logger.critical("could not hand back unreadable message %s: %r", tag, raw[:200])
                    return
                self.channel._do_restore_message(*record, pipe, leftmost)

        with self.channel.conn_or_acquire(client) as client:
            client.transaction(restore_transaction, self.unacked_key)

    @override
    def restore_unacked(self, client=None):
        # A clean stop hands back what this worker took but never started (up to a batch). That
        # is no redelivery: the flag counts deliveries that ended with the worker gone, towards
        # the poison limit (tasks.base), so each message keeps the flag it arrived with.
        self.channel._handing_back = True
        try:
            super().restore_unacked(client)
        finally:
            self.channel._handing_back = False
            self.channel.ring_restored(client)

    @override
    def restore_visible(self, *args, **kwargs):
        try:
            return super().restore_visible(*args, **kwargs)
        finally:
            self.channel.ring_restored()

    @override
    def restore_unacked_once(self, stderr=None):
        # kombu 5.7: when Redis goes away, closing the channel tries to hand prefetched messages
        # back through a connection whose details are already gone (AttributeError on
        # `conninfo.hostname`), and the worker dies of it. The messages stay in the unacked
        # hash and are redelivered after the visibility timeout, so the worker can carry on
        # and reconnect.
        try:
            return super().restore_unacked_once(stderr)
        except AttributeError as exc:
            if exc.name != "hostname" or exc.obj is not None:  # only that failure, nothing else
                raise
            logger.warning("prefetched messages left for redelivery after the visibility timeout: %s", exc)


if TYPE_CHECKING:  # the fetch is mixed into kombu's Redis channels: type it as one
    _ChannelBase = kombu_redis.Channel
else:
    _ChannelBase = object


class ReliableFetch(_ChannelBase):
    """The fetch above, in place of kombu's BRPOP (kombu's own is kept for priority steps and
    global key prefixes, which VokaFlow does not use).

    Acknowledgements (and, in the consuming process, SUCCESS results: vokaflow.hotpath) wait
    for the next fetch script; they are written at once when the consumer goes to its idle
    wait, has no queue to fetch from, or closes."""

    QoS = QoS
    #: transport option: how long an urgent task may wait behind a fetched batch (ms).
    prefetch_wait_ms = 20
    #: transport option: most bytes of messages one fetch takes (the first message always).
    prefetch_max_bytes = 256 * 1024
    _bells_seen: list[bytes] | None = None  # set after a fetch found every queue empty
    _packed_keys: dict[str, bytes]
    _waiting_bell = False  # the command in flight is the bell XREAD (not a fetch script)
    _script_loaded = True
    _layout_for: tuple = (None, [], [])  # (active queues, their bells, encoded bell count and level sizes)
    _costs_for: tuple = (None, [], [])  # (durations.version, limit and costs, the same encoded)

    def __init__(self, *args, **kwargs):
        self._acks: deque[str] = deque()
        self._recorded_tags: set[str] = set()
        self._restored_queues: set[str] = set()  # put back since the last ring_restored()
        self._bodies: dict[str, str] = {}  # delivered tag → the key its body waits in (outline)
        self._body_keys: deque[str] = deque()  # bodies to delete with their acknowledgements
        self._sent: Pending | None = None  # what the fetch in flight carries
        super().__init__(*args, **kwargs)
        durations.bound = self.prefetch_wait_ms / 1000

    def _reliable(self) -> bool:
        return self.priority_steps == [0] and not self.global_keyprefix

    def _packed(self, keys) -> list[bytes]:
        """Each key's wire encoding, cached (re-encoding 64 keys per fetch cost several per cent
        of a no-op task's time, measured)."""
        try:
            cache = self._packed_keys
        except AttributeError:
            cache = self._packed_keys = {}
        parts = []
        for key in keys:
            part = cache.get(key)
            if part is None:
                part = cache[key] = _bulk(key)
            parts.append(part)
        return parts

    def _layout(self, queues) -> tuple[list[str], list[bytes]]:
        """The bells of the active queues, then (encoded) their count, the number of priority
        levels and the size of each, in cycle order."""
        active = frozenset(self.active_queues)
        if self._layout_for[0] != active:
            sizes = [len(list(group)) for _, group in itertools.groupby(queues, _level)]
            bells = sorted({bell_key(q) for q in active})
            self._layout_for = (active, bells, [_bulk(b"%d" % len(bells)), _bulk(b"%d" % len(sizes)),
                                                *(_bulk(b"%d" % n) for n in sizes)])
        return self._layout_for[1], self._layout_for[2]

    def _cost_values(self) -> list[bytes | str]:
        """Most messages to look at per queue, most bytes per batch, then (task name, cost) of the
        types that may come several to a fetch; any other type costs the whole budget (a batch
        of one)."""
        if self._costs_for[0] != durations.version:
            caps = dict(durations.caps)
            values: list[bytes | str] = [b"%d" % max(caps.values(), default=1), b"%d" % self.prefetch_max_bytes,
                                         b"%d" % len(caps)]
            for name, cap in caps.items():
                values += [name, b"%d" % (BUDGET // cap)]
            self._costs_for = (durations.version, values, [_bulk(v) for v in values])
        return self._costs_for[1]

    def _cost_args(self) -> list[bytes]:
        """_cost_values, each encoded for the wire."""
        self._cost_values()
        return self._costs_for[2]

    def _has_pending(self) -> bool:
        return bool(self._acks or pending_results or pending_releases)

    def _take_pending(self) -> Pending:
        # element by element: a thread of the pool may acknowledge meanwhile
        return _drain(pending_results), _drain(pending_releases), _drain(self._acks), _drain(self._body_keys)

    def _put_back(self, pending: Pending | None) -> None:
        """A script that may not have run: what it carried goes out with the next one (all
        idempotent: a stored ready state is kept, a removed tag, place or body stays removed)."""
        if pending:
            results, releases, acks, bodies = pending
            pending_results.extendleft(reversed(results))
            pending_releases.extendleft(reversed(releases))
            self._acks.extendleft(reversed(acks))
            self._body_keys.extendleft(reversed(bodies))

    @staticmethod
    def _pending_parts(results, releases, acks, bodies) -> tuple[list, list]:
        """The keys and the values a fetch script carries: results, quota releases, bodies, acks."""
        names = [key for key, _, _ in results] + [key for key, _ in releases] + bodies
        values: list[bytes | str] = [b"%d" % len(results)]
        for _, value, ttl in results:
            values += [value, b"%d" % ceil(ttl or 0)]
        values.append(b"%d" % len(releases))
        values += [task_id for _, task_id in releases]
        values.append(b"%d" % len(bodies))
        return names, values + acks

    def drop_body(self, delivery_tag: str) -> None:
        """Delete the body of a large message that is gone for good without an acknowledgement."""
        if delivery_tag in self._bodies:
            with self.conn_or_acquire() as client:
                client.delete(self._bodies.pop(delivery_tag))

    def _fetch_coming(self) -> bool:
        """Whether a fetch script will carry what is pending without waiting for the idle bell."""
        if not self.active_queues:
            return False  # not consuming (cancelled, or a publishing channel)
        if self._in_poll:
            return not self._waiting_bell
        return True  # the next tick fetches, or a held delivery's ack will

    def flush(self, client=None) -> None:
        """Write pending results and acknowledgements now, in one script that fetches nothing."""
        pending = self._take_pending()
        if not any(pending):
            return
        carried, values = self._pending_parts(*pending)
        names = [self.unacked_key, self.unacked_index_key, *carried]
        args = [0, 0, 0, 0, 1, 0, 0, *values]
        try:
            with self.conn_or_acquire(client) as conn:
                try:
                    conn.evalsha(_FETCH_SHA, len(names), *names, *args)
                except NoScriptError:
                    conn.eval(_FETCH, len(names), *names, *args)
        except Exception:
            self._put_back(pending)
            raise

    def _brpop_start(self, timeout=None):
        if not self._reliable():
            return super()._brpop_start(timeout)
        queues = self._queue_cycle.items
        if not queues:
            return
        bells, layout = self._layout(queues)
        # Going to the idle wait with something pending: fetch again instead, carrying it.
        self._waiting_bell = self._bells_seen is not None and not self._has_pending()
        if self._waiting_bell:
            parts = self._wait_command(bells, self.brpop_timeout if timeout is None else timeout)
        else:
            consume_here()
            parts = self._fetch_command(queues, bells, layout)
        self._in_poll = self.client.connection
        self._brpop_sent_at = monotonic()
        self.client.connection.send_packed_command([b"".join(parts)])

    def _fetch_command(self, queues, bells, layout) -> list[bytes]:
        keys = self._packed([self.unacked_key, self.unacked_index_key, *queues, *bells])
        self._sent = self._take_pending()
        carried, values = self._pending_parts(*self._sent)
        keys += [_bulk(name) for name in carried]  # not cached: a result key is used once
        argv = [_bulk(b"%d" % len(queues)), layout[0], _bulk(b"%d" % ceil(time())), *layout[1:],
                *self._cost_args(), *(_bulk(value) for value in values)]
        script = [b"$7\r\nEVALSHA\r\n", _bulk(_FETCH_SHA)] if self._script_loaded \
            else [b"$4\r\nEVAL\r\n", _bulk(_FETCH)]
        self._script_loaded = True
        return [b"*%d\r\n" % (len(keys) + len(argv) + 3), *script, _bulk(b"%d" % len(keys)), *keys, *argv]

    def _wait_command(self, bells, timeout) -> list[bytes]:
        seen = self._bells_seen or []
        if len(seen) != len(bells):  # after an error, or the queues changed: wait for new entries
            seen = [b"$"] * len(bells)
        return [b"*%d\r\n$5\r\nXREAD\r\n$5\r\nBLOCK\r\n" % (len(bells) * 2 + 4),
                _bulk(b"%d" % int((timeout or 1) * 1000)), b"$7\r\nSTREAMS\r\n",
                *self._packed(bells), *(_bulk(i) for i in seen)]

    def _brpop_read(self, **options):
        if not self._reliable():
            return super()._brpop_read(**options)
        waiting = self._waiting_bell
        sent, self._sent = self._sent, None
        try:
            try:
                reply = self.client.parse_response(self.client.connection, "XREAD" if waiting else "EVALSHA",
                                                   **options)
            except self.connection_errors:
                self._put_back(sent)
                self.client.connection.disconnect()  # the next iteration reconnects
                raise
            except NoScriptError:
                self._put_back(sent)
                self._script_loaded = False  # Redis restarted: the next fetch sends the script itself
                raise Empty() from None
            except self.ResponseError as exc:
                self._put_back(sent)
                logger.warning("fetching from Redis failed, nothing was taken off a queue: %s", exc)
                self._bells_seen = []  # wait for a bell or the timeout before trying again
                raise Empty() from None
            if waiting:
                self._bells_seen = None  # a bell rang or the wait timed out: fetch again
                raise Empty()
            if bytes_to_str(reply[0]) == "empty":
                self._bells_seen = list(reply[1:])
                fetched_wait.found_none()
                raise Empty()
            self._bells_seen = None
            self._deliver_batch(reply)
            return True
        finally:
            self._in_poll = None
            self._waiting_bell = False
            self._flush_brpop_reauth()

    def _deliver_batch(self, reply) -> None:
        """Hand each fetched message to its consumer, in the order the script took them."""
        recorded, deliver, last, error = self._recorded_tags, self.connection._deliver, None, None
        for i in range(1, len(reply), 3):
            dest = bytes_to_str(reply[i])
            if dest != last:
                self._queue_cycle.rotate(dest)
                last = dest
            message = loads(bytes_to_str(reply[i + 1]))
            if i == 1:  # the head of the highest waiting level: the oldest task this worker could take
                fetched_wait.took(message.get("headers") or {})
            self._taken_from(message, dest)
            if BODY_BYTES in message["properties"] and not self._inline(message, bool(reply[i + 2]), dest):
                continue
            if reply[i + 2]:
                recorded.add(message["properties"]["delivery_tag"])
            try:
                deliver(message, dest)
            except Exception as exc:  # the others of the batch are delivered all the same
                error = error or exc
        if error is not None:
            raise error

    def _taken_from(self, message: dict, queue: str) -> None:
        """A delivered message came from `queue` (the cluster channel keeps where its tag lives)."""

    def _inline(self, message: dict, recorded: bool, queue: str) -> bool:
        """Put back the body of a large message (outline); False when it is gone, and with it
        the task (already acknowledged after an earlier delivery): its record is removed. The
        body is read BODY_CHUNK bytes a command, one command at a time: a 2 MB GET holds Redis
        for half a millisecond (its reply buffers), a 256 KiB GETRANGE for 25 µs (measured)."""
        props = message["properties"]
        tag, size = props["delivery_tag"], props[BODY_BYTES]
        key, parts = body_key(tag, queue_tag(queue)), []
        with self.conn_or_acquire() as client:
            for start in range(0, max(size, 1), BODY_CHUNK):
                part = client.getrange(key, start, start + BODY_CHUNK - 1)
                if not part:
                    break
                parts.append(part)
        body = b"".join(parts)
        if len(body) != size:
            logger.error("message %s (task %s) has lost its body; dropped", tag, message.get("headers", {}).get("id"))
            if recorded:
                self._acks.append(tag)
            return False
        del props[BODY_BYTES]
        message["body"] = bytes_to_str(body)
        self._bodies[tag] = key
        return True

    @override
    def close(self):
        if not self.closed and self._reliable():
            self._closing = True
            if self._in_poll:
                try:
                    self._brpop_read()
                except Empty:
                    pass
            try:
                self.flush()
            except Exception as exc:  # the tasks stay unacknowledged and run again: at least once
                logger.warning("could not write acknowledgements on close: %s", exc)
        super().close()

    def _put(self, queue, message, **kwargs):
        if not self._reliable() or (self._expires and queue in self._expires):
            return super()._put(queue, message, **kwargs)
        with self.conn_or_acquire() as client:
            push(client, {queue: [dumps(message)]})

    _handing_back = False  # set by QoS.restore_unacked during a clean stop

    @override
    def _do_restore_message(self, payload, exchange, routing_key, pipe, leftmost=False):
        if not self._handing_back:
            super()._do_restore_message(payload, exchange, routing_key, pipe, leftmost)
        else:
            # kombu's own would mark the message redelivered; put it back as it came. The same
            # guard as kombu's: a payload that cannot be put back (not a message at all) is
            # logged and dropped, and the hand-back goes on with the others.
            try:
                for queue in self._lookup(exchange, routing_key):
                    pri = self._get_message_priority(payload, reverse=False)
                    (pipe.lpush if leftmost else pipe.rpush)(self._q_for_pri(queue, pri), dumps(payload))
            except self.connection_errors:
                raise  # aborts the transaction: it would remove the record without the push
            except Exception:
                logger.critical("could not hand back message: %r", payload, exc_info=True)
                return
        if routing_key:
            self._restored_queues.add(routing_key)

    def ring_restored(self, client=None) -> None:
        """Wake idle consumers of what was put back, once per worker type, after the restores
        (their own transactions): a bell that fails costs at most the idle wait, never a
        message, and never stops the hand-back."""
        restored, self._restored_queues = self._restored_queues, set()
        if not restored or not self._reliable():
            return
        try:
            with self.conn_or_acquire(client) as conn, conn.pipeline(transaction=False) as pipe:
                ring(pipe, restored)
                pipe.execute()
        except Exception as exc:
            logger.warning("could not ring the bells of handed-back messages: %s", exc)

    @override
    def _restore(self, message, leftmost=False):
        # kombu's, reading both forms of the record (unacked_record).
        if not self.ack_emulation:
            return super()._restore(message)
        tag = message.delivery_tag

        def restore_transaction(pipe):
            raw = pipe.hget(self.unacked_key, tag)
            pipe.multi()
            pipe.hdel(self.unacked_key, tag)
            if raw:
                self._do_restore_message(*unacked_record(raw), pipe, leftmost)

        with self.conn_or_acquire() as client:
            client.transaction(restore_transaction, self.unacked_key)
        self.ring_restored()


class Channel(ReliableFetch, kombu_redis.Channel):
    from_transport_options = (*kombu_redis.Channel.from_transport_options,  # type: ignore[assignment]
                              "prefetch_wait_ms", "prefetch_max_bytes")


class SentinelChannel(ReliableFetch, kombu_redis.SentinelChannel):
    from_transport_options = (*kombu_redis.SentinelChannel.from_transport_options,  # type: ignore[assignment]
                              "prefetch_wait_ms", "prefetch_max_bytes")


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel

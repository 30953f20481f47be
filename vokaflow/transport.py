"""kombu's Redis transport with a fetch that cannot lose a message, and is cheaper to send.

kombu fetches with BRPOP and then records the message in the `unacked` hash in a second round
trip. A message is lost whenever the reply to BRPOP never arrives or Redis is gone before the
second step: on a graceful Redis restart, a busy consumer loses the message whose BRPOP Redis
served last (Redis writes the pop to its AOF but exits before sending the reply; measured in
bench/restart.py: plain Celery loses one or two tasks per restart). Here one Lua script pops
the first waiting message in queue order and records it as unacknowledged in the same atomic
step, so a lost reply leaves it in `unacked`, and kombu's visibility timeout brings it back.

Scripts cannot block, so an idle consumer waits with XREAD on a per-type "bell" stream that
every publisher of a message writes to (`ring`), starting from the bell entries it saw when its
script found the queues empty: no push between the script and the wait goes unnoticed. A lost
bell costs at most `brpop_timeout` (1 s) of latency, never a message.

A worker of one type consumes 8 priorities × 8 partitions = 64 queues; the command is built
from each key's cached wire encoding, in the order vokaflow.core.queues.PriorityFairCycle keeps.
"""

from __future__ import annotations

import hashlib
import logging
from queue import Empty
from time import monotonic, time

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads
from redis.exceptions import NoScriptError

from vokaflow.core import keys

logger = logging.getLogger(__name__)


# KEYS: unacked hash, unacked index, the queues in order, then the bells; ARGV: queue count, now.
# The record is written before the pop: if Redis refuses the write (out of memory), nothing
# has been taken off the queue.
_FETCH = """
local queues = tonumber(ARGV[1])
for i = 3, queues + 2 do
  local item = redis.call('LINDEX', KEYS[i], -1)
  if item then
    local ok, message = pcall(cjson.decode, item)
    local props = ok and type(message) == 'table' and message['properties']
    local tag = type(props) == 'table' and props['delivery_tag']
    local recorded = 0
    if type(tag) == 'string' then
      local info = props['delivery_info'] or {}
      redis.call('ZADD', KEYS[2], ARGV[2], tag)
      redis.call('HSET', KEYS[1], tag, '[' .. item .. ',' .. cjson.encode(info['exchange'] or '') .. ','
                 .. cjson.encode(info['routing_key'] or '') .. ']')
      recorded = 1
    end
    redis.call('RPOP', KEYS[i])
    return {'message', KEYS[i], item, recorded}
  end
end
local seen = {'empty'}
for i = queues + 3, #KEYS do
  local last = redis.call('XREVRANGE', KEYS[i], '+', '-', 'COUNT', 1)[1]
  seen[#seen + 1] = last and last[1] or '0-0'
end
return seen
"""
_FETCH_SHA = hashlib.sha1(_FETCH.encode()).hexdigest()
BELL_ENTRY = {"m": 1}


def bell_key(queue: str) -> str:
    """The stream an idle consumer of `queue` waits on: one per worker type (`io.high.p3` → io)."""
    return keys.BELL.format(queue.split(".", 1)[0])


def ring(pipe, queues) -> None:
    """Add to `pipe` one bell entry per worker type among `queues` (after their pushes)."""
    for bell in sorted({bell_key(q) for q in queues}):
        pipe.xadd(bell, BELL_ENTRY, maxlen=1, approximate=False)


def publish(pipe, by_queue: dict[str, list[str]]) -> None:
    """The wire format of an enqueue, in one place: LPUSH each queue's serialised messages (the
    consumer takes from the right, so the list is FIFO), then ring the bells of their types."""
    for queue, messages in by_queue.items():
        pipe.lpush(queue, *messages)
    ring(pipe, by_queue)


def _bulk(value: bytes | str) -> bytes:
    if isinstance(value, str):
        value = value.encode()
    return b"$%d\r\n%s\r\n" % (len(value), value)


class QoS(kombu_redis.QoS):
    def append(self, message, delivery_tag):
        if self.channel._recorded_tag == delivery_tag:
            # The fetch script recorded it in Redis already; keep only the in-memory delivery.
            self.channel._recorded_tag = None
            return virtual.QoS.append(self, message, delivery_tag)
        return super().append(message, delivery_tag)

    def restore_unacked_once(self, stderr=None):
        # kombu 5.7: when Redis goes away, closing the channel tries to hand prefetched messages
        # back through a connection whose details are already gone (AttributeError on
        # `conninfo.hostname`), and the worker dies of it. The messages stay in the unacked
        # hash and are redelivered after the visibility timeout, so the worker can carry on
        # and reconnect.
        try:
            return super().restore_unacked_once(stderr)
        except AttributeError as exc:
            logger.warning("prefetched messages left for redelivery after the visibility timeout: %s", exc)


class ReliableFetch:
    """The fetch above, in place of kombu's BRPOP (kombu's own is kept for priority steps and
    global key prefixes, which VokaFlow does not use)."""

    QoS = QoS
    _recorded_tag = None
    _bells_seen: list[bytes] | None = None  # set after a fetch found every queue empty
    _script_loaded = True
    _bells_for: tuple[tuple, list[str]] = ((), [])  # (active queues, their bells)

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

    def _bells(self) -> list[str]:
        queues = tuple(self.active_queues)
        if self._bells_for[0] != queues:
            self._bells_for = (queues, sorted({bell_key(q) for q in queues}))
        return self._bells_for[1]

    def _brpop_start(self, timeout=None):
        if not self._reliable():
            return super()._brpop_start(timeout)
        queues = self._queue_cycle.items
        if not queues:
            return
        if self._bells_seen is None:
            parts = self._fetch_command(queues, self._bells())
        else:
            parts = self._wait_command(self._bells(), self.brpop_timeout if timeout is None else timeout)
        self._in_poll = self.client.connection
        self._brpop_sent_at = monotonic()
        self.client.connection.send_packed_command([b"".join(parts)])

    def _fetch_command(self, queues, bells) -> list[bytes]:
        keys = [self.unacked_key, self.unacked_index_key, *queues, *bells]
        script = [b"$7\r\nEVALSHA\r\n", _bulk(_FETCH_SHA)] if self._script_loaded \
            else [b"$4\r\nEVAL\r\n", _bulk(_FETCH)]
        self._script_loaded = True
        return [b"*%d\r\n" % (len(keys) + 5), *script, _bulk(b"%d" % len(keys)), *self._packed(keys),
                _bulk(b"%d" % len(queues)), _bulk(repr(time()))]

    def _wait_command(self, bells, timeout) -> list[bytes]:
        seen = self._bells_seen
        if len(seen) != len(bells):  # after an error, or the queues changed: wait for new entries
            seen = [b"$"] * len(bells)
        return [b"*%d\r\n$5\r\nXREAD\r\n$5\r\nBLOCK\r\n" % (len(bells) * 2 + 4),
                _bulk(b"%d" % int((timeout or 1) * 1000)), b"$7\r\nSTREAMS\r\n",
                *self._packed(bells), *(_bulk(i) for i in seen)]

    def _brpop_read(self, **options):
        if not self._reliable():
            return super()._brpop_read(**options)
        waiting = self._bells_seen is not None
        try:
            try:
                reply = self.client.parse_response(self.client.connection, "XREAD" if waiting else "EVALSHA",
                                                   **options)
            except self.connection_errors:
                self.client.connection.disconnect()  # the next iteration reconnects
                raise
            except NoScriptError:
                self._script_loaded = False  # Redis restarted: the next fetch sends the script itself
                raise Empty() from None
            except self.ResponseError as exc:
                logger.warning("fetching from Redis failed, nothing was taken off a queue: %s", exc)
                self._bells_seen = []  # wait for a bell or the timeout before trying again
                raise Empty() from None
            if waiting:
                self._bells_seen = None  # a bell rang or the wait timed out: fetch again
                raise Empty()
            if bytes_to_str(reply[0]) == "empty":
                self._bells_seen = list(reply[1:])
                raise Empty()
            _, dest, item, recorded = reply
            dest = bytes_to_str(dest)
            self._queue_cycle.rotate(dest)
            message = loads(bytes_to_str(item))
            if recorded:
                self._recorded_tag = message["properties"]["delivery_tag"]
            self.connection._deliver(message, dest)
            return True
        finally:
            self._in_poll = None
            self._flush_brpop_reauth()

    def _put(self, queue, message, **kwargs):
        if not self._reliable() or (self._expires and queue in self._expires):
            return super()._put(queue, message, **kwargs)
        with self.conn_or_acquire() as client, client.pipeline(transaction=False) as pipe:
            publish(pipe, {queue: [dumps(message)]})
            pipe.execute()

    def _do_restore_message(self, payload, exchange, routing_key, pipe, leftmost=False):
        super()._do_restore_message(payload, exchange, routing_key, pipe, leftmost)
        if self._reliable() and routing_key:
            ring(pipe, [routing_key])  # redelivered messages wake idle consumers too


class Channel(ReliableFetch, kombu_redis.Channel):
    pass


class SentinelChannel(ReliableFetch, kombu_redis.SentinelChannel):
    pass


class Transport(kombu_redis.Transport):
    Channel = Channel


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel

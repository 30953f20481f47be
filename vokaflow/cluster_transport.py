"""The fetch of vokaflow.transport on a Redis Cluster, keeping strict priority across shards.

Each partition group (one hash tag, one slot: vokaflow.core.slots) holds its queues of every
level, its own `unacked{tag}` hash and index, and the bodies of its large messages, so the fetch
script of vokaflow.transport runs unchanged on one group, and a type's work spreads over every
primary. A fetch round of a consumer:

1. **Probe**: one tiny script per group it consumes (PROBE) answers which of the group's queues,
   in level order, is the first with a message. The probes go pipelined to every primary at
   once (_on_primaries), all sent before any reply is read.
2. **Choose**: the group whose first waiting message has the highest level; the groups waiting
   at that level take turns. The fetch script runs on the chosen group with only the queues of
   that level and above, so it can take a higher level that arrived meanwhile but never a lower
   one. While a backlog at one level lasts, the next rounds send no probe: each fetch checks its
   own group's marks of the levels above (vokaflow.announce; MARKS_CHECK) and takes nothing when
   a higher level was announced since; the worker then probes again, and a mark no group bears
   out is recorded as seen by that group's next fetch. A probe also runs again when the groups
   waiting at the level have drained, and FULL_PROBE_SECONDS after the last. A consumer of only
   some of a type's partitions asks each group with one plain EXISTS before each fetch instead.
3. **Carry**: the chosen group's fetch script carries that group's acknowledgements, SUCCESS
   results (a task id made on a cluster carries its group's tag, so its result key lies in the
   group's slot) and body deletions, as on one Redis. What belongs to other groups waits for
   their own next fetch, each at most CARRY_SECONDS, and is then written by a fetch-less call of
   the same script; quota releases (their keys are per owner, in other slots) go first, in one pipelined
   call. An idle consumer writes everything at once. Results are not published on a cluster
   (result_store.quiet).
4. **Idle**: when every group is empty, the consumer reads the type's bell, probes once more
   (a push between the first probe and that read would otherwise ring unheard), and waits on the
   bell with XREAD. A publisher rings the bell only when its push found the queue empty
   (transport.woken): a non-empty queue has consumers awake already, so the bell is no key every
   task touches.

Rounds run synchronously in the poller (ClusterPoller) before it waits on sockets, which wakes
the event loop after one delivered; only the idle XREAD is left to the event loop, on a
connection to the node that holds the bell. Slot maps come from redis-py's RedisCluster, which
follows MOVED and ASK redirections and finds a replica promoted after a failover; a redirection
met by a pipelined probe is followed through it, command by command. Private kombu, redis-py and
Flower APIs used here are checked in tests/test_contracts.py.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import socket
from math import ceil
from queue import Empty
from time import monotonic, time

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps
from redis import exceptions as redis_errors
from redis.cluster import RedisCluster
from typing_extensions import override

from vokaflow.announce import announce, announce_in, marks_key, needs_announcing, new_token
from vokaflow.announce import groups as partition_groups
from vokaflow.core import keys
from vokaflow.core.queues import priority_rank, queue_tag
from vokaflow.core.slots import tag_in, tagged
from vokaflow.hotpath import consume_here, fetched_wait, pending_releases, pending_results
from vokaflow.redis_connect import cluster_client
from vokaflow.result_store import quiet, store_unless_final
from vokaflow.transport import (
    _FETCH,
    Pending,
    QoS,
    ReliableFetch,
    _bulk,
    _drain,
    bell_key,
    push,
    unacked_record,
)

logger = logging.getLogger(__name__)

# KEYS: a group's queues in level order. Returns the (1-based) index of the first one with a
# message, 0 when all are empty.
PROBE = """
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then return i end
end
return 0
"""
PROBE_SHA = hashlib.sha1(PROBE.encode()).hexdigest()
# The fetch script of one partition group, with its type's marks (vokaflow.announce) and without
# publishing the results it stores (result_store.quiet: a PUBLISH on a cluster goes to every
# node). KEYS[1] (taken off before transport's script reads KEYS) the group's marks hash; ARGV,
# taken off the same way: how many (rank, count) pairs found stale follow, the pairs, how many
# ranks to check follow, the ranks. After writing what it carries and before taking anything,
# it records the stale counts (never lowering one) and answers {'marked', rank, count, ...}
# without taking anything when a checked rank was announced more often than found stale.
MARKS_ARGS = """
local MARKS = table.remove(KEYS, 1)
local stale, above = {}, {}
for i = 1, tonumber(table.remove(ARGV, 1)) do
  local rank = table.remove(ARGV, 1)
  stale[i] = {rank, table.remove(ARGV, 1)}
end
for i = 1, tonumber(table.remove(ARGV, 1)) do above[i] = table.remove(ARGV, 1) end
"""
MARKS_CHECK = """
for _, pair in ipairs(stale) do
  local seen = pair[1] .. 's'
  if tonumber(pair[2]) > tonumber(redis.call('HGET', MARKS, seen) or '0') then
    redis.call('HSET', MARKS, seen, pair[2])
  end
end
if #above > 0 then
  local fields = {}
  for i, rank in ipairs(above) do
    fields[2 * i - 1] = rank
    fields[2 * i] = rank .. 's'
  end
  local counts = redis.call('HMGET', MARKS, unpack(fields))
  local marked = {'marked'}
  for i, rank in ipairs(above) do
    local count = counts[2 * i - 1]
    if count and tonumber(count) > tonumber(counts[2 * i] or '0') then
      marked[#marked + 1] = rank
      marked[#marked + 1] = count
    end
  end
  if #marked > 1 then return marked end
end
"""
assert "\n--MARKS--\n" in _FETCH
FETCH = MARKS_ARGS + quiet(_FETCH).replace("\n--MARKS--\n", "\n" + MARKS_CHECK, 1)
FETCH_SHA = hashlib.sha1(FETCH.encode()).hexdigest()
CARRY_SECONDS = 0.25  # longest an acknowledgement of another group waits for that group's fetch
# Longest a consumer serves one level on its marks alone (vokaflow.announce) before it probes every
# group again: bounds how long a push whose announcement failed (a shard failing) or a pusher
# that died before announcing waits behind a lower level.
FULL_PROBE_SECONDS = 1.0
RACES = 3  # rounds whose choice another worker emptied first, before the consumer yields to the loop

REDIRECTIONS = (redis_errors.MovedError, redis_errors.AskError, redis_errors.TryAgainError)
# What a cluster's redis-py raises once its own retries (redirections, reconnects) are spent:
# for kombu these are connection errors, and the consumer reconnects.
CLUSTER_ERRORS = (redis_errors.ClusterError, redis_errors.RedisClusterException, redis_errors.TryAgainError,
                  redis_errors.ClusterDownError, redis_errors.SlotNotCoveredError)


def unacked_keys(group: str) -> tuple[str, str, str]:
    """(unacked hash, unacked index, restore mutex) of a partition group."""
    tag = tagged(group)
    return "unacked" + tag, "unacked_index" + tag, "unacked_mutex" + tag


class ClusterQoS(QoS):
    """kombu's QoS with one unacked hash and index per partition group."""

    def _group(self, tag: str) -> str | None:
        group = self.channel._tag_group.get(tag)
        if group is None:
            logger.error("no partition group known for delivery %s; it comes back after the visibility timeout", tag)
        return group

    @override
    def _record(self, message, delivery_tag):
        info = message.delivery_info
        group = queue_tag(info["routing_key"])
        if group is not None:
            unacked, index, _ = unacked_keys(group)
            with self.channel._cluster.pipeline(transaction=True) as pipe:
                pipe.zadd(index, {delivery_tag: time()})
                pipe.hset(unacked, delivery_tag, dumps([message._raw, info["exchange"], info["routing_key"]]))
                pipe.execute()
            self.channel._tag_group[delivery_tag] = group
        return virtual.QoS.append(self, message, delivery_tag)

    @override
    def _remove_from_indices(self, delivery_tag, pipe=None):
        group = self.channel._tag_group.get(delivery_tag)
        if pipe is None:
            pipe = self.channel._cluster.pipeline()
        if group is not None:
            unacked, index, _ = unacked_keys(group)
            pipe.zrem(index, delivery_tag)
            pipe.hdel(unacked, delivery_tag)
        return pipe

    @override
    def restore_by_tag(self, tag, client=None, leftmost=False, group=None):
        group = group or self._group(bytes_to_str(tag))
        if group is None:
            return
        unacked, index, _ = unacked_keys(group)
        token, check = new_token(), {}

        def restore_transaction(pipe):
            check.clear()
            raw = pipe.hget(unacked, tag)
            pipe.multi()
            pipe.zrem(index, tag)
            pipe.hdel(unacked, tag)
            if raw:
                try:
                    record = unacked_record(raw)
                except (ValueError, TypeError):
                    logger.critical("could not hand back unreadable message %s: %r", tag, raw[:200])
                    return
                self.channel._do_restore_message(*record, pipe, leftmost)
                queue = bytes_to_str(record[2] or "")  # the routing key: one of our queues is its own
                if needs_announcing(queue) and queue_tag(queue) == group:
                    check[queue] = announce_in(pipe, queue, 1, token)

        replies = self.channel._cluster.transaction(restore_transaction, unacked)
        if check and replies:
            announce(self.channel._cluster, [({q: replies[at] for q, at in check.items()}, token)])
        self.channel._tag_group.pop(bytes_to_str(tag), None)

    @override
    def restore_visible(self, start=0, num=10, interval=10):
        self._vrestore_count += 1
        if (self._vrestore_count - 1) % (interval or 1):
            return
        client = self.channel._cluster
        ceiling = time() - self.visibility_timeout
        groups = self.channel.all_groups()
        # One look at every group's index at once (one round trip per primary); the mutex and the
        # restores only where something is past the visibility timeout, which is seldom.
        looks = self.channel._on_primaries([(unacked_keys(g)[1], ("ZCOUNT", unacked_keys(g)[1], "-inf", ceiling))
                                            for g in groups])
        try:
            for group in [g for g, count in zip(groups, looks, strict=True) if count]:
                unacked, index, mutex = unacked_keys(group)
                try:
                    with kombu_redis.Mutex(client, mutex, self.unacked_mutex_expire):
                        visible = client.zrange(index, ceiling, 0, desc=True, byscore=True,
                                                offset=num and start, num=num, withscores=True)
                        for tag, _score in visible or []:
                            self.restore_by_tag(tag, group=group)
                except kombu_redis.MutexHeld:
                    continue
        finally:
            self.channel.ring_restored()


class ClusterFetch(ReliableFetch):
    """ReliableFetch whose fetch is a round over the partition groups (see the module text)."""

    QoS = ClusterQoS
    #: transport option: the rediscluster:// URL (the broker URL names one node for kombu).
    cluster_url = ""
    _poll_node: tuple[str, int] | None = None  # (host, port) the poll connection goes to: the bell's node
    _level: int | None = None  # the priority rank being served, while a backlog lasts
    _ready: list[str]  # groups the last full probe found waiting at that rank, in turn order
    _bell_seen: bytes | str = b"$"
    _turn = itertools.count()

    _probed_at = 0.0
    # (the group whose fetch met marks, every group's marks read after it), for the next probe
    _marked: tuple[str, dict[str, list]] | None = None

    def __init__(self, *args, **kwargs):
        self._tag_group: dict[str, str] = {}
        self._ready = []
        self._stale: dict[str, list[tuple[str, str]]] = {}  # group → marks its next fetch records as stale
        self._waiting_since: dict[str | None, float] = {}  # group → since when something waits for its fetch
        self._ignored: set[str] = set()  # foreign queues beside the platform's, logged once
        super().__init__(*args, **kwargs)

    @property
    def _cluster(self) -> RedisCluster:
        return cluster_client(self.cluster_url)

    @override
    def _reliable(self) -> bool:
        return True

    @override
    def _create_client(self, asynchronous=False):
        if asynchronous:  # the poll connection: a node client, for the bell's XREAD and pub/sub
            return super()._create_client(asynchronous=True)
        return self._cluster

    @override
    def _connparams(self, asynchronous=False):
        params = super()._connparams(asynchronous)
        if asynchronous and self.cluster_url:
            # Not the broker URL's node: it may be the primary that died (kombu names one node).
            host, port = self._poll_node or self._live_node()
            params.update(host=host, port=port, db=0)
        return params

    def _live_node(self) -> tuple[str, int]:
        """A primary that answers, from a fresh slot map: the poll connection is made when a
        channel is (at start, and again after a lost connection, when a failover may have
        replaced the primaries)."""
        self._refresh_slots()
        for node in self._cluster.get_primaries():
            try:
                self._cluster.get_redis_connection(node).ping()
            except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError):
                continue
            return node.host, node.port
        raise redis_errors.ConnectionError(f"no primary of the Redis Cluster at {self.cluster_url} answers")

    def ensure_poll_node(self) -> None:
        """Point the poll connection at the node holding this consumer's bell (before the
        poller registers it; again after the bell's slot moved)."""
        node = self._cluster.get_node_from_key(self._bell())
        if self._poll_node == (node.host, node.port):
            return
        client = self.__dict__.pop("client", None)
        if client is not None and getattr(client, "connection", None) is not None:
            client.connection.disconnect()  # kombu takes its socket out of the poller
        self._async_pool = None
        self._poll_node = (node.host, node.port)

    def _bell(self) -> str:
        """The key the poll connection waits on: the type's bell; for a channel that consumes
        only queues that are not the platform's (a remote-control reply), its first queue."""
        queues = list(self.active_queues or self._queue_cycle.items)
        if not queues:
            return keys.BELL.format("general")
        return queues[0] if self._plain() else bell_key(queues[0])

    def _plain(self) -> bool:
        """Whether this channel consumes only queues that are not the platform's (Celery's
        remote-control replies): those are read with kombu's own BRPOP, on their node."""
        return bool(self.active_queues) and not any(queue_tag(q) for q in self.active_queues)

    def all_groups(self) -> list[str]:
        """Every partition group's tag (the visibility timeout's restore scans them all)."""
        return partition_groups()

    def _groups(self) -> dict[str, list[str]]:
        """The active queues by partition group, each in level order (the cycle's order)."""
        groups: dict[str, list[str]] = {}
        for queue in self._queue_cycle.items:
            group = queue_tag(queue)
            if group is not None:
                groups.setdefault(group, []).append(queue)
            elif queue not in self._ignored:
                self._ignored.add(queue)
                logger.error("queue %s is not one of the platform's: beside them it is not consumed on a Redis "
                             "Cluster", queue)
        return groups

    @override
    def _taken_from(self, message, queue):
        tag = message["properties"].get("delivery_tag")
        group = queue_tag(queue)
        if tag and group:
            self._tag_group[tag] = group

    # -- a fetch round ------------------------------------------------------------------------

    def fetch_round(self) -> bool:
        """Probe, choose, fetch and deliver; True when messages were delivered. An empty round
        leaves the channel idle: the poller then sends the bell's XREAD (_brpop_start). A refused
        command (slots moving, a script missing on a promoted replica) costs the round: nothing
        was taken, and the wait on the bell paces the next try."""
        try:
            return self._fetch_round()
        except self.connection_errors:
            raise
        except redis_errors.ResponseError as exc:
            logger.warning("a fetch round on the Redis Cluster was refused, nothing was taken: %s", exc)
            return False

    def _fetch_round(self) -> bool:
        if self._plain():
            return False  # kombu's BRPOP reads it (_brpop_start)
        groups = self._groups()
        if not groups:
            return False
        consume_here()
        self._release_quota()
        marks = self._marks_type(groups)
        for _ in range(RACES + len(groups)):
            best = self._same_level(groups, marks) or self._probe(groups)
            if best is None:
                self._bell_seen = self._last_bell()
                best = self._probe(groups)  # a push before that read is seen here, one after it rings
                if best is None:
                    fetched_wait.found_none()
                    self.flush()  # idle: nothing waits for a fetch to carry it
                    return False
            reply = self._fetch(*best, marks)
            kind = bytes_to_str(reply[0])
            if kind == "marked":  # a higher level was announced: the next probe, after a read of the marks, decides
                ranks = [bytes_to_str(reply[i]) for i in range(1, len(reply), 2)]
                self._marked = (best[0], self._read_marks(groups, marks, ranks) if marks else {})
                self._level = None
                continue
            if kind != "empty":
                if priority_rank(bytes_to_str(reply[1])) != self._level:
                    self._level = None  # it found a higher level than chosen: probe afresh next time
                self._deliver_batch(reply)
                return True
            if best[0] in self._ready:  # drained at that level (by another worker, or just now)
                self._ready.remove(best[0])
        self._bell_seen = b"0-0"  # tasks may be waiting: the bell's last entry wakes the next round at once
        return False

    def _read_marks(self, groups: dict[str, list[str]], marks: str, ranks: list[str]) -> dict[str, list]:
        """Every group's marks of `ranks` that were announced more often than seen, read at once
        (a round trip per primary) before the probe that judges them all: one announcement is
        found stale in every group after one probe, not one probe per group."""
        fields = [field for rank in ranks for field in (rank, rank + "s")]
        order = list(groups)
        replies = self._on_primaries([(marks_key(marks, g), ("HMGET", marks_key(marks, g), *fields)) for g in order])
        found: dict[str, list] = {}
        for group, counts in zip(order, replies, strict=True):
            pairs = [(rank, bytes_to_str(counts[2 * i])) for i, rank in enumerate(ranks)
                     if counts[2 * i] and int(counts[2 * i]) > int(counts[2 * i + 1] or 0)]
            if pairs:
                found[group] = pairs
        return found

    def _marks_type(self, groups: dict[str, list[str]]) -> str | None:
        """The worker type whose marks this consumer's fetches check (vokaflow.announce): only a
        consumer of every group of one type can judge a mark stale; any other probes every group
        it consumes before each fetch (_same_level)."""
        types = {q.split(".", 1)[0] for queues in groups.values() for q in queues}
        if len(types) != 1 or set(groups) != set(self.all_groups()):
            return None
        return types.pop()

    def _same_level(self, groups: dict[str, list[str]], marks: str | None) -> tuple[str, list[str]] | None:
        """The cheap choice while a backlog lasts: the groups the last full probe found waiting at
        the level served since take turns. Whether anything above that level arrived meanwhile is
        checked by the fetch itself against the group's marks (none at the top level); without
        marks, one plain EXISTS per group asks it first. None (the full probe chooses again) when
        something did, when those groups have drained, or FULL_PROBE_SECONDS after the last."""
        level = self._level
        if level is None or not self._ready or monotonic() - self._probed_at > FULL_PROBE_SECONDS:
            return None
        if marks is None:
            calls = [(queues[0], ("EXISTS", *higher)) for queues in groups.values()
                     if (higher := [q for q in queues if priority_rank(q) < level])]
            if calls and any(self._on_primaries(calls)):
                return None  # a higher level arrived
        group = self._ready.pop(0)
        if group not in groups:
            return None
        self._ready.append(group)  # its turn again after the others
        return group, [q for q in groups[group] if priority_rank(q) <= level]

    def _in_turn(self, groups: dict[str, list[str]]) -> list[str]:
        order = list(groups)
        start = next(self._turn) % len(order)
        return order[start:] + order[:start]

    def _probe(self, groups: dict[str, list[str]]) -> tuple[str, list[str]] | None:
        """(group, its queues down to its first waiting one) of the highest waiting level; the
        groups waiting at that level take turns from here on (_same_level). After a fetch that
        met marks, the marks read since (_read_marks) of ranks found waiting nowhere are stale:
        the next fetch on each group records its own, and the group whose fetch met them goes
        first."""
        order = self._in_turn(groups)
        calls = [(groups[g][0], ("EVALSHA", PROBE_SHA, len(groups[g]), *groups[g])) for g in order]
        found = self._with_scripts(lambda: self._on_primaries(calls))
        self._probed_at = monotonic()
        ranks = {group: priority_rank(groups[group][first - 1]) for group, first in zip(order, found, strict=True)
                 if first}
        self._level = min(ranks.values()) if ranks else None
        marked, self._marked = self._marked, None
        if marked is not None:
            for group, pairs in marked[1].items():
                stale = [(rank, count) for rank, count in pairs if self._level is None or int(rank) < self._level]
                if stale:
                    self._stale.setdefault(group, []).extend(stale)
        if self._level is None:
            self._ready = []
            return None
        self._ready = [group for group in order if ranks.get(group) == self._level]
        if marked is not None and marked[0] in self._ready:
            self._ready.remove(marked[0])
            self._ready.insert(0, marked[0])
        group = self._ready.pop(0)
        self._ready.append(group)
        return group, [q for q in groups[group] if priority_rank(q) <= self._level]

    _scripts_loaded = False

    def _with_scripts(self, call):
        """call(), with the probe and fetch scripts loaded on every primary first, and again when
        a node lacks them (a new primary, a replica promoted after a failover, a restart)."""
        if not self._scripts_loaded:
            self._load_scripts()
        try:
            return call()
        except redis_errors.NoScriptError:
            self._load_scripts()
            return call()

    def _load_scripts(self) -> None:
        self._cluster.script_load(PROBE)
        self._cluster.script_load(FETCH)
        self._scripts_loaded = True

    def _fetch(self, group: str, queues: list[str], marks: str | None):
        unacked, index, _ = unacked_keys(group)
        carried = self._carry(group)
        names, values = self._pending_parts(*carried)
        self._sent = carried
        level = max(priority_rank(q) for q in queues)
        above = sorted({str(priority_rank(q)) for q in queues if priority_rank(q) < level}) if marks else []
        stale = self._stale.pop(group, []) if marks else []
        keys_ = [marks_key(marks, group) if marks else unacked, unacked, index, *queues, *names]
        args = [len(stale), *itertools.chain.from_iterable(stale), len(above), *above,
                len(queues), 0, ceil(time()), len(queues), *([1] * len(queues)), *self._cost_values(), *values]
        try:
            reply = self._with_scripts(lambda: self._cluster.evalsha(FETCH_SHA, len(keys_), *keys_, *args))
        except BaseException:
            self._put_back(self._sent)
            if stale:
                self._stale.setdefault(group, []).extend(stale)
            raise
        finally:
            self._sent = None
        return reply

    @override
    def _take_pending(self) -> Pending:
        """Results, acknowledgements and bodies, with the quota places of the tasks among them
        freed first (_release_quota): a task's place is queued before its acknowledgement, so
        after the acknowledgements are taken every place they need is queued too. Places do not
        travel in a fetch on a cluster (each owner's set has a slot of its own)."""
        pending: Pending = (_drain(pending_results), [], _drain(self._acks), _drain(self._body_keys))
        try:
            self._release_quota()
        except BaseException:
            self._put_back(pending)
            raise
        return pending

    def _carry(self, group: str) -> Pending:
        """The pending results, acknowledgements and body deletions of `group` (for its fetch);
        those of other groups are written now when they have waited CARRY_SECONDS."""
        by_group = self._by_group(self._take_pending())
        mine = by_group.pop(group, ([], [], [], []))
        self._waiting_since.pop(group, None)
        now = monotonic()
        late = {}
        for other, rest in by_group.items():
            if now - self._waiting_since.setdefault(other, now) >= CARRY_SECONDS:
                late[other] = rest
                del self._waiting_since[other]
            else:
                self._put_back(rest)
        if late:
            self._write(late)
        for tag in mine[2]:
            self._tag_group.pop(tag, None)
        return mine

    def _by_group(self, pending: Pending) -> dict[str | None, Pending]:
        """Pending results, acknowledgements and bodies by the partition group they belong to
        (None: a result of a task id made elsewhere, a slot of its own)."""
        results, _, acks, bodies = pending
        by_group: dict[str | None, Pending] = {}
        for result in results:
            by_group.setdefault(tag_in(result[0]), ([], [], [], []))[0].append(result)
        for tag in acks:
            by_group.setdefault(self._tag_group.get(tag), ([], [], [], []))[2].append(tag)
        for body in bodies:
            by_group.setdefault(tag_in(body), ([], [], [], []))[3].append(body)
        return by_group

    def _release_quota(self) -> None:
        """Free the quota places of finished tasks before the acknowledgements that follow."""
        releases = _drain(pending_releases)
        if not releases:
            return
        try:
            with self._cluster.pipeline(transaction=False) as pipe:
                for key, task_id in releases:
                    pipe.zrem(key, task_id)
                pipe.execute()
        except BaseException:
            pending_releases.extendleft(reversed(releases))
            raise

    def _write(self, by_group: dict[str | None, Pending]) -> None:
        """Write pending results, acknowledgements and body deletions of any groups, one
        fetch-less script per group (results of tasks whose ids name no group on their own)."""
        for group in by_group:
            self._waiting_since.pop(group, None)
        try:
            self._with_scripts(lambda: self._write_groups(by_group))
        except BaseException:
            for pending in by_group.values():
                self._put_back(pending)
            raise
        for _, _, acks, _ in by_group.values():
            for tag in acks:
                self._tag_group.pop(tag, None)

    def _write_groups(self, by_group) -> None:
        calls = []
        for group, (results, _, acks, bodies) in by_group.items():
            if group is None:  # results of ids made elsewhere: each its own slot
                for key, value, ttl in results:
                    store_unless_final(self._cluster, key, value, ttl)
                for body in bodies:
                    self._cluster.delete(body)
                if acks:
                    logger.error("acknowledgements %s name no partition group; they come back after the "
                                 "visibility timeout", acks[:5])
                continue
            unacked, index, _ = unacked_keys(group)
            names, values = self._pending_parts(results, [], acks, bodies)
            calls.append((unacked, ("EVALSHA", FETCH_SHA, 3 + len(names), unacked, unacked, index, *names,
                                    0, 0, 0, 0, 0, 0, 1, 0, 0, *values)))
        if calls:
            self._on_primaries(calls)

    def _on_primaries(self, calls: list[tuple[str, tuple]]) -> list:
        """Each (a key it touches, command) on the primary of that key's slot, pipelined per node
        and all nodes at once (sent to every one before any reply is read); the replies in order.
        Not redis-py's cluster pipeline: it asks Redis for the keys of every EVALSHA first
        (COMMAND GETKEYS, a round trip each). A command redirected while slots move (MOVED, ASK,
        TRYAGAIN) goes again through RedisCluster, which follows it; a lost node refreshes the
        slot map and raises (kombu reconnects)."""
        by_node: dict[str, tuple] = {}
        for i, (key, command) in enumerate(calls):
            node = self._cluster.get_node_from_key(key)
            by_node.setdefault(node.name, (node, []))[1].append((i, command))
        replies: list = [None] * len(calls)
        sent = []
        try:
            for node, items in by_node.values():
                client = self._cluster.get_redis_connection(node)
                connection = client.connection_pool.get_connection()
                sent.append((client, connection, items))
                connection.send_packed_command(connection.pack_commands([c for _, c in items]))
            errors = []
            for client, connection, items in sent:
                for i, command in items:
                    try:
                        replies[i] = client.parse_response(connection, command[0])
                    except redis_errors.ResponseError as exc:
                        errors.append((i, exc))
        except (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError):
            for _, connection, _ in sent:
                connection.disconnect()  # replies may be left unread on it
            self._refresh_slots()
            raise
        finally:
            for client, connection, _ in sent:
                client.connection_pool.release(connection)
        for i, error in errors:
            if not isinstance(error, REDIRECTIONS):
                raise error
            # Slots moving: this one again through RedisCluster, which follows MOVED and ASK (and
            # waits out TRYAGAIN while a slot's keys are half moved). The commands are idempotent
            # probes and acknowledgements, and a refused one changed nothing.
            replies[i] = self._cluster.execute_command(*calls[i][1])
        if errors:
            self._refresh_slots()
        return replies

    def _refresh_slots(self) -> None:
        try:
            self._cluster.nodes_manager.initialize()
        except Exception as exc:  # the cluster is failing over: the next round tries again
            logger.warning("could not refresh the Redis Cluster's slots: %s", exc)

    @override
    def flush(self, client=None) -> None:
        pending = self._take_pending()
        if not any(pending):
            return
        try:
            self._write(self._by_group(pending))
        except redis_errors.ResponseError as exc:  # put back by _write: the next round carries them
            logger.warning("acknowledgements not written yet (the Redis Cluster refused them: %s)", exc)

    def _last_bell(self) -> bytes | str:
        last = self._cluster.xrevrange(self._bell(), "+", "-", count=1)
        return last[0][0] if last and last[0][0] else b"0-0"

    # -- the idle wait, left to the event loop ------------------------------------------------

    @override
    def _brpop_start(self, timeout=None):
        if self._plain():
            return kombu_redis.Channel._brpop_start(self, timeout)
        self._waiting_bell = True
        self._in_poll = self.client.connection
        self._brpop_sent_at = monotonic()
        bell = self._bell()
        wait = int(((self.brpop_timeout if timeout is None else timeout) or 1) * 1000)
        self.client.connection.send_packed_command(
            [b"".join([b"*6\r\n$5\r\nXREAD\r\n$5\r\nBLOCK\r\n", _bulk(b"%d" % wait), b"$7\r\nSTREAMS\r\n",
                       _bulk(bell), _bulk(self._bell_seen)])])

    @override
    def _brpop_read(self, **options):
        if self._plain():
            return kombu_redis.Channel._brpop_read(self, **options)
        try:
            try:
                self.client.parse_response(self.client.connection, "XREAD", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            except self.ResponseError as exc:  # MOVED: the bell's slot went to another node
                logger.warning("waiting on the bell failed (%s); reconnecting to its node", exc)
                self._reconnect_poll()
        finally:
            self._in_poll = None
            self._waiting_bell = False
            self._bell_seen = b"$"
        raise Empty()

    def _reconnect_poll(self) -> None:
        self._refresh_slots()
        self._poll_node = None  # ensure_poll_node finds the bell's node again

    # kombu chains pipeline calls (`pipe = pipe.delete(…)`), and a cluster pipeline's delete()
    # returns None: deleting and purging a queue (one list: priority_steps is [0]) are written out.
    @override
    def _delete(self, queue, exchange, routing_key, pattern, *args, **kwargs):
        self.auto_delete_queues.discard(queue)
        member = self.sep.join([routing_key or "", pattern or "", queue or ""])
        self._cluster.srem(self.keyprefix_queue % (exchange,), member)
        self._cluster.srem(self.keyprefix_binding_permanent % (exchange,), member)
        self._cluster.delete(queue)

    @override
    def _purge(self, queue):
        with self._cluster.pipeline(transaction=False) as pipe:
            pipe.llen(queue)
            pipe.delete(queue)
            return pipe.execute()[0]

    # kombu refreshes the bindings of expiring queues (Celery's remote-control replies) with one
    # script over the binding table and a deadlines set, two slots of a cluster. Here they are
    # kept without expiry, as kombu kept every binding before 5.6.
    @override
    def _queue_bind(self, exchange, routing_key, pattern, queue):
        expires = self._expires.pop(queue, None)
        try:
            super()._queue_bind(exchange, routing_key, pattern, queue)
        finally:
            if expires is not None:
                self._expires[queue] = expires

    @override
    def maybe_refresh_binding_expiry(self):
        pass

    @override
    def sweep_bindings(self, limit=100):
        return 0

    @override
    def _put(self, queue, message, **kwargs):
        push(self._cluster, {queue: [dumps(message)]})


class ClusterChannel(ClusterFetch, kombu_redis.Channel):
    from_transport_options = (*kombu_redis.Channel.from_transport_options,  # type: ignore[assignment]
                              "prefetch_wait_ms", "prefetch_max_bytes", "cluster_url")


class ClusterPoller(kombu_redis.MultiChannelPoller):
    """kombu's poller, running the channels' fetch rounds before it waits on their sockets."""

    def __init__(self):
        super().__init__()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    def _fetch(self) -> bool:
        delivered = False
        for channel in list(self._channels):
            if channel.active_queues and channel.qos.can_consume() and not channel._in_poll:
                delivered = channel.fetch_round() or delivered
        return delivered

    def _point_polls(self) -> None:
        for channel in self._channels:
            if channel.active_queues and not channel._in_poll:
                channel.ensure_poll_node()

    @override
    def get(self, callback, timeout=None):
        if self._fetch():
            return None
        self._point_polls()
        return super().get(callback, timeout)

    @override
    def on_poll_start(self):
        delivered = False
        while self._fetch():  # the event loop: fetch until the slots are full or the queues empty
            delivered = True
        if delivered:
            # The loop would now wait on sockets none of which has a reply coming (the fetch
            # was synchronous): a byte on its own pipe makes it go round again at once.
            self._wake()
        self._point_polls()
        super().on_poll_start()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # full: a wake-up is pending already

    def drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass


class ClusterTransport(kombu_redis.Transport):
    Channel = ClusterChannel
    connection_errors = (*kombu_redis.Transport.connection_errors, *CLUSTER_ERRORS)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cycle = ClusterPoller()

    @override
    def register_with_event_loop(self, connection, loop):
        super().register_with_event_loop(connection, loop)
        loop.add_reader(self.cycle._wake_r.fileno(), self.cycle.drain_wake)

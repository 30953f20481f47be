"""On a Redis Cluster, how a worker serving one priority level learns that a higher level arrived
in another partition group without asking every group before each fetch.

Each partition group holds, per worker type, a hash of marks (keys.LEVELS): for each priority
rank, how many times that rank was announced (field ``<rank>``) and how many of those a worker
found stale (``<rank>s``, never more). A push that finds a queue empty announces the queue's
rank: once the push is applied it adds one to that rank's count in every group of the type, and
only then is the push done (a submission answered, a due task counted as moved). A worker
serving rank r passes its fetch script the ranks above r it consumes; the script, on one group,
refuses to take anything when one of them was announced more often than found stale there
(vokaflow.transport's MARKS). The worker then probes every group, after that read, and when no
group has such a rank waiting it records the counts it read as stale in that group's next
fetch. The counts only grow, so a stale record never hides a later announcement.

A push into a non-empty queue announces too while the announcement of the push that found it
empty may still be on its way: otherwise it could be answered before any group knew. So each
push runs ANNOUNCE on its queue in the same MULTI or script: a queue that holds only what this
push added gets this push's token in the group's keys.ANNOUNCING hash (it announces); a queue
whose field holds a token announces as well; "done" (written by the token's owner once its
announcement is complete) means nothing more to do. A pusher that dies before "done" only makes
later pushes into that queue announce too, until it empties and a push finds it empty again.

The lowest rank is never announced (nothing is below it), and on one Redis or Sentinel none of
this runs: one fetch script sees every level of every partition at once.
"""

from __future__ import annotations

import functools
import logging
import os

from redis.exceptions import RedisClusterException, RedisError

from vokaflow.core import keys
from vokaflow.core.priorities import Priority
from vokaflow.core.queues import parse_queue, queue_tag
from vokaflow.core.slots import LAYOUT, partition_tag

logger = logging.getLogger(__name__)

LOWEST = len(Priority) - 1

# KEYS[1] a queue this MULTI or script just pushed ARGV[1] messages to, KEYS[2] its group's
# announcing hash; ARGV[2] the push's token. 2: the queue was empty, this push announces (its
# token is written); 1: an announcement may be on its way, this push announces too; 0: none due.
ANNOUNCE = """
if redis.call('LLEN', KEYS[1]) == tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[2], KEYS[1], ARGV[2])
  return 2
end
if redis.call('HGET', KEYS[2], KEYS[1]) == 'done' then return 0 end
return 1
"""
# KEYS[1] the announcing hash; ARGV: the token, then the queues it announced.
ANNOUNCED = """
for i = 2, #ARGV do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[1] then redis.call('HSET', KEYS[1], ARGV[i], 'done') end
end
return 0
"""


def new_token() -> str:
    return os.urandom(8).hex()


def needs_announcing(queue: str) -> bool:
    """Whether a push to `queue` may have to announce it (a platform queue of a partition group
    above the lowest level, on a cluster)."""
    route = parse_queue(queue)
    return LAYOUT.cluster and route is not None and int(route.priority) < LOWEST and queue_tag(queue) is not None


def announce_in(pipe, queue: str, count: int, token: str) -> int:
    """Add ANNOUNCE for `count` messages just pushed to `queue` to `pipe` (the push's MULTI);
    returns the position of its reply. EVAL, not EVALSHA: a script missing inside EXEC would fail
    alone while the push is applied."""
    at = len(pipe)
    pipe.execute_command("EVAL", ANNOUNCE, 2, queue, keys.in_group(keys.ANNOUNCING, queue_tag(queue)), count, token)
    return at


def groups() -> list[str]:
    """Every partition group's tag."""
    return _groups(LAYOUT.partitions)


@functools.cache
def _groups(partitions: int) -> list[str]:
    return sorted({partition_tag(p, partitions) for p in range(partitions)})


def marks_key(worker_type_short: str, group: str) -> str:
    return keys.in_group(keys.LEVELS.format(worker_type_short), group)


def announce(client, pushes: list[tuple[dict[str, int], str]]) -> None:
    """Finish the announcements of one or more pushes, each (ANNOUNCE's reply per queue it pushed
    to that needs announcing, its token): one pipeline of counts (a round trip per primary), each
    (type, level) once, then one pipeline marking the announcements done. The pushes are applied
    already: when the counts cannot be written (a shard failing), that is logged and the tasks stay
    queued, answered as enqueued (a 503 would invite a duplicate); workers find them at their next
    probe of every group, within cluster_transport.FULL_PROBE_SECONDS."""
    ranks = {(route.worker_type.short, int(route.priority)) for states, _ in pushes for q, state in states.items()
             if state and (route := parse_queue(q)) is not None}
    if not ranks:
        return
    try:
        with client.pipeline(transaction=False) as pipe:
            for group in groups():
                for short, rank in sorted(ranks):
                    pipe.hincrby(marks_key(short, group), str(rank), 1)
            pipe.execute()
    except (RedisError, RedisClusterException, OSError) as exc:
        queues = sorted(q for states, _ in pushes for q, state in states.items() if state)
        logger.warning("could not announce %s to every partition group: %s", ", ".join(queues), exc)
        return
    mine: dict[tuple[str, str], list[str]] = {}
    for states, token in pushes:
        for queue, state in states.items():
            if state == 2:
                mine.setdefault((keys.in_group(keys.ANNOUNCING, queue_tag(queue)), token), []).append(queue)
    if not mine:
        return
    try:
        with client.pipeline(transaction=False) as pipe:
            for (hash_key, token), queues in mine.items():
                pipe.execute_command("EVAL", ANNOUNCED, 1, hash_key, token, *queues)
            pipe.execute()
    except (RedisError, RedisClusterException, OSError) as exc:
        # later pushes into these queues announce too, until they empty
        logger.warning("could not mark the announcements of %s done: %s",
                       ", ".join(q for queues in mine.values() for q in queues), exc)

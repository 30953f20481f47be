"""Where a task goes: (worker type, priority, partition) → queue name, and back.

Pure module (no Django), so a plain Celery task or a script can import it.
Queue names read ``<type>.<priority>.p<partition>``, for example ``cpu.high.p3``; on a Redis
Cluster they end with their partition's hash tag, ``cpu.high.p3{1ed4}`` (vokaflow.core.slots).
"""

from __future__ import annotations

import functools
import itertools
import re
import zlib
from dataclasses import dataclass

from kombu.utils.scheduling import round_robin_cycle

from vokaflow.core.priorities import Priority
from vokaflow.core.slots import group_tag, tagged
from vokaflow.core.workers import WorkerType

_QUEUE_RE = re.compile(r"^(?P<type>[a-z]+)\.(?P<priority>[a-z]+)\.p(?P<partition>\d+)(?P<tag>\{[0-9a-f]{4}\})?$")
_round_robin = itertools.count()


@dataclass(frozen=True)
class Route:
    worker_type: WorkerType
    priority: Priority
    partition: int

    @property
    def queue(self) -> str:
        return queue_name(self.worker_type, self.priority, self.partition)


def queue_name(worker_type: WorkerType, priority: Priority, partition: int) -> str:
    tag = group_tag(partition)
    return f"{worker_type.short}.{priority.name.lower()}.p{partition}" + (tagged(tag) if tag else "")


def queue_tag(name: str) -> str | None:
    """The hash tag a queue name ends with on a cluster (`cpu.high.p3{1ed4}` → 1ed4), else None."""
    return name[-5:-1] if name.endswith("}") and name[-6:-5] == "{" else None


def parse_queue(name: str) -> Route | None:
    """The route a queue name stands for, or None for a queue that is not ours."""
    match = _QUEUE_RE.match(name)
    if not match:
        return None
    try:
        return Route(WorkerType.parse(match["type"]), Priority[match["priority"].upper()],
                     int(match["partition"]))
    except (ValueError, KeyError):
        return None


def partition_for(partition_key: str | None, partitions: int) -> int:
    """Stable partition for a key (CRC-32, the same on every host and run); round-robin without one."""
    if partition_key is None:
        return next(_round_robin) % partitions
    return zlib.crc32(partition_key.encode()) % partitions


def parse_partitions(spec: str | None, partitions: int) -> list[int]:
    """``"0-3,6"`` → [0, 1, 2, 3, 6]; None or "" or "all" → every partition."""
    if not spec or spec.strip().lower() == "all":
        return list(range(partitions))
    chosen: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part:
                low, high = (int(x) for x in part.split("-", 1))
                chosen.update(range(low, high + 1))
            else:
                chosen.add(int(part))
        except ValueError:
            raise ValueError(f"bad partition list {spec!r}: use numbers and ranges like 0-3,6") from None
    out_of_range = sorted(p for p in chosen if not 0 <= p < partitions)
    if out_of_range or not chosen:
        raise ValueError(f"partitions {out_of_range or spec!r} are outside 0-{partitions - 1}")
    return sorted(chosen)


def queues_for(worker_type: WorkerType, partitions: int, only: list[int] | None = None) -> list[str]:
    """Every queue a worker of this type consumes, highest priority first."""
    chosen = range(partitions) if only is None else only
    return [queue_name(worker_type, priority, p) for priority in Priority for p in chosen]


def all_queues(partitions: int) -> list[str]:
    return [q for worker_type in WorkerType for q in queues_for(worker_type, partitions)]


@functools.lru_cache(maxsize=4096)
def priority_rank(queue: str) -> int:
    """Sort key: the priority value of one of our queues; foreign queues come last."""
    route = parse_queue(queue)
    return len(Priority) if route is None else int(route.priority)


class PriorityFairCycle(round_robin_cycle):
    """kombu queue cycle: strict priority across levels, round-robin within a level.

    Why dedicated queues per priority read in order (kombu ``queue_order_strategy``) and not
    kombu's per-message ``priority_steps``: each queue stays one Redis list named exactly as
    documented (``cpu.high.p3``), so depths, Flower and ``redis-cli LLEN`` agree, and a
    worker's BRPOP names 8 keys per partition instead of 64. kombu's own ``priority`` cycle
    never rotates, which would drain partition 0 of a level before partition 1 ever runs;
    this cycle keeps the level order fixed and moves only the queue just served to the back
    of its own level, so partitions of one level share the worker fairly. kombu 5.7+ keeps
    the active queues as a list, which this relies on (celery#8673).
    """

    def update(self, it):
        self.items[:] = sorted(it, key=priority_rank)  # stable: keeps partition order in a level

    def rotate(self, last_used):
        items = self.items
        try:
            index = items.index(last_used)
        except ValueError:
            return last_used
        rank = priority_rank(last_used)
        end = index
        while end + 1 < len(items) and priority_rank(items[end + 1]) == rank:
            end += 1
        items.insert(end, items.pop(index))
        return last_used

"""Where keys live on a Redis Cluster: key slots, and the hash tags that place VokaFlow's keys.

Pure module (no Redis). Redis Cluster puts a key in one of 16,384 slots by the CRC-16 of its
hash tag (the text between the first ``{`` and the next ``}``) or of the whole key; a script,
MULTI or multi-key command may only touch keys of one slot. The layout (see vokaflow.core.keys):

- **Partition groups.** Partition *p* of *N* has a tag of four hex digits whose slot is the middle
  of the *p*-th *N*-th of the slot space (`partition_tag`). A cluster made by ``redis-cli
  --cluster create`` gives each primary an equal run of slots, so the partitions of every worker
  type spread evenly over the primaries: with 3 primaries, 8 partitions put 3, 2 and 3 on them,
  12 put 4 on each. Every key the fetch script touches for one partition carries that tag: the
  queues of every type and level (``cpu.high.p3{a1f0}``), the unacked hash and its index, the
  bodies of large messages.
- **Task keys.** A task id made by VokaFlow on a cluster begins with its partition's tag
  (`task_id_for`), and every key of one task (record, result, cancellation flag, redeliveries)
  is tagged with the first four characters of its id (`task_tag`), so they share the slot of the
  task's queue: a submission writes its message and its record in one MULTI, and the fetch
  script stores a result with the acknowledgement. An id from elsewhere (Celery's own uuid4 for
  a chain's next task) is tagged the same way and lands on a slot of its own.

On a single Redis or Sentinel none of this applies: names stay as they are (`cpu.high.p3`).
"""

from __future__ import annotations

import binascii
import functools
import uuid

SLOTS = 16384
TAG_LENGTH = 4
_HEX = frozenset("0123456789abcdef")


def key_slot(key: str | bytes) -> int:
    """The slot Redis Cluster gives `key` (CRC-16/XMODEM of its hash tag, as CLUSTER KEYSLOT)."""
    data = key.encode() if isinstance(key, str) else key
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1:end]
    return binascii.crc_hqx(data, 0) % SLOTS


@functools.cache
def _tag_by_slot() -> dict[int, str]:
    """A four-hex-digit tag for every slot that has one (four in five slots; the others take a neighbour's)."""
    table: dict[int, str] = {}
    for n in range(16 ** TAG_LENGTH):
        tag = f"{n:04x}"
        table.setdefault(key_slot(tag), tag)
    return table


def tag_for_slot(slot: int) -> str:
    """The tag whose slot is `slot`, or the nearest slot's that has one."""
    table = _tag_by_slot()
    for distance in range(SLOTS):
        for candidate in (slot - distance, slot + distance):
            if candidate % SLOTS in table:
                return table[candidate % SLOTS]
    raise AssertionError("no tag at all")  # unreachable: the table is never empty


@functools.cache
def partition_tag(partition: int, partitions: int) -> str:
    """The hash tag of partition `partition` of `partitions`: the middle of its share of slots."""
    if not 0 <= partition < partitions:
        raise ValueError(f"partition {partition} is outside 0-{partitions - 1}")
    return tag_for_slot((2 * partition + 1) * SLOTS // (2 * partitions))


def task_id_for(tag: str) -> str:
    """A new task id (a uuid4's text) that begins with `tag`, so its keys share the tag's slot."""
    return tag + str(uuid.uuid4())[TAG_LENGTH:]


def task_tag(task_id: str) -> str:
    """The tag of a task's keys: its id's first four characters (the whole id when shorter or
    not hex, which places it on a slot of its own)."""
    head = task_id[:TAG_LENGTH]
    return head if len(head) == TAG_LENGTH and _HEX.issuperset(head) else task_id


def tagged(tag: str) -> str:
    """`tag` as it appears in a key: ``{a1f0}``."""
    return "{" + tag + "}"


class Layout:
    """How this process names keys: set once from REDIS_URL and VOKAFLOW_PARTITIONS (vokaflow.settings)."""

    cluster = False
    partitions = 8


LAYOUT = Layout()


def use_layout(*, cluster: bool, partitions: int) -> None:
    LAYOUT.cluster, LAYOUT.partitions = cluster, partitions


def group_tag(partition: int) -> str | None:
    """The hash tag of a partition's keys on a cluster (None on one Redis)."""
    return partition_tag(partition, LAYOUT.partitions) if LAYOUT.cluster else None


def new_task_id(partition: int) -> str:
    """A task id for a task routed to `partition`: on a cluster it begins with the partition's tag."""
    tag = group_tag(partition)
    return task_id_for(tag) if tag else str(uuid.uuid4())


def task_part(task_id: str) -> str:
    """The task id as it appears in its keys: ``{a1f0}3b2e-…`` on a cluster (tagged by its first
    four characters, or whole), the id itself on one Redis."""
    if not LAYOUT.cluster:
        return task_id
    tag = task_tag(task_id)
    return tagged(tag) + task_id[len(tag):]


def tag_in(key: str | bytes) -> str | None:
    """The partition-group tag a key carries (``celery-task-meta-{a1f0}…`` → a1f0), or None."""
    text = key.decode() if isinstance(key, bytes) else key
    start = text.find("{")
    tag = text[start + 1:start + 1 + TAG_LENGTH] if start >= 0 else ""
    return tag if len(tag) == TAG_LENGTH and text[start + 1 + TAG_LENGTH:start + 2 + TAG_LENGTH] == "}" \
        and _HEX.issuperset(tag) else None

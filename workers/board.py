"""The board a worker host shares with the solo worker processes it forks (workers.host).

A solo worker runs one task at a time, so its type scales by processes, which only the host that
forks them can add or stop. The host maps an anonymous shared page before forking; each solo
child writes, once a second, its slots in use, the age of the task its last fetch took first and
when that fetch was (one fixed-size record, its own), and the host's autoscaler reads every record
without a round trip to Redis. The host writes back what it decided per worker type (JSON behind
a sequence number, so a reader never takes half a write), which each child's heartbeat carries as
its `autoscale` object.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import time

RECORDS = 1024  # worker processes a host runs at once, at most
_RECORD = struct.Struct("<iiddd")  # pid, slots in use, wait seconds, written at, fetched at (CLOCK_MONOTONIC)
_SEQUENCE = struct.Struct("<Q")  # odd while the host writes the reports
_REPORT_BYTES = 16384  # the host's decisions per worker type, JSON, NUL-padded, after the sequence
_RECORDS_AT = _SEQUENCE.size + _REPORT_BYTES
SLOT_ENV, TYPE_ENV = "VOKAFLOW_BOARD_SLOT", "VOKAFLOW_BOARD_TYPE"


class Record:
    __slots__ = ("pid", "busy", "wait", "written_at", "fetched_at")

    def __init__(self, pid: int, busy: int, wait: float, written_at: float, fetched_at: float):
        self.pid, self.busy, self.wait, self.written_at, self.fetched_at = pid, busy, wait, written_at, fetched_at


class Board:
    def __init__(self):
        self.map = mmap.mmap(-1, _RECORDS_AT + RECORDS * _RECORD.size)  # MAP_SHARED: kept across fork
        self._free = list(range(RECORDS - 1, -1, -1))

    def take(self) -> int:
        """The host: a record for a new process (one that no live process holds), cleared."""
        record = self._free.pop()
        self.write(record, 0, 0.0, 0.0, pid=0)
        return record

    def give_back(self, record: int) -> None:
        """The host: the process holding `record` has exited."""
        self._free.append(record)

    def write(self, record: int, busy: int, wait: float, fetched_at: float, pid: int | None = None) -> None:
        _RECORD.pack_into(self.map, _RECORDS_AT + record * _RECORD.size, os.getpid() if pid is None else pid,
                          busy, wait, time.monotonic(), fetched_at)

    def read(self, record: int) -> Record:
        return Record(*_RECORD.unpack_from(self.map, _RECORDS_AT + record * _RECORD.size))

    def publish_for(self, worker_type: str, report: dict) -> None:
        """The host: its decisions for one worker type, beside the other types'."""
        self.publish({**self.reports(), worker_type: report})

    def publish(self, reports: dict[str, dict]) -> None:
        data = json.dumps(reports).encode()[:_REPORT_BYTES]
        sequence = _SEQUENCE.unpack_from(self.map, 0)[0]
        _SEQUENCE.pack_into(self.map, 0, sequence + 1)  # odd: being written
        self.map[_SEQUENCE.size:_RECORDS_AT] = data.ljust(_REPORT_BYTES, b"\0")
        _SEQUENCE.pack_into(self.map, 0, sequence + 2)

    def reports(self) -> dict[str, dict]:
        for _ in range(100):
            before = _SEQUENCE.unpack_from(self.map, 0)[0]
            data = self.map[_SEQUENCE.size:_RECORDS_AT].rstrip(b"\0")
            if before % 2 == 0 and _SEQUENCE.unpack_from(self.map, 0)[0] == before:
                return json.loads(data) if data else {}
            time.sleep(0.0001)
        return {}  # the host kept writing: the next heartbeat reads it


_board: Board | None = None


def create() -> Board:
    """The host's board (before it forks its first worker)."""
    global _board
    _board = Board()
    return _board


def my_slot() -> int | None:
    """This process's record on its host's board, None when it was not forked by workers.host."""
    slot = os.environ.get(SLOT_ENV)
    return int(slot) if _board is not None and slot and slot.isdigit() else None


def write(busy: int, wait: float, fetched_at: float) -> None:
    """A solo process: what it sees now."""
    slot = my_slot()
    if slot is not None and _board is not None:
        _board.write(slot, busy, wait, fetched_at)


def host_report() -> dict | None:
    """The host's latest decisions for this process's worker type."""
    if my_slot() is None or _board is None:
        return None
    return _board.reports().get(os.environ.get(TYPE_ENV, ""))

"""The board a worker host shares with the solo worker processes it forks (workers.host).

A solo worker runs one task at a time, so its type scales by processes, which only the host that
forks them can add or stop. The host maps an anonymous shared page before forking; each solo
child writes, once a second, its slots in use and the age of the task its last fetch took first
(one fixed-size record, its own), and the host's autoscaler reads every record without a round
trip to Redis. The host writes back what it decided per type (JSON), which each child's heartbeat
carries as its `autoscale` object.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
import time

RECORDS = 1024  # worker processes one host may have run (a name and a record are never reused)
_RECORD = struct.Struct("<iidd")  # pid, slots in use, wait seconds, CLOCK_MONOTONIC when written
_REPORT_BYTES = 16384  # the host's decisions per worker type, JSON, NUL-padded
SLOT_ENV, TYPE_ENV = "VOKAFLOW_BOARD_SLOT", "VOKAFLOW_BOARD_TYPE"


class Board:
    def __init__(self):
        self.map = mmap.mmap(-1, _REPORT_BYTES + RECORDS * _RECORD.size)  # MAP_SHARED: kept across fork

    def write(self, slot: int, busy: int, wait: float) -> None:
        _RECORD.pack_into(self.map, _REPORT_BYTES + slot * _RECORD.size, os.getpid(), busy, wait, time.monotonic())

    def read(self, slot: int) -> tuple[int, int, float, float]:
        """(pid, slots in use, wait seconds, monotonic time written); pid 0: never written."""
        return _RECORD.unpack_from(self.map, _REPORT_BYTES + slot * _RECORD.size)

    def publish_for(self, worker_type: str, report: dict) -> None:
        self.publish({**self.reports(), worker_type: report})

    def publish(self, reports: dict[str, dict]) -> None:
        data = json.dumps(reports).encode()[:_REPORT_BYTES]
        self.map[:_REPORT_BYTES] = data.ljust(_REPORT_BYTES, b"\0")

    def reports(self) -> dict[str, dict]:
        data = self.map[:_REPORT_BYTES].rstrip(b"\0")
        try:
            return json.loads(data) if data else {}
        except ValueError:  # read while the host was writing it: the next heartbeat reads it whole
            return {}


_board: Board | None = None


def create() -> Board:
    """The host's board (before it forks its first worker)."""
    global _board
    _board = Board()
    return _board


def publish_for(worker_type: str, report: dict) -> None:
    """The host: its decisions for one worker type (each of its processes' heartbeats carries them)."""
    if _board is not None:
        _board.publish_for(worker_type, report)


def read_env(env: dict[str, str]) -> tuple[int, int, float, float]:
    """The host: the record of the process started with `env`."""
    if _board is None:
        return 0, 0, 0.0, 0.0
    return _board.read(int(env[SLOT_ENV]))


def my_slot() -> int | None:
    """This process's record on its host's board, None when it was not forked by workers.host."""
    slot = os.environ.get(SLOT_ENV)
    return int(slot) if _board is not None and slot and slot.isdigit() else None


def write(busy: int, wait: float) -> None:
    slot = my_slot()
    if slot is not None and _board is not None:
        _board.write(slot, busy, wait)


def host_report() -> dict | None:
    """The host's latest decisions for this process's worker type."""
    if my_slot() is None or _board is None:
        return None
    return _board.reports().get(os.environ.get(TYPE_ENV, ""))

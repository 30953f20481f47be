"""Autoscaling: how many slots a worker runs, decided from queue pressure. Pure (no Redis, no Celery).

Configured per worker type: `VOKAFLOW_AUTOSCALE_<TYPE>=MIN:MAX` (1 ≤ MIN ≤ MAX) and
`VOKAFLOW_TARGET_WAIT_<TYPE>` (seconds, default 1). The rule, ticked once a second:

* **grow** when the oldest waiting task this worker could take is older than the target and every
  slot is busy: to twice the slots (at least one more), at most MAX and the ceiling (the cores a
  CPU_INTENSIVE worker may use), not while memory is above MEMORY_SHARE of what the process may
  use, at most once per GROW_COOLDOWN. From 1 slot, 32 are reached in five steps.
* **shrink** when, for IDLE_WINDOW seconds (VOKAFLOW_AUTOSCALE_IDLE, default 30) since the last
  change, no more than `peak` slots were busy at any tick and no waiting task was older than the
  target: to max(MIN, peak). An idle worker returns to MIN IDLE_WINDOW seconds after its last
  change, a half-used one to what it used.

"Waiting" is ready to run: age = now − max(enqueued, due, let out by a limit) of the task a fetch
takes first. A fetch takes the head of the highest non-empty level, so that is the task this worker
would take next, the oldest it could take under strict priority (an older task of a lower level
waits for the higher one to drain, whatever the slots). Until the next fetch the age keeps
growing with the clock: while every slot stays busy the worker fetches nothing, and the task after
the one it took has waited at most that long; the rule assumes it has, and a grow fetches and
corrects it (a fetch that finds nothing sets it to 0). Paused levels are not fetched from and
tasks held back by a limit are in no queue, so neither counts.

Shrinks come at most twice a minute (each needs IDLE_WINDOW seconds without a change); a grow may
follow a shrink after GROW_COOLDOWN, so a load that stops and starts every half minute reverses
the slots up to four times a minute, while a steady load does not reverse them (bench/autoscale.py).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from vokaflow.core.workers import WorkerType

GROW_COOLDOWN = 1.0  # seconds between two grows
IDLE_WINDOW = 30.0  # seconds of spare slots (and no old waiting task) before a shrink
MEMORY_SHARE = 0.85  # no grow while the memory in use is above this share of what may be used
DEFAULT_TARGET_WAIT = 1.0
LAST_DECISIONS = 10  # kept for the heartbeat and the console

# Message headers (epoch seconds): when the task was queued (tasks.messages writes it; the console
# reads each queue's oldest age off it) and when a fleet-wide limit let it out (tasks.limits).
ENQUEUED_AT_HEADER = "vokaflow_enqueued_at"
READY_AT_HEADER = "vokaflow_ready_at"


def ready_age(headers: Mapping, now: float) -> float | None:
    """How long a task has been ready to run: now − max(enqueued, due (`eta`), let out); None when
    the message carries none of them (not sent by VokaFlow or Celery)."""
    since = max(_number(headers.get(ENQUEUED_AT_HEADER)), _number(headers.get(READY_AT_HEADER)))
    eta = headers.get("eta")
    if isinstance(eta, str):
        try:
            since = max(since, datetime.fromisoformat(eta).timestamp())
        except ValueError:
            pass
    return max(0.0, now - since) if since else None


def _number(value) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def autoscale_env_var(worker_type: WorkerType) -> str:
    return f"VOKAFLOW_AUTOSCALE_{worker_type.short.upper()}"


def target_wait_env_var(worker_type: WorkerType) -> str:
    return f"VOKAFLOW_TARGET_WAIT_{worker_type.short.upper()}"


@dataclass(frozen=True)
class ScaleRange:
    min: int
    max: int
    target_wait: float  # seconds

    def as_dict(self) -> dict:
        return {"min": self.min, "max": self.max, "target_wait_seconds": self.target_wait}


def scale_range(worker_type: WorkerType, environ: Mapping[str, str] | None = None) -> ScaleRange | None:
    """The type's range, None when autoscaling is off (no VOKAFLOW_AUTOSCALE_<TYPE>). A malformed
    range or target raises ValueError with one line naming the variable and what it accepts."""
    environ = os.environ if environ is None else environ
    name, wait_name = autoscale_env_var(worker_type), target_wait_env_var(worker_type)
    raw = environ.get(name, "").strip()
    raw_wait = environ.get(wait_name, "").strip()
    if not raw:
        return None
    low, sep, high = raw.partition(":")
    try:
        if not sep:
            raise ValueError
        lowest, highest = int(low), int(high)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected MIN:MAX, two whole numbers with 1 <= MIN <= MAX "
                         "(for example 1:16)") from None
    if lowest < 1 or highest < lowest:
        raise ValueError(f"{name}={raw!r}: expected 1 <= MIN <= MAX (MIN is at least 1: scaling to zero "
                         "is Kubernetes' job)")
    target = DEFAULT_TARGET_WAIT
    if raw_wait:
        try:
            target = float(raw_wait)
        except ValueError:
            target = -1.0
        if not 0 < target <= 86400 or target != target:
            raise ValueError(f"{wait_name}={raw_wait!r}: expected seconds, a number above 0 and at most 86400")
    return ScaleRange(lowest, highest, target)


@dataclass(frozen=True)
class Decision:
    at: float  # epoch seconds
    old: int
    new: int
    why: str

    def as_dict(self) -> dict:
        return {"at": self.at, "from": self.old, "to": self.new, "why": self.why}


class Scaler:
    """The rule above, one tick at a time. `now` is monotonic seconds, `wall` epoch seconds (for
    the decision's `at`); both come from the caller, so tests drive a clock of their own."""

    def __init__(self, scale: ScaleRange, start: int, ceiling: int | None = None, idle_window: float = IDLE_WINDOW):
        self.range = scale
        self.idle_window = idle_window
        self.ceiling = max(scale.min, min(scale.max, ceiling or scale.max))  # never below MIN
        self.slots = max(scale.min, min(self.ceiling, start))
        self.last: Decision | None = None
        self.history: list[Decision] = []
        self._changed_at: float | None = None
        self._peak = 0
        self._spare_since: float | None = None

    def tick(self, now: float, wall: float, busy: int, wait: float, memory_ok: bool = True) -> Decision | None:
        """A decision when the slots change (self.slots is already the new number), else None."""
        slots, target = self.slots, self.range.target_wait
        if self._changed_at is None:
            self._changed_at = now
        pressed = wait > target
        if pressed and busy >= slots:
            self._spare_since = None
            if slots < self.ceiling and memory_ok and now - self._changed_at >= GROW_COOLDOWN:
                new = min(self.ceiling, max(slots + 1, slots * 2))
                return self._change(now, wall, new, f"oldest waiting task {wait:.1f} s > target {target:g} s "
                                                     f"with all {slots} slots busy")
            return None
        if pressed:  # an old task waits while a slot is free: it is about to be taken, no shrink
            self._spare_since = None
            return None
        if self._spare_since is None:
            self._spare_since, self._peak = now, busy
        self._peak = max(self._peak, busy)
        if self._peak >= slots or slots <= self.range.min:
            self._spare_since = None
            return None
        idle = self.idle_window
        if now - self._spare_since >= idle and now - self._changed_at >= idle:
            new = max(self.range.min, self._peak)
            return self._change(now, wall, new, f"at most {self._peak} of {slots} slots busy for {idle:g} s")
        return None

    def _change(self, now: float, wall: float, new: int, why: str) -> Decision:
        decision = Decision(round(wall, 3), self.slots, new, why)
        self.slots, self.last, self._changed_at, self._spare_since = new, decision, now, None
        self.history = [*self.history[-(LAST_DECISIONS - 1):], decision]
        return decision

    def report(self) -> dict:
        """What the heartbeat carries: the range, the slots decided (`target`; the caller adds the
        slots the pool has now) and the last decisions."""
        return {**self.range.as_dict(), "target": self.slots, "ceiling": self.ceiling,
                "last_change": self.last.as_dict() if self.last else None,
                "decisions": [d.as_dict() for d in reversed(self.history)]}

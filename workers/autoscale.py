"""In-process autoscaling: the worker's slots follow queue pressure (vokaflow.core.autoscale has
the rule; this applies it to the pool).

Once a second, in the worker's event loop (where the pool is driven, so no job is being handed
to a child meanwhile), the step feeds the rule the slots in use (Celery's reserved requests:
delivered and not yet acknowledged; the most seen in ten looks over that second) and the age of
the task the last fetch took first (vokaflow.hotpath.fetched_wait), and applies a change:

* threads: the pool is workers.pools.ThreadPool (swapped in for Celery's at start) and resizes;
* prefork: billiard starts new children; a shrink ends only children that hold no job, at this
  tick or a later one (workers.pools.shrink_idle);
* prefetch follows the slots (the consumer's QoS, and its initial count, which a reconnect restores);
* solo: one process is one slot, so the host's supervisor scales processes (workers.host); the
  step only reports what this process sees, through the supervisor's shared board.

Celery's private API relied on (tests/test_contracts.py): `Consumer.qos`,
`Consumer.initial_prefetch_count`, `Consumer.prefetch_multiplier`, `worker.state.reserved_requests`,
the prefork pool's `_pool` (billiard) with `grow`, `maintain_pool`, `_processes`, `_pool`, `_cache`.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import click
import psutil
from celery import bootsteps
from celery.concurrency.prefork import TaskPool as PreforkPool
from celery.concurrency.solo import TaskPool as SoloPool
from celery.concurrency.thread import TaskPool as CeleryThreadPool
from celery.utils.sysinfo import cpu_budget
from celery.worker import state
from django.conf import settings

from vokaflow.core.autoscale import MEMORY_SHARE, Scaler, ScaleRange, autoscale_env_var, scale_range
from vokaflow.core.workers import WorkerType
from vokaflow.hotpath import fetched_wait
from workers import board
from workers.pools import ThreadPool, grow_prefork, shrink_idle

logger = logging.getLogger(__name__)

TICK = 1.0  # seconds between decisions
SAMPLE = 0.1  # seconds between looks at the slots in use


def usable_cores() -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup CPU quota (Celery's own
    reading of both)."""
    return cpu_budget(use_cgroup_quota=True).count


def memory_share(proc_cgroup: Path = Path("/proc/self/cgroup"), cgroups: Path = Path("/sys/fs/cgroup")) -> float:
    """The share of the memory this process may use that is in use: of the nearest memory limit
    of its own cgroup or a parent (v2 `memory.max`, v1 `memory.limit_in_bytes`; a systemd unit's
    MemoryMax= and a pod's limit are such limits), page cache it could drop (`inactive_file`) not
    counted; of the machine's memory where no cgroup limits it."""
    for folder, used_name, limit_name, stat_name in _memory_cgroups(proc_cgroup, cgroups):
        try:
            limit = (folder / limit_name).read_text().strip()
            used = int((folder / used_name).read_text())
            stat = (folder / stat_name).read_text()
        except (OSError, ValueError):
            continue
        if limit.isdigit() and 0 < int(limit) < 1 << 60:
            inactive = next((int(line.split()[1]) for line in stat.splitlines()
                             if line.startswith(("inactive_file ", "total_inactive_file "))), 0)
            return max(0, used - inactive) / int(limit)
    memory = psutil.virtual_memory()
    return 1 - memory.available / memory.total


def _memory_cgroups(proc_cgroup: Path, cgroups: Path):
    """(folder, usage file, limit file, stat file) of this process's memory cgroup and its
    parents, nearest first, as /proc/self/cgroup names them (v2 line `0::/path`, v1 `n:memory:/path`)."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return
    for line in lines:
        number, controllers, path = line.split(":", 2)
        if number == "0" and controllers == "":
            root, files = cgroups, ("memory.current", "memory.max", "memory.stat")
        elif "memory" in controllers.split(","):
            root = cgroups / "memory"
            files = ("memory.usage_in_bytes", "memory.limit_in_bytes", "memory.stat")
        else:
            continue
        folder = root / path.strip("/")
        while True:  # inside a cgroup namespace the process's own cgroup is the root itself
            yield (folder, *files)
            if folder == root:
                break
            folder = folder.parent


def range_for(vokaflow_type: str | None) -> tuple[WorkerType, ScaleRange] | None:
    """The type's autoscale range; a malformed one stops the worker with one line naming the variable."""
    if vokaflow_type is None:
        return None
    try:
        worker_type = WorkerType.parse(vokaflow_type)
        found = scale_range(worker_type)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    return (worker_type, found) if found else None


class Autoscale(bootsteps.StartStopStep):
    """Sizes the pool between the type's MIN and MAX (VOKAFLOW_AUTOSCALE_<TYPE>)."""

    label = "Autoscale"
    requires = ("celery.worker.components:Pool",)

    def __init__(self, worker, vokaflow_type=None, **kwargs):
        super().__init__(worker, **kwargs)
        self.worker = worker
        self.scaler: Scaler | None = None
        self.kind = ""
        self._stop = threading.Event()
        self._busy = 0  # most slots in use seen since the last tick (sample)
        found = range_for(vokaflow_type)
        if found is None:
            return  # autoscaling off: exactly as before
        worker_type, scale = found
        pool_cls = worker.pool_cls
        if isinstance(pool_cls, type) and issubclass(pool_cls, SoloPool):
            self.kind = "solo"  # one slot a process: its host scales processes (workers.host, workers.board)
            if board.my_slot() is None:
                logger.warning("%s: a solo worker is one slot; %s scales solo workers by processes only under "
                               "the worker host (make run, manage.py launch), this one keeps its slot",
                               worker.hostname, autoscale_env_var(worker_type))
            return
        if pool_cls is CeleryThreadPool:
            worker.pool_cls = pool_cls = ThreadPool
        if isinstance(pool_cls, type) and issubclass(pool_cls, ThreadPool):
            self.kind = "threads"
        elif isinstance(pool_cls, type) and issubclass(pool_cls, PreforkPool):
            self.kind = "prefork"
        else:
            logger.warning("%s: the %s pool cannot be autoscaled; it keeps %d slots", worker.hostname,
                           pool_cls, worker.concurrency)
            return
        ceiling = usable_cores() if worker_type is WorkerType.CPU_INTENSIVE else None
        self.scaler = Scaler(scale, worker.concurrency, ceiling, settings.VOKAFLOW_AUTOSCALE_IDLE)
        # The pool is created after every step's __init__, with this many slots.
        worker.concurrency = worker.min_concurrency = self.scaler.slots
        worker.vokaflow_autoscale = self
        logger.info("%s autoscales %s slots between %d and %d (ceiling %d), target wait %g s; starts with %d",
                    worker.hostname, self.kind, scale.min, scale.max, self.scaler.ceiling, scale.target_wait,
                    self.scaler.slots)

    def register_with_event_loop(self, worker, hub):
        if self.scaler is not None:
            hub.call_repeatedly(SAMPLE, self.sample)
            hub.call_repeatedly(TICK, self.tick)

    def sample(self) -> None:
        """Slots in use, sampled ten times a tick: a slot between two tasks (acknowledged, its next
        task not yet fetched) is free at any single instant, so one look a second would miss a
        saturated pool; the tick takes the most seen since the previous one."""
        self._busy = max(self._busy, len(state.reserved_requests))

    def start(self, worker):
        if self.kind == "solo" and board.my_slot() is not None:
            threading.Thread(target=self._report_to_host, name="vokaflow-autoscale", daemon=True).start()

    def stop(self, worker):
        self._stop.set()

    def _report_to_host(self) -> None:
        ticks = 0
        while not self._stop.wait(SAMPLE):
            self.sample()
            ticks += 1
            if ticks * SAMPLE >= TICK:
                board.write(self._busy, fetched_wait.seconds, fetched_wait.at)
                ticks, self._busy = 0, 0

    def tick(self) -> None:
        scaler = self.scaler
        if scaler is None or self.worker.pool is None:
            return
        try:
            old = scaler.slots
            busy, self._busy = max(self._busy, len(state.reserved_requests)), 0
            wait = fetched_wait.seconds
            pressed = wait > scaler.range.target_wait and busy >= old and old < scaler.ceiling
            grow_allowed = not pressed or memory_share() < MEMORY_SHARE  # memory is read only when it matters
            decision = scaler.tick(time.monotonic(), time.time(), busy, wait, grow_allowed)
            if decision is not None:
                logger.info("%s: slots %d -> %d: %s", self.worker.hostname, decision.old, decision.new, decision.why)
                self.apply(old, decision.new)
            elif self.kind == "prefork":
                self._end_spare_children()
        except Exception:  # the next tick tries again; a failed step never stops the worker
            logger.exception("autoscale tick failed")

    def apply(self, old: int, new: int) -> None:
        worker, consumer = self.worker, getattr(self.worker, "consumer", None)
        pool = worker.pool
        if self.kind == "threads":
            pool.resize(new)
        elif new > old:
            grow_prefork(pool, new - old)
        worker.concurrency = new
        if consumer is not None and consumer.qos is not None and consumer.prefetch_multiplier:  # 0: no prefetch limit
            multiplier = consumer.prefetch_multiplier
            consumer.initial_prefetch_count = new * multiplier  # what a reconnect sets again
            if new > old:
                consumer.qos.increment_eventually((new - old) * multiplier)
            else:
                consumer.qos.decrement_eventually((old - new) * multiplier)
        if self.kind == "prefork" and new < old:
            self._end_spare_children()

    def _end_spare_children(self) -> None:
        """Prefork: end idle children until the pool has the slots decided."""
        scaler, pool = self.scaler, self.worker.pool
        spare = pool._pool._processes - scaler.slots if scaler else 0
        if spare > 0:
            ended = shrink_idle(pool, spare)
            if ended:
                logger.info("%s: ended %d idle pool processes", self.worker.hostname, ended)

    def slots_now(self) -> int:
        """The slots the pool has now (a prefork shrink waits for children to be idle)."""
        pool = self.worker.pool
        if self.kind == "prefork" and pool is not None and getattr(pool, "_pool", None) is not None:
            return pool._pool._processes
        return self.worker.concurrency

    def report(self) -> dict | None:
        """The heartbeat's `autoscale` object."""
        return {**self.scaler.report(), "slots": self.slots_now()} if self.scaler else None


def heartbeat_report(worker) -> dict | None:
    """What the heartbeat says of this worker's autoscaling: its own scaler, or (a solo process
    under workers.host) the range its host scales processes in."""
    step = getattr(worker, "vokaflow_autoscale", None)
    if step is not None:
        return step.report()
    return board.host_report()


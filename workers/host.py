"""The host's Celery processes (a worker per type, and beat) forked from one parent that imported
Django, Celery and the task code once, so they share those pages instead of each holding its own.

`python -m workers.host PLAN` (started by the launcher, see workers.launcher) imports everything a
worker needs, freezes those objects out of the garbage collector (so collections do not touch,
and copy, the shared pages) and forks one child per process of the plan; each child runs the
ordinary `celery -A vokaflow worker ...` command line in-process, under that command line as its
process title (setproctitle), so `ps` and `pgrep -f 'celery.*worker'` see a celery worker, and
`celery-<name>` as its short name (`ps -o comm`, top). The host supervises its children
with the launcher's policy (restart with back-off, at most 3 times within 60 s, then give up
loudly) and stops them on SIGTERM. Measured with bench/memory.py: see BENCHMARKS.md.

A worker type whose pool is solo (VOKAFLOW_POOL_<TYPE>=solo) runs here as several processes, one
slot each, and with VOKAFLOW_AUTOSCALE_<TYPE> the host forks and stops them by the autoscaling
rule (SoloProcesses, workers.board).
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import traceback

import setproctitle
from django.conf import settings

from vokaflow.core.autoscale import MEMORY_SHARE, Scaler, scale_range
from vokaflow.core.workers import WorkerType
from workers import board
from workers.autoscale import TICK, memory_share, usable_cores
from workers.launcher import Child, Launcher, ProcessSpec, launcher_for, read_plan

logger = logging.getLogger("vokaflow.host")


class ForkedProcess:
    """A child forked from this process that runs a `celery` command line (Popen's interface)."""

    def __init__(self, argv: list[str], name: str = "", env: dict[str, str] | None = None):
        self.argv = argv
        self.returncode: int | None = None
        self.pid = os.fork()
        if self.pid == 0:
            os.environ.update(env or {})  # e.g. Flower's login, kept off the command line
            _run_celery(argv, name)  # never returns

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = -1
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.argv, timeout or 0)
            time.sleep(0.05)
        return code


def _run_celery(argv: list[str], name: str) -> None:
    code = 1
    try:
        os.setsid()  # its own process group, like the launcher's other children
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)  # a killed host leaves no orphan workers (Linux)
        _set_title(argv, f"celery-{name}".encode()[:15])
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        from celery.bin.celery import main as celery_main

        # The same command line a separate process would run: `python -m celery ...` or `celery ...`.
        sys.argv = ["celery", *(argv[3:] if argv[1:3] == ["-m", "celery"] else argv[1:])]
        if "flower" in sys.argv:  # the app was imported before Flower here: vokaflow.celery could not teach it
            from vokaflow.flower_broker import teach

            teach()
        code = celery_main() or 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


PR_SET_PDEATHSIG, PR_SET_NAME = 1, 15


def _set_title(argv: list[str], comm: bytes) -> None:
    """Show the command line a separate process would have been started with (ps, pgrep -f) and
    `comm` as the short name (`ps -o comm` and top tell the children apart by it).

    Celery retitles a worker once it runs (`[celeryd: io@host:MainProcess] -active- (-A vokaflow
    worker ...)`) and beat, as it does every such process when setproctitle is installed; setproctitle
    also sets the short name from the title, so Celery's calls go through one that keeps `comm`."""
    from celery import platforms

    setproctitle.setproctitle(" ".join(argv))
    _prctl(PR_SET_NAME, comm)
    platforms._setproctitle = _NameKeepingTitles(comm)


class _NameKeepingTitles:
    """Stands in for the setproctitle module Celery calls (celery.platforms._setproctitle)."""

    def __init__(self, comm: bytes):
        self.comm = comm

    def setproctitle(self, title: str) -> None:
        setproctitle.setproctitle(title)
        _prctl(PR_SET_NAME, self.comm)


def _prctl(option: int, value: object) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(option, value)
    except (OSError, AttributeError):
        pass  # not Linux


def preload() -> None:
    """Import what every worker and beat needs, once, before forking them."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vokaflow.settings")
    os.environ["VOKAFLOW_TASK_PROCESS"] = "1"  # the task apps only, as in a `celery` process
    import django

    django.setup()
    from vokaflow.celery import app

    app.loader.import_default_modules()
    # The celery command line imports every subcommand and plugin (Flower's, the shell's
    # prompt_toolkit): 30 MB that each child would otherwise import for itself.
    import celery.apps.beat  # noqa: F401
    import celery.apps.worker  # noqa: F401
    import celery.bin.celery  # noqa: F401
    import celery.concurrency.prefork  # noqa: F401
    import celery.concurrency.thread  # noqa: F401
    import celery.worker.consumer  # noqa: F401
    import kombu.transport.redis  # noqa: F401

    import tasks.schedules.beat  # noqa: F401
    import vokaflow.transport  # noqa: F401
    import workers.bootsteps  # noqa: F401
    import workers.heartbeat  # noqa: F401

    gc.collect()
    gc.freeze()


def spawn(spec: ProcessSpec, env: dict | None) -> ForkedProcess:
    return ForkedProcess(spec.argv, spec.name, spec.env)


class SoloProcesses:
    """One worker type run as solo processes on this host: a fixed number, or as many as its
    autoscaling decides (vokaflow.core.autoscale), from what each process writes on the board
    (workers.board). A new process is named `<name>-<n>@host` with n never reused; scale-in stops
    the newest ones with SIGTERM (Celery's warm shutdown: the running task finishes, held tasks go
    back to the front of their queue, not as redeliveries). A process the launcher gave up on
    (it kept crashing) no longer counts as a slot."""

    def __init__(self, spec: ProcessSpec, shared: board.Board):
        self.spec = spec
        self.board = shared
        self.worker_type = WorkerType.parse(spec.scale["worker_type"])  # type: ignore[index]
        self.serial = 0
        self.launcher: Launcher | None = None
        self.children: list[Child] = []  # the processes that count as slots
        self.retiring: list[Child] = []  # asked to stop, their board records held until they exit
        self.scaler: Scaler | None = None
        self.ticked_at = 0.0
        start = int(spec.scale["processes"])  # type: ignore[index]
        try:
            scale = scale_range(self.worker_type)
        except ValueError as exc:  # each process stops with the same line; the host says it once
            logger.error("%s", exc)
            scale = None
        if scale is not None:
            ceiling = usable_cores() if self.worker_type is WorkerType.CPU_INTENSIVE else None
            self.scaler = Scaler(scale, start, ceiling, settings.VOKAFLOW_AUTOSCALE_IDLE)
            start = self.scaler.slots
        self.initial = [self._next_spec() for _ in range(start)]

    def _next_spec(self) -> ProcessSpec:
        self.serial += 1
        argv = list(self.spec.argv)
        if "-n" in argv:
            i = argv.index("-n") + 1
            node, at, host = argv[i].partition("@")
            argv[i] = f"{node}-{self.serial}{at}{host}"
        env = {**self.spec.env, board.SLOT_ENV: str(self.board.take()), board.TYPE_ENV: self.worker_type.value}
        return ProcessSpec(f"{self.spec.name}-{self.serial}", argv, env=env)

    def attach(self, launcher: Launcher) -> None:
        self.launcher = launcher
        self.children = [c for c in launcher.children if c.spec in self.initial]
        launcher.ticks.append(self.tick)
        self._publish()

    def _forget_gone(self) -> None:
        assert self.launcher is not None
        for child in [c for c in self.children if c.given_up]:
            logger.error("%s no longer counts as a slot of %s: it kept crashing", child.spec.name, self.spec.name)
            self.children.remove(child)
            self.board.give_back(int(child.spec.env[board.SLOT_ENV]))
        for child in [c for c in self.retiring if c not in self.launcher.children]:  # exited
            self.retiring.remove(child)
            self.board.give_back(int(child.spec.env[board.SLOT_ENV]))

    def tick(self) -> None:
        now = time.monotonic()
        if self.launcher is None or now - self.ticked_at < TICK:
            return
        self.ticked_at = now
        self._forget_gone()
        if self.scaler is None:
            return
        fresh = [r for r in (self.board.read(int(c.spec.env[board.SLOT_ENV])) for c in self.children)
                 if r.pid and now - r.written_at < 3 * TICK]  # a process that stopped writing counts as idle
        busy = sum(r.busy for r in fresh)
        # The wait the most recent fetch saw: an older one is stale (an idle process fetched since).
        wait = max(fresh, key=lambda r: r.fetched_at).wait if fresh else 0.0
        old = self.scaler.slots = len(self.children)
        pressed = wait > self.scaler.range.target_wait and busy >= old and old < self.scaler.ceiling
        decision = self.scaler.tick(now, time.time(), busy, wait, not pressed or memory_share() < MEMORY_SHARE)
        if decision is not None:
            logger.info("%s: processes %d -> %d: %s", self.spec.name, decision.old, decision.new, decision.why)
            for _ in range(decision.new - old):
                self.children.append(self.launcher.add(self._next_spec()))
            for child in reversed(self.children[decision.new:]):
                self.launcher.retire(child)
                self.retiring.append(child)
            self.children = self.children[:decision.new]
        self._publish()

    def report(self) -> dict | None:
        if self.scaler is None:
            return None
        report = self.scaler.report()
        report["target_processes"] = report.pop("target")
        return {**report, "processes": len(self.children), "scope": f"{socket.gethostname()}/{self.spec.name}"}

    def _publish(self) -> None:
        report = self.report()
        if report is not None:
            self.board.publish_for(self.worker_type.value, report)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    plan = read_plan(argv[0])
    preload()
    shared = board.create()
    solo = [SoloProcesses(spec, shared) for spec in plan["processes"] if spec.scale]
    plan["processes"] = [spec for spec in plan["processes"] if not spec.scale] + [s for g in solo for s in g.initial]
    launcher = launcher_for(plan, part="workers", spawn=spawn)  # its plan has no ready message
    for group in solo:
        group.attach(launcher)
    return launcher.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

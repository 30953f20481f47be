"""Supervises the processes of one host: API server, one worker per type, beat, Flower.

`manage.py launch` decides what to start (it needs Django's settings), writes that plan to a
file and replaces itself with `python -m workers.launcher PLAN`: the supervisor that stays up for
the fleet's whole life imports no Django and no task code (20 MB instead of 73, bench/memory.py).
The workers, beat and Flower are forked from one process of their own (workers.host).

Starts each child in its own process group, restarts one that dies (with growing back-off, at
most 3 times within 60 s, like systemd's StartLimitBurst/StartLimitIntervalSec) and gives up on
it loudly when it dies again within that window, and stops every child on SIGINT/SIGTERM:
SIGTERM first, SIGKILL after the grace period, so nothing is left behind.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import psutil

logger = logging.getLogger("vokaflow.launcher")

MAX_RESTARTS = 3  # restarts within RESTART_WINDOW seconds; a process that dies once more is given up on
RESTART_WINDOW = 60.0


@dataclass
class ProcessSpec:
    name: str
    argv: list[str]
    port: int | None = None
    env: dict[str, str] = field(default_factory=dict)  # added to the launcher's environment (secrets: not in `ps`)
    # When it serves: {"http": URL answering 200, "heartbeats": [worker names with a fresh
    # heartbeat]}, each optional; None: as soon as it runs. Data, so a plan file can carry it.
    ready: dict[str, Any] | None = None
    # A worker type run as solo processes (workers.host): {"worker_type": ..., "processes": n}; the
    # host runs n processes of this command line (or as many as the type's autoscaling decides).
    scale: dict[str, Any] | None = None


@dataclass
class Child:
    spec: ProcessSpec
    proc: Process | None = None
    restarts: int = 0  # in all (the process table shows it)
    restart_at: float | None = None
    recent_restarts: list[float] = field(default_factory=list)  # when each restart within the window was decided
    given_up: bool = False
    started_at: float = field(default_factory=time.monotonic)
    retiring: bool = False  # asked to stop for good (scale-in): not restarted, forgotten once it exited


class PortTaken(RuntimeError):
    pass


def check_ports(specs: list[ProcessSpec], host: str) -> None:
    """Raise PortTaken naming the port and, when it can be found, the process holding it."""
    for spec in specs:
        if spec.port is None:
            continue
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, spec.port))
            except OSError:
                raise PortTaken(f"port {spec.port} for {spec.name} on {host} is taken by "
                                f"{_port_holder(spec.port)}; stop it or choose another port") from None


def _port_holder(port: int) -> str:
    try:
        for conn in psutil.net_connections(kind="inet"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                proc = psutil.Process(conn.pid)
                return f"pid {conn.pid} ({' '.join(proc.cmdline())[:120]})"
    except (psutil.Error, OSError):
        pass
    return "another process"


class Process(Protocol):
    """What the launcher needs of a child: subprocess.Popen, or workers.host.ForkedProcess."""

    pid: int

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


def popen(spec: ProcessSpec, env: dict | None) -> Process:
    """A child started from its command line, in a process group of its own."""
    return subprocess.Popen(spec.argv, env=env, start_new_session=True)


class Launcher:
    def __init__(self, specs: list[ProcessSpec], ready_message: str | None = "VokaFlow is ready",
                 grace_seconds: float = 10.0, backoff_seconds: float = 1.0, env: dict | None = None,
                 report: Callable[[dict], None] | None = None, ready_timeout: float = 90.0,
                 spawn: Callable[[ProcessSpec, dict | None], Process] = popen,
                 heartbeat: Callable[[str], bool] | None = None, max_restarts: int = MAX_RESTARTS,
                 restart_window: float = RESTART_WINDOW, clock: Callable[[], float] = time.monotonic):
        self.clock = clock  # monotonic seconds: restarts are counted and delayed by it
        self.children = [Child(spec, started_at=clock()) for spec in specs]
        self.ready_message = ready_message  # printed once every process is ready: the last startup lines
        self.ready_timeout = ready_timeout
        self.spawn = spawn
        self.heartbeat = heartbeat  # is this worker's heartbeat fresh? (readiness of workers)
        self.grace_seconds = grace_seconds
        self.backoff_seconds = backoff_seconds
        self.max_restarts, self.restart_window = max_restarts, restart_window
        self.env = env
        self.report = report  # called with the process table every few seconds (health reads it)
        self.stopping = False
        self._reported_at = 0.0
        self.ticks: list[Callable[[], None]] = []  # called every loop (workers.host's process scaling)

    def run(self) -> int:
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)
        for child in self.children:
            self._start(child)
        self._wait_ready()
        while not self.stopping:
            self._watch()
            for tick in self.ticks:
                try:
                    tick()
                except Exception:
                    logger.exception("a supervisor tick failed")
            self._report()
            time.sleep(0.2)
        self.stop()
        return 0

    def add(self, spec: ProcessSpec) -> Child:
        """Start one more process while running (scale-out)."""
        child = Child(spec, started_at=self.clock())
        self.children.append(child)
        self._start(child)
        return child

    def retire(self, child: Child) -> None:
        """Ask a process to stop for good (SIGTERM: a worker's warm shutdown finishes its task and
        hands back what it holds); it is not restarted, and forgotten once it exited."""
        child.retiring = True
        if child.proc is not None and child.proc.poll() is None:
            logger.info("stopping %s (scale-in)", child.spec.name)
            _signal_group(child.proc, signal.SIGTERM)

    def process_table(self) -> dict:
        def state(child: Child) -> str:
            if child.given_up:
                return "given_up"
            if child.restart_at is not None:
                return "restarting"
            return "running" if child.proc and child.proc.poll() is None else "exited"
        return {c.spec.name: {"state": state(c), "restarts": c.restarts, "pid": c.proc.pid if c.proc else None}
                for c in self.children}

    def _report(self, force: bool = False) -> None:
        if self.report is None or (not force and time.monotonic() - self._reported_at < 2):
            return
        self._reported_at = time.monotonic()
        try:
            self.report(self.process_table())
        except Exception as exc:  # Redis away: the next report tries again
            logger.warning("could not report process states: %s", exc)

    def _on_signal(self, signum, frame):
        if not self.stopping:
            logger.info("received %s: stopping every process", signal.Signals(signum).name)
        self.stopping = True

    def _start(self, child: Child) -> None:
        logger.info("starting %s: %s", child.spec.name, " ".join(child.spec.argv))
        env = {**(self.env or os.environ), **child.spec.env} if child.spec.env else self.env
        child.proc = self.spawn(child.spec, env)
        child.started_at = self.clock()
        child.restart_at = None

    def _watch(self) -> None:
        now = self.clock()
        for child in list(self.children):
            if child.retiring:
                if child.proc is None or child.proc.poll() is not None:
                    self.children.remove(child)
                continue
            if child.given_up or child.proc is None:
                continue
            if child.restart_at is not None:
                if now >= child.restart_at:
                    self._start(child)
                continue
            code = child.proc.poll()
            if code is None:
                continue
            # Only the restarts of the last restart_window seconds count: a process that dies now and
            # then is restarted every time, one that keeps dying is given up on.
            child.recent_restarts = [t for t in child.recent_restarts if now - t < self.restart_window]
            if len(child.recent_restarts) >= self.max_restarts:
                child.given_up = True
                logger.error("GAVE UP on %s: it exited with %s after %d restarts within %.0f s; the rest keeps "
                             "running", child.spec.name, code, len(child.recent_restarts), self.restart_window)
                self._report(force=True)
                continue
            delay = self.backoff_seconds * 2 ** len(child.recent_restarts)
            child.recent_restarts.append(now)
            child.restarts += 1
            child.restart_at = now + delay
            logger.warning("%s exited with %s; restart %d of %d within %.0f s in %.1f s", child.spec.name, code,
                           len(child.recent_restarts), self.max_restarts, self.restart_window, delay)

    def _wait_ready(self) -> None:
        """Print the ready message once every process serves (the API's health passes, each worker's
        heartbeat is fresh, Flower answers), so it comes after their startup output."""
        if self.ready_message is None:
            return
        deadline = time.monotonic() + self.ready_timeout
        while not self.stopping:
            self._watch()
            waiting = [c.spec.name for c in self.children if not self._is_ready(c)]
            if not waiting:
                print(self.ready_message, flush=True)
                return
            if time.monotonic() > deadline:
                logger.error("not ready within %.0f s: %s (see their output above)", self.ready_timeout,
                             ", ".join(waiting))
                return
            time.sleep(0.5)

    def _is_ready(self, child: Child) -> bool:
        if child.given_up or child.proc is None or child.proc.poll() is not None:
            return False
        ready = child.spec.ready or {}
        try:
            if ready.get("http") and _answers(ready["http"]) != 200:
                return False
            return all(self.heartbeat is None or self.heartbeat(name) for name in ready.get("heartbeats", ()))
        except Exception:  # not answering yet
            return False

    def stop(self) -> None:
        running = [(c.spec.name, c.proc) for c in self.children if c.proc and c.proc.poll() is None]
        for _, proc in running:
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_seconds
        for name, proc in running:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop within %.0f s: killing it", name, self.grace_seconds)
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
        for _, proc in running:  # leftovers of a group whose leader already exited
            _signal_group(proc, signal.SIGKILL)
        logger.info("all processes stopped")


def _answers(url: str) -> int | None:
    """The HTTP status a GET gets, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def _signal_group(proc: Process, signum: int) -> None:
    try:
        os.killpg(proc.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def systemd_unit(spec: ProcessSpec, *, root: str, env_file: str, grace_seconds: float,
                 exec_start_pre: str | None = None) -> str:
    """A unit that restarts the process on failure, at most 3 times a minute, like the launcher.

    (systemd counts starts within StartLimitIntervalSec, the first start included: a unit that
    fails from its very first start is restarted twice, one that had run for a minute 3 times.)"""
    pre = f"ExecStartPre={exec_start_pre}\n" if exec_start_pre else ""
    return f"""[Unit]
Description=VokaFlow {spec.name}
After=network-online.target redis-server.service postgresql.service
Wants=network-online.target
PartOf=vokaflow.target
StartLimitIntervalSec=60
StartLimitBurst=3

[Service]
Type=simple
WorkingDirectory={root}
EnvironmentFile={env_file}
{pre}ExecStart={" ".join(spec.argv)}
Restart=on-failure
RestartSec=2
KillMode=mixed
TimeoutStopSec={int(grace_seconds)}

[Install]
WantedBy=vokaflow.target
"""


SYSTEMD_TARGET = """[Unit]
Description=VokaFlow: API, workers, beat and Flower
Wants={wants}

[Install]
WantedBy=multi-user.target
"""


def redis_reporter(client: Any, part: str = "") -> Callable[[dict], None]:
    """Writes the process table to Redis for health to read (keys.LAUNCHERS, field = host name,
    and `part` for a supervisor below the launcher, such as the worker host)."""
    from vokaflow.core import keys

    host = socket.gethostname() + (f"/{part}" if part else "")

    def report(table: dict) -> None:
        client.hset(keys.LAUNCHERS, host, json.dumps({"reported_at": time.time(), "processes": table}))
    return report


def read_plan(path: str) -> dict:
    """A plan `manage.py launch` wrote: processes, health URL, grace and back-off, where to report."""
    with open(path) as file:
        plan = json.load(file)
    plan["processes"] = [ProcessSpec(**spec) for spec in plan["processes"]]
    return plan


def launcher_for(plan: dict, part: str = "", **options) -> Launcher:
    """The launcher a plan describes, reporting to and reading heartbeats from the plan's Redis."""
    report = heartbeat = None
    if plan.get("redis_url"):
        from vokaflow.core import keys
        from vokaflow.redis_connect import client_from_url

        client = client_from_url(plan["redis_url"], sentinel_master=plan.get("sentinel_master"))
        report = redis_reporter(client, part)

        def heartbeat(name: str) -> bool:
            return bool(client.exists(keys.WORKER.format(name)))
    return Launcher(plan["processes"], ready_message=plan.get("ready_message"), grace_seconds=plan["grace_seconds"],
                    backoff_seconds=plan["backoff_seconds"], report=report, heartbeat=heartbeat, **options)


def main(argv: list[str]) -> int:
    """`python -m workers.launcher PLAN`: run the plan `manage.py launch` wrote (JSON)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return launcher_for(read_plan(argv[0])).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Memory of an idle fleet: RSS and PSS of every process `make run` starts, after it is ready.

    .venv/bin/python bench/memory.py [--settle 10]

Starts `manage.py launch --setup` on free ports with its own Redis database, waits for the
ready line and `--settle` seconds, reads /proc/<pid>/smaps_rollup of the launcher and every
descendant, prints one row per process and the totals, then stops the fleet. PSS (proportional
set size) divides each shared page among the processes that map it, so it adds up to what the
fleet really costs the host.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

import psutil
from common import ROOT, bench_env, services


def memory_kb(pid: int) -> tuple[int, int]:
    """(RSS, PSS) in kB from smaps_rollup."""
    values = {}
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            parts = line.split()
            if parts[0] in ("Rss:", "Pss:"):
                values[parts[0]] = int(parts[1])
    return values.get("Rss:", 0), values.get("Pss:", 0)


def describe(proc: psutil.Process) -> str:
    if proc.name().startswith("celery-"):  # forked by workers.host, named after its process
        return f"{proc.name()} (forked by workers.host)"
    cmd = proc.cmdline()
    text = " ".join(os.path.basename(cmd[0]) if i == 0 else part for i, part in enumerate(cmd))
    return text.replace(str(ROOT) + "/", "")[:90]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settle", type=float, default=10, help="seconds to wait after ready")
    args = parser.parse_args()
    (ROOT / ".run").mkdir(exist_ok=True)
    env = bench_env(VOKAFLOW_PORT=services.free_port(0), FLOWER_PORT=services.free_port(0),
                    FLOWER_BASIC_AUTH="bench:bench-password", DATABASE_URL=f"sqlite:///{ROOT}/.run/bench-memory.sqlite3")
    # The fleet's output goes to a file: a pipe nobody reads would fill and block its shutdown.
    log_path = ROOT / ".run" / "bench-memory.log"
    with open(log_path, "w") as log:
        launcher = subprocess.Popen([sys.executable, "manage.py", "launch", "--setup"], cwd=ROOT, env=env,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "VokaFlow is ready" not in log_path.read_text(errors="replace"):
            if launcher.poll() is not None:
                raise SystemExit(f"the launcher exited with {launcher.returncode}; see {log_path}")
            if time.monotonic() > deadline:
                raise SystemExit(f"the fleet did not get ready within 120 s; see {log_path}")
            time.sleep(0.5)
        time.sleep(args.settle)
        root = psutil.Process(launcher.pid)
        rows = []
        for proc in [root, *root.children(recursive=True)]:
            try:
                rss, pss = memory_kb(proc.pid)
                rows.append((describe(proc), proc.pid, rss, pss))
            except (psutil.Error, OSError):
                continue
        print(f"{'process':<92} {'pid':>7} {'RSS MB':>8} {'PSS MB':>8}")
        for name, pid, rss, pss in rows:
            print(f"{name:<92} {pid:>7} {rss / 1024:>8.1f} {pss / 1024:>8.1f}")
        print(f"{'total (' + str(len(rows)) + ' processes)':<92} {'':>7} {sum(r[2] for r in rows) / 1024:>8.1f} "
              f"{sum(r[3] for r in rows) / 1024:>8.1f}")
    finally:
        try:
            fleet = psutil.Process(launcher.pid).children(recursive=True)
        except psutil.Error:
            fleet = []
        os.killpg(launcher.pid, signal.SIGTERM)
        try:
            launcher.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(launcher.pid, signal.SIGKILL)
        for proc in psutil.wait_procs(fleet, timeout=15)[1]:  # nothing may outlive the bench
            proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())

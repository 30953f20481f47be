"""The worker host (workers.host) forks real celery workers that look like celery workers to `ps`."""

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tasks.submit import submit_task
from tests.conftest import ROOT, wait_for, wait_for_state, worker_env

pytestmark = pytest.mark.django_db(transaction=True)


def pgrep(pattern: str, parent: int) -> list[int]:
    result = subprocess.run(["pgrep", "-f", "-P", str(parent), pattern], capture_output=True, text=True)
    return [int(pid) for pid in result.stdout.split()]


def test_a_forked_worker_is_found_by_pgrep_as_a_celery_worker(tmp_path):
    name = f"general-{uuid.uuid4().hex[:8]}@test"
    argv = [sys.executable, "-m", "celery", "-A", "vokaflow", "worker", "--type", "general", "-P", "threads",
            "-c", "1", "-n", name, "-l", "INFO", "--without-mingle", "--without-gossip"]
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"processes": [{"name": "general", "argv": argv}], "ready_message": None,
                                "grace_seconds": 10, "backoff_seconds": 1, "redis_url": None}))
    log = tmp_path / "host.log"
    host = subprocess.Popen([sys.executable, "-m", "workers.host", str(plan)], cwd=ROOT, env=worker_env(),
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: f"{name} ready." in log.read_text() or host.poll() is not None, 60, 0.1, "the worker")
        assert host.poll() is None, log.read_text()
        # What an operator types finds the forked worker, a child of the host...
        found = pgrep("celery.*worker", host.pid)
        assert len(found) == 1, (found, log.read_text())
        cmdline = Path(f"/proc/{found[0]}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        assert f"-A vokaflow worker --type general -P threads -c 1 -n {name}" in cmdline
        assert "workers.host" not in cmdline, cmdline
        # ...keeps its short name (ps -o comm, top)...
        assert Path(f"/proc/{found[0]}/comm").read_text().strip() == "celery-general"
        # ...and is the worker that runs the tasks.
        assert wait_for_state(submit_task("vokaflow.echo", args=["forked"]))["result"]["args"] == ["forked"]
    finally:
        os.killpg(host.pid, signal.SIGTERM)
        host.wait(30)

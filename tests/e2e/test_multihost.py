"""A real multi-host run: Redis, the API host and two worker hosts in their own network namespaces.

One worker host is cut off mid-run; every task still completes once the visibility timeout
hands its unacknowledged tasks to the other host. Needs root (ip netns); skipped otherwise.
"""

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import ROOT, wait_for, worker_env

SUBNET = "10.213.7"  # addresses of the test's own hosts, inside namespaces it creates and deletes
HOSTS = {"redis": 1, "api": 2, "w1": 3, "w2": 4}


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


@pytest.fixture
def network():
    if os.geteuid() != 0 or not shutil.which("ip"):
        pytest.skip("network namespaces need root and iproute2")
    prefix = f"vf{os.getpid() % 100000}"
    names = {host: f"{prefix}-{host}" for host in HOSTS}
    switch = f"{prefix}-sw"
    try:
        sh("ip", "netns", "add", switch)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot create network namespaces here: {exc.stderr.decode().strip()}")
    try:
        sh("ip", "netns", "exec", switch, "ip", "link", "add", "br0", "type", "bridge")
        sh("ip", "netns", "exec", switch, "ip", "link", "set", "br0", "up")
        for host, number in HOSTS.items():
            ns = names[host]
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", f"{prefix}{number}a", "type", "veth", "peer", "name", f"{prefix}{number}b")
            sh("ip", "link", "set", f"{prefix}{number}a", "netns", ns)
            sh("ip", "link", "set", f"{prefix}{number}b", "netns", switch)
            sh("ip", "netns", "exec", switch, "ip", "link", "set", f"{prefix}{number}b", "master", "br0", "up")
            sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{SUBNET}.{number}/24", "dev", f"{prefix}{number}a")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", f"{prefix}{number}a", "up")
            sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield {"names": names, "link": lambda host: f"{prefix}{HOSTS[host]}a"}
    finally:
        for ns in [*names.values(), switch]:
            subprocess.run(["ip", "netns", "pids", ns], capture_output=True)
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                subprocess.run(["kill", "-9", pid], capture_output=True)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def in_ns(ns: str, argv: list[str], env: dict, log=None) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", ns, *argv], cwd=ROOT, env=env, stdout=log or subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, start_new_session=True)


@pytest.mark.slow
def test_every_task_completes_when_a_worker_host_is_cut_off(network, tmp_path):
    from tests.conftest import redis_server_binary

    names = network["names"]
    redis_url = f"redis://{SUBNET}.{HOSTS['redis']}:6379/0"
    env = worker_env(REDIS_URL=redis_url, DATABASE_URL=f"sqlite:///{tmp_path / 'multihost.sqlite3'}",
                     VOKAFLOW_VISIBILITY_TIMEOUT=5, DJANGO_SETTINGS_MODULE="vokaflow.settings")
    procs = [in_ns(names["redis"], [redis_server_binary(), "--bind", f"{SUBNET}.{HOSTS['redis']}", "--port", "6379",
                                    "--save", "", "--appendonly", "no", "--protected-mode", "no"], env)]
    try:
        def run_on_api(code: str) -> str:
            return subprocess.run(["ip", "netns", "exec", names["api"], sys.executable, "-c", code], cwd=ROOT,
                                  env=env, capture_output=True, text=True, check=True, timeout=60).stdout

        count = f"import redis; print(redis.Redis.from_url({redis_url!r}).scard('vokaflow:test:seen'))"
        ping = f"import redis; redis.Redis.from_url({redis_url!r}).ping()"
        wait_for(lambda: _ok(run_on_api, ping), 20, 0.2, "Redis on its host")
        logs = {}
        for host in ("w1", "w2"):
            logs[host] = open(tmp_path / f"{host}.log", "w")
            procs.append(in_ns(names[host], [sys.executable, "-m", "celery", "-A", "vokaflow", "worker", "--type",
                                             "general", "-P", "threads", "-c", "2", "-n", f"{host}@multihost",
                                             "--include", "tests.e2e.worker_tasks", "--without-mingle",
                                             "--without-gossip", "-l", "INFO"], env, logs[host]))
        wait_for(lambda: all(" ready." in (tmp_path / f"{h}.log").read_text() for h in ("w1", "w2")), 60, 0.2,
                 "both worker hosts to be ready")
        run_on_api("import django; django.setup()\n"
                   "import tests.e2e.worker_tasks\n"
                   "from tasks.submit import enqueue, prepare\n"
                   "for _ in range(2):\n"
                   "    enqueue([prepare('tests.record', args=[0.01]) for _ in range(1000)])\n")
        wait_for(lambda: int(run_on_api(count)) >= 300, 60, 0.2, "the run to be under way")
        sh("ip", "netns", "exec", names["w1"], "ip", "link", "set", network["link"]("w1"), "down")
        seen_at_cut = int(run_on_api(count))
        assert seen_at_cut < 2000, "the run finished before the cut; make the tasks longer"
        wait_for(lambda: int(run_on_api(count)) == 2000, 180, 1.0, "every task to complete after the cut")
        assert "w2@multihost" in (tmp_path / "w2.log").read_text()
    finally:
        for proc in procs:
            try:
                os.killpg(proc.pid, 9)
            except ProcessLookupError:
                pass


def _ok(run, code: str) -> bool:
    try:
        run(code)
        return True
    except subprocess.CalledProcessError:
        return False

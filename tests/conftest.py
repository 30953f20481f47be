"""Shared fixtures: the suite's own Redis database, real `celery worker` subprocesses, API clients."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
import redis
from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent
# Our keys only: never FLUSHALL, and kombu's bindings of running workers stay.
OUR_KEY_PATTERNS = ["cpu.*", "io.*", "memory.*", "network.*", "general.*", "vokaflow:*",
                    "celery-task-meta-*", "unacked*"]


HEARTBEAT_TTL = 2  # seconds; short, so a killed worker leaves the fleet quickly


@pytest.fixture(autouse=True, scope="session")
def short_heartbeats():
    """The test process reads heartbeats with the same TTL its workers write them with."""
    settings.VOKAFLOW_HEARTBEAT_TTL = HEARTBEAT_TTL


@pytest.fixture(autouse=True, scope="session")
def static_files():
    """The admin, the API docs and the console are served with their static files, as `make run`
    serves them (collectstatic copies only what changed: about a second)."""
    from django.core.management import call_command

    call_command("collectstatic", "--noinput", verbosity=0)


def wait_for(condition, timeout: float = 20.0, interval: float = 0.05, message: str = "condition"):
    """Poll until condition() is truthy; fail with `message` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def redis_client():
    from vokaflow.redis import get_redis

    client = get_redis()
    client.ping()
    return client


def delete_our_keys(client) -> None:
    for pattern in OUR_KEY_PATTERNS:
        keys = list(client.scan_iter(match=pattern, count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start:start + 500])


@pytest.fixture(autouse=True)
def clean_redis(redis_client):
    delete_our_keys(redis_client)
    yield


def test_database_url() -> str:
    """The URL of the database the tests run against (the test database, once it is set up)."""
    from django.db import connection

    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def worker_env(**overrides) -> dict:
    env = os.environ.copy()
    env.update({
        "DATABASE_URL": test_database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "SECRET_KEY": settings.SECRET_KEY,
        "PYTHONUNBUFFERED": "1",
        "VOKAFLOW_RESTORE_INTERVAL": "0.5",
        "VOKAFLOW_HEARTBEAT_SECONDS": "0.5",
        "VOKAFLOW_HEARTBEAT_TTL": str(HEARTBEAT_TTL),
    })
    env.update({k: str(v) for k, v in overrides.items()})
    return env


class Worker:
    """A real `celery -A vokaflow worker` in its own process group."""

    def __init__(self, worker_type: str, log_dir: Path, concurrency: int = 1, pool: str = "threads",
                 partitions: str | None = None, env: dict | None = None):
        self.name = f"{worker_type}-{uuid.uuid4().hex[:8]}@test"
        self.log_path = log_dir / f"{self.name}.log"
        argv = [sys.executable, "-m", "celery", "-A", "vokaflow", "worker", "--type", worker_type,
                "-P", pool, "-c", str(concurrency), "-n", self.name, "-l", "INFO",
                "--without-mingle", "--without-gossip", "--include", "tests.e2e.worker_tasks"]
        if partitions:
            argv += ["--partitions", partitions]
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env or worker_env(), stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = 30.0) -> Worker:
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"worker {self.name} exited with {self.proc.returncode}:\n{self.output()}")
            return " ready." in self.output()
        wait_for(ready, timeout, 0.1, f"worker {self.name} to be ready")
        return self

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self, signum=signal.SIGKILL) -> None:
        try:
            os.killpg(self.proc.pid, signum)
        except ProcessLookupError:
            pass
        self.proc.wait(10)

    def terminate(self) -> None:
        """Ask for a warm shutdown without waiting (stop() waits)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
            except ProcessLookupError:
                pass
        self.log.close()


@pytest.fixture
def start_worker(tmp_path, django_db_setup):
    """start_worker("io", concurrency=2, partitions="0-3", env=worker_env(...)) → a ready Worker."""
    started: list[Worker] = []

    def start(worker_type: str, wait: bool = True, **kwargs) -> Worker:
        worker = Worker(worker_type, tmp_path, **kwargs)
        started.append(worker)
        return worker.wait_ready() if wait else worker

    yield start
    for worker in started:
        worker.terminate()
    for worker in started:
        worker.stop()


@pytest.fixture(scope="module")
def module_workers(tmp_path_factory, django_db_setup):
    """One worker of each type, shared by a module's tests (each concurrency 2, threads)."""
    log_dir = tmp_path_factory.mktemp("workers")
    workers = {t: Worker(t, log_dir, concurrency=2) for t in ("cpu", "io", "memory", "network", "general")}
    try:
        for worker in workers.values():
            worker.wait_ready()
        yield workers
    finally:
        for worker in workers.values():
            worker.terminate()
        for worker in workers.values():
            worker.stop()


def task_meta(task_id: str) -> dict:
    from vokaflow.celery import app

    return app.backend.get_task_meta(task_id)


def wait_for_state(task_id: str, states=("SUCCESS",), timeout: float = 20.0) -> dict:
    return wait_for(lambda: (m := task_meta(task_id))["status"] in states and m, timeout,
                    message=f"task {task_id} to reach {states}")


@pytest.fixture
def user(db):
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_user("alice", password="alice-password")


@pytest.fixture
def api(user):
    """An APIClient logged in as a plain (non-staff) user."""
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(user)
    return client


def user_with_perms(username: str, *perms: str, **flags):
    """A user (staff etc. by `flags`) holding the permissions named "app.codename"."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission

    user = get_user_model().objects.create_user(username, password=None, **flags)  # no hashing: tests log in by force
    for perm in perms:
        app_label, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return get_user_model().objects.get(pk=user.pk)  # a fresh object: no cached permissions


def client_as(user):
    """An APIClient authenticated as `user`."""
    from rest_framework.test import APIClient

    client = APIClient()
    client.force_authenticate(user)
    return client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_status(url: str, headers: dict | None = None) -> int | None:
    """The HTTP status of a GET, or None when nothing answers."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        return urllib.request.urlopen(request, timeout=3).status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def run_python(code: str, env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run Python code in a fresh interpreter of this virtualenv (a process with no web server)."""
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def redis_server_binary() -> str:
    from scripts.services import redis_server_binary as find

    binary = find()
    if binary is None:
        pytest.skip("no redis-server binary to run a Redis of the test's own")
    return binary


class OwnRedis:
    """A Redis of a test's own, with AOF on, that can be stopped and started again."""

    def __init__(self, folder: Path):
        self.binary, self.folder, self.port = redis_server_binary(), folder, free_port()
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
                                      str(self.folder), "--appendonly", "yes", "--appendfsync", "everysec",
                                      "--save", ""], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port)
        wait_for(lambda: pings(client), 10, 0.05, "the test's Redis to start")
        return client

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: Redis writes its AOF and exits
            self.proc.wait(20)


def pings(client) -> bool:
    try:
        return client.ping()
    except redis.ConnectionError:
        return False


class Cluster:
    """A Redis Cluster of the suite's own: 3 primaries, 3 replicas (scripts/cluster.py)."""

    def __init__(self, ports: list[int], procs: list[subprocess.Popen]):
        from scripts.cluster import url_for

        self.ports, self.procs, self.url = ports, procs, url_for(ports)

    def client(self):
        from vokaflow.redis_connect import cluster_client

        return cluster_client(self.url)

    def primaries(self) -> list[redis.Redis]:
        nodes = [redis.Redis(port=p) for p in self.ports]
        return [n for n in nodes if n.execute_command("ROLE")[0] == b"master"]

    def flush(self) -> None:
        for node in self.primaries():
            node.flushall()

    def kill(self, port: int) -> None:
        """SIGKILL the node on `port` (its replica takes over after the node timeout)."""
        proc = next(p for p in self.procs if f"--port {port} " in " ".join(map(str, p.args)) + " ")
        proc.kill()
        proc.wait(10)

    def restart(self, port: int) -> None:
        """Start the killed node again: it rejoins, as a replica of the primary that replaced it."""
        from scripts.cluster import cluster_ok

        index = next(i for i, p in enumerate(self.procs) if f"--port {port} " in " ".join(map(str, p.args)) + " ")
        self.procs[index] = subprocess.Popen(self.procs[index].args, stdout=subprocess.DEVNULL,
                                             stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for(lambda: cluster_ok(self.ports), 60, 0.2, "the cluster to be whole again")
        wait_for(lambda: len(self.primaries()) == 3 and all(
            redis.Redis(port=p).execute_command("ROLE")[0] in (b"master", b"slave") for p in self.ports),
            60, 0.2, "every node to have a role")


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """Started once for the suite on VOKAFLOW_TEST_CLUSTER_PORTS (7100-7105), never a cluster
    someone else runs: a cluster has no SELECT, so the suite isolates itself with processes of
    its own, which it empties between tests and stops at the end."""
    import shutil

    from scripts.cluster import cluster_ok, parse_ports, start, stop

    if not (shutil.which("redis-server") and shutil.which("redis-cli")):
        (pytest.fail if os.environ.get("CI") else pytest.skip)("the cluster tests need redis-server and redis-cli 7+")
    ports = parse_ports(os.environ.get("VOKAFLOW_TEST_CLUSTER_PORTS", "7100-7105"))
    procs = [] if cluster_ok(ports) else start(ports, tmp_path_factory.mktemp("cluster"), appendonly=False)
    yield Cluster(ports, procs)
    stop(procs)


@pytest.fixture
def cluster(redis_cluster):
    redis_cluster.flush()
    return redis_cluster


@pytest.fixture
def on_cluster(cluster, settings):
    """This test process names keys and talks to Redis as a platform on the cluster does
    (REDIS_URL=rediscluster://…); one Redis again afterwards."""
    from vokaflow.core.slots import use_layout
    from vokaflow.redis import get_redis

    def switch(url: str, is_cluster: bool) -> None:
        settings.REDIS_URL = url
        use_layout(cluster=is_cluster, partitions=settings.VOKAFLOW_PARTITIONS)
        get_redis.cache_clear()
        _clear_layout_caches()

    single = settings.REDIS_URL
    switch(cluster.url, True)
    yield cluster
    switch(single, False)


def _clear_layout_caches() -> None:
    from vokaflow.core import queues
    from workers import queues as fleet_queues

    for cached in (queues.priority_rank, fleet_queues._type_queues, fleet_queues._route):
        cached.cache_clear()

"""The launcher supervising real processes; Redis restarts with AOF; the compose file and units."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import psutil
import pytest
import redis
import yaml

from tests.conftest import ROOT, OwnRedis, free_port, http_status, pings, wait_for, worker_env
from vokaflow.core.workers import WorkerType, worker_argv

pytestmark = pytest.mark.django_db(transaction=True)


class Launch:
    def __init__(self, tmp_path, *args, env=None):
        self.log_path = tmp_path / "launch.log"
        self.proc = subprocess.Popen([sys.executable, "manage.py", "launch", *args], cwd=ROOT, env=env,
                                     stdout=open(self.log_path, "w"), stderr=subprocess.STDOUT, start_new_session=True)

    def output(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        """After a failure too: the launcher stops its children (each in its own session)."""
        if self.proc.poll() is not None:
            return
        children = psutil.Process(self.proc.pid).children(recursive=True)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        for child in children:
            if child.is_running():
                child.kill()

    def table(self, client) -> dict:
        """The launcher's process table and its worker host's (the forked workers), as health reads them."""
        table = {}
        for field in (socket.gethostname(), f"{socket.gethostname()}/workers"):
            raw = client.hget("vokaflow:launchers", field)
            table.update(json.loads(raw)["processes"] if raw else {})
        return table


@pytest.mark.slow
def test_the_launcher_restarts_gives_up_keeps_serving_and_stops_cleanly(tmp_path, redis_client):
    port, flower_port = free_port(), free_port()
    env = worker_env(VOKAFLOW_PORT=port, FLOWER_PORT=flower_port, FLOWER_BASIC_AUTH="ops:flower-secret")
    launch = Launch(tmp_path, "--only", "web,io,general,flower", "--backoff", "0.2", "--grace", "8", env=env)
    try:
        wait_for(lambda: "Ctrl-C stops every process" in launch.output(), 90, 0.2, "the launcher to say ready")
        startup, block = launch.output().split("VokaFlow is ready")
        # One block with every address and login, after every process's startup output.
        for path in ["/", "/admin/", "/api/docs/", "/api/redoc/", "/api/health/", "/metrics"]:
            assert f"http://127.0.0.1:{port}{path} " in block, path
        assert f"http://127.0.0.1:{flower_port}/ " in block
        assert "no admin user yet: make run VOKAFLOW_ADMIN_PASSWORD=" in block
        assert "Flower    user 'ops', password from FLOWER_BASIC_AUTH (change it in .env)" in block
        assert "flower-secret" not in launch.output()
        assert startup.count("@" + socket.gethostname() + " ready.") == 2 and "Visit me at" in startup
        # Workers print one line about their queues, not Celery's banner listing all 64.
        assert "consumes 64 IO_INTENSIVE queues" in startup and "[queues]" not in launch.output()
        assert http_status(f"http://127.0.0.1:{port}/api/health/") == 200
        wait_for(lambda: launch.table(redis_client).get("io", {}).get("state") == "running", 10, 0.2, "a report")

        for attempt in range(1, 5):
            pid = launch.table(redis_client)["io"]["pid"]
            os.killpg(pid, signal.SIGKILL)
            if attempt < 4:
                def restarted(old=pid):
                    now = launch.table(redis_client)["io"]
                    return now["pid"] != old and now["state"] == "running"
                wait_for(restarted, 20, 0.2, f"restart {attempt}")
                assert launch.table(redis_client)["io"]["restarts"] == attempt
        wait_for(lambda: launch.table(redis_client)["io"]["state"] == "given_up", 20, 0.2, "giving up")
        # Flower found task events already on (it turns them on every 5 s): no log line below the block.
        assert "enabled by remote" not in launch.output()
        assert "GAVE UP on io" in launch.output()

        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health/", timeout=3)
            raise AssertionError("health said ok with a process given up")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503
            error = json.loads(exc.read())["checks"]["processes"]["error"]
            assert error == "the launcher gave up on: io (on 1 host(s))"  # no host name: health is open
        from tasks.submit import submit_task
        from tests.conftest import wait_for_state

        assert wait_for_state(submit_task("vokaflow.echo", args=["still served"]))["status"] == "SUCCESS"

        children = psutil.Process(launch.proc.pid).children(recursive=True)
        assert children
        launch.proc.send_signal(signal.SIGTERM)
        launch.proc.wait(20)
        gone, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, f"left behind: {[p.pid for p in alive]}"
    finally:
        launch.stop()
        redis_client.hdel("vokaflow:launchers", socket.gethostname(), f"{socket.gethostname()}/workers")


def test_a_taken_port_is_named_with_its_holder(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as holder:
        port = holder.getsockname()[1]
        result = subprocess.run([sys.executable, "manage.py", "launch", "--only", "web"], cwd=ROOT,
                                env=worker_env(VOKAFLOW_PORT=port), capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert f"port {port} for web on 127.0.0.1 is taken by pid {os.getpid()}" in result.stderr


def test_systemd_units_restart_on_failure_at_most_three_times(tmp_path):
    subprocess.run([sys.executable, "manage.py", "launch", "--systemd", str(tmp_path), "--root", "/opt/vokaflow",
                    "--python", "/opt/vokaflow/.venv/bin/python"], cwd=ROOT, env=worker_env(), check=True,
                   capture_output=True)
    units = {p.name: p.read_text() for p in tmp_path.iterdir()}
    assert set(units) == {"vokaflow.target", "vokaflow-web.service", "vokaflow-beat.service",
                          "vokaflow-flower.service", *(f"vokaflow-{t.short}.service" for t in WorkerType)}
    for name, text in units.items():
        if name.endswith(".service"):
            assert "Restart=on-failure" in text and "StartLimitBurst=3" in text
            assert "EnvironmentFile=/opt/vokaflow/.env" in text
    cpu_unit = units["vokaflow-cpu.service"]
    assert "ExecStart=/opt/vokaflow/.venv/bin/python /opt/vokaflow/manage.py worker cpu" in cpu_unit
    assert 'test -n "$FLOWER_BASIC_AUTH"' in units["vokaflow-flower.service"]


def test_compose_runs_the_documented_commands():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "postgres", "web", "beat", "flower", "nginx"} <= set(services)
    assert "--appendonly" in services["redis"]["command"] and "noeviction" in services["redis"]["command"]
    readme = (ROOT / "README.md").read_text()
    for worker_type in WorkerType:
        service = services[f"worker-{worker_type.short}"]
        assert service["command"] == ["python", "manage.py", "worker", worker_type.short]
        assert "healthcheck" in service
        assert f"manage.py worker {worker_type.short}" in readme or "manage.py worker cpu" in readme
        printed = subprocess.run([sys.executable, "manage.py", "worker", worker_type.short, "--print"], cwd=ROOT,
                                 env=worker_env(), capture_output=True, text=True, check=True).stdout.split()
        assert printed == worker_argv(worker_type)  # what the launcher runs too
    for name in ("redis", "postgres", "web", "flower", "nginx"):
        assert "healthcheck" in services[name], name
    assert "FLOWER_BASIC_AUTH" in " ".join(services["flower"]["command"])
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        subprocess.run(["docker", "compose", "config", "-q"], cwd=ROOT, check=True)


@pytest.mark.slow
def test_a_broker_restart_mid_drain_loses_nothing_with_aof(start_worker, tmp_path):
    own = OwnRedis(tmp_path)
    client = own.start()
    url = f"redis://127.0.0.1:{own.port}/0"
    env = worker_env(REDIS_URL=url, VOKAFLOW_VISIBILITY_TIMEOUT=5, DJANGO_SETTINGS_MODULE="vokaflow.settings")
    try:
        enqueue = subprocess.run([sys.executable, "-c",
                                  "import django; django.setup()\n"
                                  "from tasks.submit import enqueue, prepare\n"
                                  "for _ in range(5):\n"
                                  "    for s in enqueue([prepare('vokaflow.noop') for _ in range(1000)]):\n"
                                  "        print(s.task_id)\n"], cwd=ROOT, env=env, capture_output=True, text=True,
                                 check=True)
        ids = enqueue.stdout.split()
        assert len(ids) == 5000
        worker = start_worker("general", concurrency=2, env=env)
        keys = [f"celery-task-meta-{i}" for i in ids]

        def done() -> int:
            return sum(1 for v in client.mget(keys) if v and b'"SUCCESS"' in v)

        wait_for(lambda: done() >= 1000, 60, 0.1, "the drain to be under way")
        own.stop()
        time.sleep(1)
        client = own.start()
        try:
            wait_for(lambda: done() == 5000, 120, 0.5, "all 5,000 tasks to succeed after the restart")
        except AssertionError:
            queued = {k.decode(): client.llen(k) for k in client.keys("general.*") if client.type(k) == b"list"}
            raise AssertionError(f"{done()} of 5,000 succeeded; queued {queued}; unacked "
                                 f"{client.hlen('unacked')}; worker alive: {worker.proc.poll() is None}\n"
                                 f"{worker.output()[-6000:]}") from None
    finally:
        own.stop()


@pytest.mark.slow
def test_tasks_flow_through_redis_sentinel(start_worker, tmp_path):
    (tmp_path / "primary").mkdir()
    primary = OwnRedis(tmp_path / "primary")
    client = primary.start()
    sentinel_port = free_port()
    config = tmp_path / "sentinel.conf"  # Sentinel rewrites its own config file
    config.write_text(f"port {sentinel_port}\nbind 127.0.0.1\nsentinel monitor vf 127.0.0.1 {primary.port} 1\n")
    sentinel = subprocess.Popen([primary.binary, str(config), "--sentinel"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: pings(redis.Redis(port=sentinel_port)), 10, 0.05, "Sentinel to start")
        env = worker_env(REDIS_URL=f"sentinel://127.0.0.1:{sentinel_port}/0", VOKAFLOW_REDIS_SENTINEL_MASTER="vf",
                         DJANGO_SETTINGS_MODULE="vokaflow.settings")
        start_worker("general", env=env)
        submitted = subprocess.run([sys.executable, "-c",
                                    "import django; django.setup()\n"
                                    "from tasks.submit import submit_task\n"
                                    "print(submit_task('vokaflow.echo', args=['via sentinel']))\n"],
                                   cwd=ROOT, env=env, capture_output=True, text=True, check=True)
        task_id = submitted.stdout.split()[-1]
        meta = wait_for(lambda: client.get(f"celery-task-meta-{task_id}"), 30, 0.1, "the result on the primary")
        assert json.loads(meta)["status"] == "SUCCESS"
        assert client.exists(f"vokaflow:task:{task_id}")  # the submission record went to the primary too
    finally:
        sentinel.terminate()
        sentinel.wait(10)
        primary.stop()

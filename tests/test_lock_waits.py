"""A waiting lock acquire over HTTP does not hold the web server for its wait: beyond
VOKAFLOW_LOCK_WAITERS per web process it is answered 429 at once, and the one that waits gets the
lock when it is released. Against a real gunicorn (1 process, 2 threads) and the real Redis."""

import http.client
import json
import subprocess
import sys
import threading

import pytest

from tests.conftest import ROOT, free_port, user_with_perms, wait_for, worker_env
from vokaflow import locks
from vokaflow.core import keys

BASE = "/api/high-scale-tasks"
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def server(tmp_path):
    """gunicorn as `make run` starts it, but 1 process of 2 threads: one waiting acquire holds half of it."""
    port = free_port()
    log = open(tmp_path / "gunicorn.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "vokaflow.wsgi", "--bind", f"127.0.0.1:{port}",
                             "--workers", "1", "--threads", "2", "--preload"], cwd=ROOT,
                            env=worker_env(ALLOWED_HOSTS="127.0.0.1", VOKAFLOW_LOCK_WAITERS=1),
                            stdout=log, stderr=subprocess.STDOUT)

    def answers():
        try:
            return call(port, "GET", "/api/health/")[0] in (200, 503)
        except OSError:
            return False
    try:
        wait_for(answers, 60, 0.1, "gunicorn to answer")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def call(port: int, method: str, path: str, body: dict | None = None, token: str | None = None):
    """(status, headers, JSON body) of one request on a connection of its own."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    connection.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    response = connection.getresponse()
    raw = response.read()
    connection.close()
    return response.status, dict(response.getheaders()), (json.loads(raw) if raw else None)


@pytest.fixture
def token():
    from rest_framework_simplejwt.tokens import AccessToken

    return str(AccessToken.for_user(user_with_perms("locker", "tasks.use_locks", "tasks.view_locks")))


def test_a_waiting_acquire_beyond_the_cap_is_answered_at_once_and_the_waiter_gets_the_lock(
        server, token, redis_client):
    held = locks.acquire("contended", ttl=120, owner="batch-job", client=redis_client)
    answers = {}

    def first_waiter():
        answers["first"] = call(server, "POST", f"{BASE}/lock/contended/acquire",
                                {"owner": "first", "timeout": 30, "wait": 30}, token)

    waiter = threading.Thread(target=first_waiter)
    waiter.start()
    try:
        # The first waiter is in its wait: subscribed to the lock's release message.
        channel = keys.LOCK_RELEASED + "contended"
        wait_for(lambda: dict(redis_client.pubsub_numsub(channel)).get(channel.encode()) == 1, 30, 0.02,
                 "the first acquire to wait")

        # A second waiting acquire, on the one thread left, is answered instead of waiting.
        status, headers, body = call(server, "POST", f"{BASE}/lock/contended/acquire",
                                     {"owner": "second", "timeout": 30, "wait": 30}, token)
        assert status == 429, body
        assert headers["Retry-After"] == "1" and body["retry_after"] == 1
        assert body["key"] == "contended" and body["holder"]["owner"] == "batch-job"
        assert "ask again" in body["detail"]
        # So the server still answers everything else while the first one waits:
        assert call(server, "GET", "/api/health/")[0] in (200, 503)  # (503: no worker runs in this test)
        assert call(server, "POST", f"{BASE}/lock/contended/acquire", {"timeout": 30}, token)[0] == 409
        status, _, free = call(server, "POST", f"{BASE}/lock/other/acquire", {"timeout": 30, "wait": 30}, token)
        assert status == 200, free  # a free lock needs no wait, so no waiter's place
        assert call(server, "GET", f"{BASE}/lock/contended", token=token)[2]["owner"] == "batch-job"
        assert "first" not in answers  # still waiting

        locks.release(held, client=redis_client)
        waiter.join(60)
        status, _, lease = answers["first"]
        assert status == 200, lease
        assert lease["owner"] == "first" and lease["fencing_token"] == held.fencing_token + 1

        # The second one, asking again as told, waits in its turn and gets it when the first releases.
        def second_waiter():
            answers["second"] = call(server, "POST", f"{BASE}/lock/contended/acquire",
                                     {"owner": "second", "timeout": 30, "wait": 30}, token)

        waiter = threading.Thread(target=second_waiter)
        waiter.start()
        wait_for(lambda: dict(redis_client.pubsub_numsub(channel)).get(channel.encode()) == 1, 30, 0.02,
                 "the second acquire to wait")
        status, _, _ = call(server, "DELETE", f"{BASE}/lock/contended/release?token={lease['token']}", token=token)
        assert status == 200
        waiter.join(60)
        assert answers["second"][0] == 200 and answers["second"][2]["owner"] == "second"
    finally:
        redis_client.delete(keys.LOCK + "contended", keys.LOCK + "other")
        waiter.join(60)

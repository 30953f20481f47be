"""Dead letters written by real workers into the real database; the DLQ API and admin."""

import json
import re
import socket
import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.db import connection
from rest_framework.test import APIClient

import tests.e2e.worker_tasks  # noqa: F401  (registers the test tasks here too, to submit them)
from tasks import dlq
from tasks.models import DeadLetter
from tasks.submit import submit_task
from tests.conftest import OwnRedis, client_as, task_meta, user_with_perms, wait_for, wait_for_state, worker_env

BASE = "/api/high-scale-tasks"
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def staff():
    return client_as(user_with_perms("ops", "tasks.change_deadletter", is_staff=True))


def dead_letter(task_id: str, timeout: float = 30) -> DeadLetter:
    return wait_for(lambda: DeadLetter.objects.filter(task_id=task_id).first(), timeout,
                    message=f"a dead letter for {task_id}")


def test_a_failing_task_becomes_one_dead_letter_with_every_field(start_worker, staff):
    worker = start_worker("general")
    task_id = submit_task("vokaflow.fail", args=["card declined"], kwargs={}, priority="HIGH", partition_key="c-9")
    row = dead_letter(task_id)
    assert (row.task_name, row.args, row.kwargs) == ("vokaflow.fail", ["card declined"], {})
    assert (row.worker_type, row.priority, row.queue) == ("GENERAL_PURPOSE", "HIGH", f"general.high.p{row.partition}")
    assert row.reason == "not_retried" and row.total_retries == 0 and row.status == "dead"
    assert row.exception_type == "TaskFailed" and "card declined" in row.error
    assert "Traceback" in row.traceback and "raise TaskFailed" in row.traceback
    assert row.worker == worker.name and row.hostname == socket.gethostname()
    assert row.first_submitted_at <= row.dlq_timestamp
    assert staff.get(f"{BASE}/tasks/{task_id}/").json()["state"] == "DEAD"
    assert DeadLetter.objects.count() == 1


def test_exhausted_retries_back_off_with_growing_delays(start_worker):
    worker = start_worker("general")
    task_id = submit_task("vokaflow.flaky", kwargs={"failure_rate": 1.0, "seed": 3})
    row = dead_letter(task_id, timeout=60)
    assert row.reason == "retries_exhausted" and row.total_retries == 3
    delays = [float(d) for d in re.findall(rf"{task_id}\] retry: Retry in ([\d.]+)s", worker.output())]
    assert len(delays) == 3 and delays[0] < delays[1] < delays[2], delays


def test_a_success_writes_no_dead_letter(start_worker):
    start_worker("general")
    wait_for_state(submit_task("vokaflow.echo", args=[1]))
    assert DeadLetter.objects.count() == 0


def test_retry_from_the_api_resolves_the_row_when_the_retry_succeeds(start_worker, staff):
    start_worker("general")
    task_id = submit_task("tests.fail_once", args=["api-retry"], priority="LOW", partition_key="k")
    original = dead_letter(task_id)
    response = staff.post(f"{BASE}/dlq/{task_id}/retry", {}, format="json")
    assert response.status_code == 202 and response.json()["retried_from"] == task_id
    new_id = response.json()["task_id"]
    meta = wait_for_state(new_id)
    # the arguments are not kept in results: "ok" says the retry ran with the same key
    assert meta["queue"] == original.queue and meta["result"] == "ok"
    wait_for(lambda: DeadLetter.objects.get(task_id=task_id).status == "resolved", 10, message="resolved")
    assert DeadLetter.objects.get(task_id=task_id).retried_task_id == new_id
    assert staff.post(f"{BASE}/dlq/{task_id}/retry", {}, format="json").status_code == 409


def test_a_retry_that_fails_again_is_a_new_row_linked_to_the_old(start_worker, staff):
    start_worker("general")
    task_id = submit_task("vokaflow.fail", args=["still broken"])
    dead_letter(task_id)
    new_id = staff.post(f"{BASE}/dlq/{task_id}/retry", {}, format="json").json()["task_id"]
    again = dead_letter(new_id)
    assert again.retried_from == task_id and again.args == ["still broken"]
    assert DeadLetter.objects.get(task_id=task_id).status == "retried"
    assert DeadLetter.objects.count() == 2


def test_a_retried_task_is_its_submitters_again_and_counts_against_no_quota(start_worker, staff, redis_client):
    start_worker("general")
    alice, mallory = user_with_perms("alice"), user_with_perms("mallory")
    submitted = client_as(alice).post(f"{BASE}/tasks/", {"task": "vokaflow.fail", "args": ["mine"]}, format="json")
    task_id = submitted.json()["task_id"]
    assert dead_letter(task_id).owner_id == alice.pk
    one = staff.post(f"{BASE}/dlq/{task_id}/retry", {}, format="json").json()["task_id"]
    assert dead_letter(one).owner_id == alice.pk  # failed again: the new row is hers too
    many = staff.post(f"{BASE}/dlq/retry?task=vokaflow.fail", {}, format="json").json()
    assert many == {"matched": 1, "retried": 1, "failed": 0}
    bulk = DeadLetter.objects.get(task_id=one).retried_task_id
    for new_id in (one, bulk):
        assert client_as(alice).get(f"{BASE}/tasks/{new_id}/").status_code == 200
        assert client_as(mallory).get(f"{BASE}/tasks/{new_id}/").status_code == 404
    # An operator's retry is not the user's submission: nothing of it is counted in her quota.
    assert not {m.decode() for m in redis_client.zrange(f"vokaflow:pending:{alice.pk}", 0, -1)} & {one, bulk}


def test_retry_and_discard_from_the_admin(start_worker, django_user_model, client):
    start_worker("general")
    admin_user = django_user_model.objects.create_superuser("root", password="root-password")
    client.force_login(admin_user)
    ids = [submit_task("tests.fail_once", args=[f"admin-{i}"]) for i in range(2)]
    rows = [dead_letter(i) for i in ids]
    changelist = client.get("/admin/tasks/deadletter/")
    assert changelist.status_code == 200 and b"tests.fail_once" in changelist.content
    detail = client.get(f"/admin/tasks/deadletter/{rows[0].pk}/change/")
    assert detail.status_code == 200 and b"Traceback" in detail.content
    response = client.post("/admin/tasks/deadletter/", {"action": "retry_selected",
                                                        "_selected_action": [rows[0].pk]}, follow=True)
    assert b"Retried 1 of 1 dead letters" in response.content
    wait_for(lambda: DeadLetter.objects.get(task_id=ids[0]).status == "resolved", 20, message="resolved")
    response = client.post("/admin/tasks/deadletter/", {"action": "discard_selected",
                                                        "_selected_action": [rows[1].pk]}, follow=True)
    assert b"Discarded 1 dead letters" in response.content
    assert DeadLetter.objects.get(task_id=ids[1]).status == "discarded"


def test_a_poison_task_is_dead_lettered_after_three_deliveries(start_worker, redis_client):
    start_worker("cpu", pool="prefork")
    task_id = submit_task("tests.crash", args=["vokaflow:test:crashes"])
    row = dead_letter(task_id, timeout=60)
    assert row.reason == "poison" and "3" in row.error
    assert int(redis_client.get("vokaflow:test:crashes")) == 3
    assert task_meta(task_id)["status"] == "FAILURE"


def test_a_task_over_its_hard_time_limit_is_dead_lettered(start_worker):
    start_worker("cpu", pool="prefork")
    task_id = submit_task("tests.hang", args=[30])
    row = dead_letter(task_id)
    assert row.reason == "time_limit" and row.exception_type == "TimeLimitExceeded"
    assert row.queue.startswith("cpu.normal.p")


def test_a_thousand_failures_over_four_workers_are_exactly_a_thousand_rows(start_worker):
    for _ in range(4):
        start_worker("general", concurrency=2, wait=False)
    from tasks.submit import enqueue, prepare

    ids = [r.task_id for r in enqueue([prepare("vokaflow.fail", args=[i]) for i in range(1000)])]
    wait_for(lambda: DeadLetter.objects.count() >= 1000, 120, 0.5, "1,000 dead letters")
    assert DeadLetter.objects.count() == 1000
    assert set(DeadLetter.objects.values_list("task_id", flat=True)) == set(ids)


class RefusingProxy:
    """A TCP proxy to PostgreSQL that can refuse and cut connections, as a stopped server would."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.up = True
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            if not self.up:
                conn.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.sockets += [conn, upstream]
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def go_down(self):
        self.up = False
        for sock in self.sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.sockets.clear()

    def come_back(self):
        self.up = True


class SqliteOutage:
    """The database file's folder vanishes and comes back (SQLite has no server to stop)."""

    def __init__(self, tmp_path):
        self.folder = tmp_path / "db-folder"
        self.url = f"sqlite:///{self.folder / 'db.sqlite3'}"

    def go_down(self):
        pass  # the folder does not exist yet: "unable to open database file"

    def come_back(self):
        self.folder.mkdir()
        (self.folder / "db.sqlite3").symlink_to(connection.settings_dict["NAME"])


def test_dead_letters_survive_a_database_outage_and_arrive_when_it_is_back(start_worker, redis_client, tmp_path):
    db = connection.settings_dict
    if connection.vendor == "postgresql":
        outage = RefusingProxy(int(db["PORT"] or 5432))
        url = f"postgres://{db['USER']}@127.0.0.1:{outage.port}/{db['NAME']}"
    else:
        outage = SqliteOutage(tmp_path)
        url = outage.url
    start_worker("general", concurrency=2, env=worker_env(DATABASE_URL=url, DATABASE_CONN_MAX_AGE=0))
    outage.go_down()
    ids = [submit_task("vokaflow.fail", args=[f"outage-{i}"]) for i in range(20)]
    wait_for(lambda: redis_client.llen(dlq.keys.DLQ_PENDING) == 20, 60, 0.2, "20 records waiting in Redis")
    assert DeadLetter.objects.count() == 0
    outage.come_back()
    flushed = submit_task("vokaflow.dlq_flush")  # what beat runs every 30 s, here on the worker
    assert wait_for_state(flushed)["result"] == 20
    assert redis_client.llen(dlq.keys.DLQ_PENDING) == 0
    assert set(DeadLetter.objects.values_list("task_id", flat=True)) == set(ids)


def test_retention_keeps_exactly_the_newest_n_per_worker_type():
    now = datetime.now(UTC)
    DeadLetter.objects.bulk_create([
        DeadLetter(task_id=f"{wt}-{i}", task_name="x", worker_type=wt, priority="NORMAL", reason="not_retried",
                   dlq_timestamp=now - timedelta(seconds=i))
        for wt in ("CPU_INTENSIVE", "IO_INTENSIVE") for i in range(30)])
    assert dlq.dead_letter_prune(keep=10) == 40
    for wt in ("CPU_INTENSIVE", "IO_INTENSIVE"):
        kept = set(DeadLetter.objects.filter(worker_type=wt).values_list("task_id", flat=True))
        assert kept == {f"{wt}-{i}" for i in range(10)}


def test_dlq_api_lists_filters_paginates_and_discards(staff):
    now = datetime.now(UTC)
    DeadLetter.objects.bulk_create([
        DeadLetter(task_id=f"t-{i}", task_name="vokaflow.fail" if i % 2 else "vokaflow.flaky",
                   worker_type="IO_INTENSIVE" if i < 5 else "CPU_INTENSIVE", priority="HIGH" if i < 3 else "LOW",
                   reason="not_retried", error=f"ValueError: bad input {i}", traceback="Traceback ...",
                   dlq_timestamp=now - timedelta(minutes=i)) for i in range(12)])
    page = staff.get(f"{BASE}/dlq/?page_size=5").json()
    assert page["count"] == 12 and [r["task_id"] for r in page["results"]] == [f"t-{i}" for i in range(5)]
    assert "traceback" not in page["results"][0]
    assert staff.get(f"{BASE}/dlq/?worker_type=IO_INTENSIVE&priority=LOW").json()["count"] == 2
    assert staff.get(f"{BASE}/dlq/?task=vokaflow.fail&q=input 11").json()["count"] == 1
    since = (now - timedelta(minutes=2, seconds=30)).isoformat()
    assert staff.get(f"{BASE}/dlq/", {"since": since}).json()["count"] == 3
    assert staff.get(f"{BASE}/dlq/?priority=URGENT").status_code == 400
    assert staff.get(f"{BASE}/dlq/t-3/").json()["traceback"] == "Traceback ..."
    assert staff.delete(f"{BASE}/dlq/t-3/").json()["status"] == "discarded"
    assert DeadLetter.objects.filter(task_id="t-3").exists()
    assert staff.get(f"{BASE}/dlq/?status=discarded").json()["count"] == 1
    assert staff.get(f"{BASE}/dlq/nope/").status_code == 404
    assert staff.post(f"{BASE}/dlq/nope/retry", {}, format="json").status_code == 404


def test_bulk_retry_retries_what_matches(staff, redis_client):
    now = datetime.now(UTC)
    DeadLetter.objects.bulk_create([
        DeadLetter(task_id=f"b-{i}", task_name="vokaflow.echo", args=[i], worker_type="IO_INTENSIVE",
                   priority="LOW", partition=i % 8, queue=f"io.low.p{i % 8}", reason="not_retried",
                   dlq_timestamp=now) for i in range(6)] + [
        DeadLetter(task_id="other", task_name="vokaflow.noop", worker_type="CPU_INTENSIVE", priority="LOW",
                   reason="not_retried", dlq_timestamp=now)])
    response = staff.post(f"{BASE}/dlq/retry?task=vokaflow.echo", {}, format="json")
    assert response.status_code == 202 and response.json() == {"matched": 6, "retried": 6, "failed": 0}
    assert DeadLetter.objects.filter(status="retried").count() == 6
    assert sum(redis_client.llen(f"io.low.p{p}") for p in range(8)) == 6


@pytest.fixture
def redis_that_fills_up(tmp_path, settings):
    """The process's Redis is a test's own, whose memory limit the test sets (noeviction, as in
    production): once full, every write is refused, like a Redis that went away."""
    from vokaflow.redis import get_redis

    own = OwnRedis(tmp_path)
    client = own.start()
    client.config_set("maxmemory-policy", "noeviction")
    settings.REDIS_URL = f"redis://127.0.0.1:{own.port}/0"
    get_redis.cache_clear()
    yield client
    get_redis.cache_clear()
    own.stop()


def test_a_bulk_retry_cut_short_by_redis_says_exactly_what_was_retried(staff, redis_that_fills_up, monkeypatch):
    # Given 6 dead letters with 100 kB arguments, retried 2 per batch, and a Redis with room for 2 batches
    monkeypatch.setattr(dlq, "RETRY_BATCH", 2)
    now = datetime.now(UTC)
    DeadLetter.objects.bulk_create([
        DeadLetter(task_id=f"big-{i}", task_name="vokaflow.echo", args=["x" * 100_000], worker_type="IO_INTENSIVE",
                   priority="LOW", partition=0, queue="io.low.p0", reason="not_retried",
                   dlq_timestamp=now - timedelta(seconds=i)) for i in range(6)])
    used = redis_that_fills_up.info("memory")["used_memory"]
    redis_that_fills_up.config_set("maxmemory", used + 700_000)
    # When they are all retried
    response = staff.post(f"{BASE}/dlq/retry", {}, format="json")
    # Then the answer says how many whole batches were retried before Redis refused the rest,
    # and that is the truth in Redis and in the table
    assert response.status_code == 503, response.content
    body = response.json()
    retried = body["retried"]
    assert body["matched"] == 6 and retried in (2, 4), body
    assert f"Retried {retried} of 6" in body["detail"]
    assert redis_that_fills_up.llen("io.low.p0") == retried
    assert DeadLetter.objects.filter(status="retried").count() == retried
    assert DeadLetter.objects.filter(status="dead").count() == 6 - retried
    retried_ids = set(DeadLetter.objects.filter(status="retried").values_list("retried_task_id", flat=True))
    queued = {json.loads(m)["headers"]["id"] for m in redis_that_fills_up.lrange("io.low.p0", 0, -1)}
    assert queued == retried_ids


def test_the_dlq_needs_the_dead_letter_permissions(api):
    assert api.get(f"{BASE}/dlq/").status_code == 403
    assert api.post(f"{BASE}/dlq/retry", {}, format="json").status_code == 403
    assert APIClient().get(f"{BASE}/dlq/").status_code == 401

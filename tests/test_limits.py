"""Limits: definitions, the API and its permissions, submission checks, and the start and
let-out scripts on the real Redis (the end-to-end tests run them in real workers)."""

from __future__ import annotations

import json
import time

import pytest

import tests.e2e.worker_tasks  # noqa: F401  (registers the limited test tasks)
from tasks import limits
from tasks.submit import submit_task
from tasks.validation import SubmissionError
from tests.conftest import client_as, user_with_perms
from vokaflow.core import keys

BASE = "/api/high-scale-tasks"


@pytest.fixture
def operator(db):
    return client_as(user_with_perms("limits-op", "tasks.view_limits", "tasks.change_limits", is_staff=True))


def test_the_code_declares_each_tasks_own_limit_and_celery_gets_no_rate_limit():
    from vokaflow.celery import app

    task = app.tasks["tests.rated"]
    assert task.vokaflow_limits == ["tests.rated"] and task.rate_limit is None
    assert limits.definitions.get()["tests.two_per_customer"] == limits.Limit(
        "tests.two_per_customer", None, 2, "customer_id")


def test_a_limit_per_argument_needs_that_argument_at_submission(redis_client):
    with pytest.raises(SubmissionError) as missing:
        submit_task("tests.two_per_customer", kwargs={"seconds": 0.1})
    assert "customer_id" in missing.value.message
    with pytest.raises(SubmissionError):
        submit_task("tests.two_per_customer", args=[["not", "scalar"]])
    assert submit_task("tests.two_per_customer", args=["acme"])


def test_rates_parse_and_bad_ones_name_the_field():
    assert limits.Limit("x", rate="20/s").interval == 0.05
    assert limits.Limit("x", rate="120/m").interval == 0.5
    for bad, field in [({"rate": "20"}, "rate"), ({"rate": "0/s"}, "rate"), ({"concurrency": 0}, "concurrency"),
                       ({"concurrency": True}, "concurrency"), ({}, "rate"),
                       ({"rate": "1/s", "per": "no such-name"}, "per")]:
        with pytest.raises(limits.LimitInvalid) as exc:
            limits.check_limit("x", bad.get("rate"), bad.get("concurrency"), bad.get("per"))
        assert field in exc.value.extra["errors"]


def start(redis_client, instance, task_id, priority=3, enqueued_at=None):
    message = json.dumps({"properties": {"delivery_info": {"routing_key": "general.normal.p0"}}, "id": task_id})
    return limits.try_start(redis_client, instance, task_id, message, priority, enqueued_at or time.time())


def test_concurrency_places_are_taken_given_back_and_waiting_tasks_keep_their_place(redis_client):
    instance = limits.Instance(limits.Limit("unit.two", concurrency=2))
    assert start(redis_client, instance, "a") is None and start(redis_client, instance, "b") is None
    assert start(redis_client, instance, "c", enqueued_at=100) == "concurrency"
    assert start(redis_client, instance, "d", priority=1, enqueued_at=200) == "concurrency"  # higher priority
    limits.give_back(redis_client, instance, "a")
    # A newcomer may not take the freed place while better-placed tasks wait.
    assert start(redis_client, instance, "e", enqueued_at=300) == "queue"
    assert limits.let_out_now(redis_client, instance) == 1
    assert json.loads(redis_client.rpop("general.normal.p0"))["id"] == "d"  # the best first, next to be taken
    assert start(redis_client, instance, "d", priority=1, enqueued_at=200) is None
    assert limits.let_out_now(redis_client, instance) == 0  # no room: b and d run


def test_a_rate_starts_one_per_interval_and_lets_out_paced_pushes(redis_client):
    instance = limits.Instance(limits.Limit("unit.rate", rate="2/s"))  # one start every 0.5 s
    started = [start(redis_client, instance, f"t{i}", enqueued_at=i) is None for i in range(5)]
    assert started == [True, False, False, False, False]  # each later one is early by more than 50 ms
    planned = limits.let_out(redis_client, instance, ahead=1.0)
    assert [task_id for _, task_id, _ in planned] == ["t1", "t2"]  # the next two starts, in place order
    assert 0.49 < planned[1][0] - planned[0][0] < 0.51
    assert limits.let_out(redis_client, instance, ahead=1.0) == []  # planned already: nothing twice


def test_a_lease_of_a_vanished_holder_runs_out(redis_client, settings):
    settings.VOKAFLOW_LIMIT_LEASE = 0.2
    instance = limits.Instance(limits.Limit("unit.lease", concurrency=1))
    assert start(redis_client, instance, "gone") is None
    assert start(redis_client, instance, "next", enqueued_at=1) == "concurrency"
    time.sleep(0.3)
    assert limits.let_out_now(redis_client, instance) == 1  # the lease ran out: its place is free


def test_per_key_instances_are_separate_and_tagged(redis_client):
    acme = limits.Instance(limits.Limit("unit.per", concurrency=1, per="customer_id"), "acme}{|x")
    other = limits.Instance(limits.Limit("unit.per", concurrency=1, per="customer_id"), "globex")
    assert start(redis_client, acme, "a") is None and start(redis_client, other, "b") is None
    assert keys.parse_limit_tag(keys.LIMIT_RUNNING.format(acme.tag)) == ("unit.per", "acme}{|x")
    assert acme.tag.count("{") == 1 and acme.tag.count("}") == 1


def test_the_api_lists_changes_and_resets_limits(operator, redis_client):
    listed = {item["name"]: item for item in operator.get(f"{BASE}/limits/").json()}
    assert listed["tests.rated"]["rate"] == "20/s" and listed["tests.rated"]["source"] == "code"
    assert listed["tests.rated"]["tasks"] == ["tests.rated"]
    changed = operator.put(f"{BASE}/limits/tests.rated", {"rate": "5/s"}, format="json")
    assert changed.status_code == 200 and changed.json()["rate"] == "5/s" and changed.json()["source"] == "api"
    assert limits.definitions.get()["tests.rated"].rate == "5/s"
    reset = operator.delete(f"{BASE}/limits/tests.rated")
    assert reset.status_code == 200 and reset.json()["rate"] == "20/s" and reset.json()["source"] == "code"
    made = operator.put(f"{BASE}/limits/stripe", {"concurrency": 3}, format="json")
    assert made.status_code == 200 and made.json()["tasks"] == []
    assert operator.delete(f"{BASE}/limits/stripe").status_code == 204
    assert operator.get(f"{BASE}/limits/stripe").status_code == 404
    assert "stripe" in operator.get(f"{BASE}/limits/stripe").json()["detail"]


@pytest.mark.parametrize(("body", "field"), [
    ({"rate": "fast"}, "rate"), ({"concurrency": 0}, "concurrency"), ({"concurrency": "2"}, "concurrency"),
    ({}, "rate"), ({"rate": "1/s", "extra": 1}, "extra"), ({"per": "a b", "rate": "1/s"}, "per"),
])
def test_a_bad_change_is_a_400_naming_the_field(operator, body, field):
    answer = operator.put(f"{BASE}/limits/tests.rated", body, format="json")
    assert answer.status_code == 400 and field in answer.json()["errors"], answer.content
    assert limits.definitions.get()["tests.rated"].rate == "20/s"


def test_only_staff_with_the_permissions_see_or_change_limits(db):
    from rest_framework.test import APIClient

    assert APIClient().get(f"{BASE}/limits/").status_code == 401
    assert client_as(user_with_perms("plain", "tasks.view_limits")).get(f"{BASE}/limits/").status_code == 403
    viewer = client_as(user_with_perms("limits-viewer", "tasks.view_limits", is_staff=True))
    assert viewer.get(f"{BASE}/limits/").status_code == 200
    assert viewer.put(f"{BASE}/limits/tests.rated", {"rate": "1/s"}, format="json").status_code == 403
    assert viewer.delete(f"{BASE}/limits/tests.rated").status_code == 403


def test_on_a_redis_cluster_an_instance_is_one_slot(on_cluster):
    client = on_cluster.client()
    instance = limits.Instance(limits.Limit("unit.cluster", concurrency=1, per="customer_id"), "acme")
    assert len({client.keyslot(name) for name in instance.names()}) == 1
    assert start(client, instance, "a") is None
    assert start(client, instance, "b", enqueued_at=1) == "concurrency"
    limits.give_back(client, instance, "a")
    assert limits.let_out_now(client, instance) == 1
    assert start(client, instance, "b", enqueued_at=1) is None


# What a review of the limits found, each once.


def test_a_task_early_for_its_rate_again_and_again_ends_in_the_waiting_room(redis_client, monkeypatch):
    instance = limits.Instance(limits.Limit("unit.early", rate="40/s"))  # 25 ms apart; early by 12.5 ms at most
    assert start(redis_client, instance, "a") is None
    time.sleep(0.015)  # b is early by about 10 ms: it may wait, but its waits end too soon here
    monkeypatch.setattr(limits.time, "sleep", lambda seconds: None)
    assert start(redis_client, instance, "b", enqueued_at=1) == "rate"
    assert redis_client.zscore(keys.LIMIT_WAITING.format(instance.tag), "b") is not None  # waiting, not lost


def test_a_let_out_task_keeps_its_place_against_newcomers(redis_client):
    instance = limits.Instance(limits.Limit("unit.keep", concurrency=1))
    assert start(redis_client, instance, "a") is None
    assert start(redis_client, instance, "b", enqueued_at=1) == "concurrency"
    limits.give_back(redis_client, instance, "a")
    assert [task_id for _, task_id, _ in limits.let_out(redis_client, instance)] == ["b"]  # on its way
    assert start(redis_client, instance, "c", enqueued_at=2) == "concurrency"  # may not take b's place
    assert start(redis_client, instance, "b", enqueued_at=1) is None


def test_places_of_running_tasks_never_expire_with_their_key(redis_client):
    instance = limits.Instance(limits.Limit("unit.long", concurrency=1))
    assert start(redis_client, instance, "a") is None
    assert start(redis_client, instance, "b", enqueued_at=1) == "concurrency"
    for name in (keys.LIMIT_RUNNING, keys.LIMIT_WAITING, keys.LIMIT_MESSAGES):
        assert redis_client.ttl(name.format(instance.tag)) == -1, name  # only the lease decides


def test_a_limit_with_tasks_let_out_and_not_started_stays_looked_after(redis_client, monkeypatch):
    monkeypatch.setitem(limits._declared, "unit.strand", limits.Limit("unit.strand", concurrency=1))
    instance = limits.Instance(limits.definitions.get()["unit.strand"])
    assert start(redis_client, instance, "a") is None
    assert start(redis_client, instance, "b", enqueued_at=1) == "concurrency"
    limits.give_back(redis_client, instance, "a")
    limits.let_out(redis_client, instance)  # taken out; its pusher dies before pushing
    limits.let_out_all(redis_client)
    assert redis_client.sismember(keys.LIMITS_WAITING, limits.instance_id(instance))


def test_a_let_out_task_sent_to_wait_again_before_its_push_is_done_keeps_its_message(redis_client):
    instance = limits.Instance(limits.Limit("unit.race", concurrency=1))
    assert start(redis_client, instance, "a") is None
    assert start(redis_client, instance, "b", enqueued_at=1) == "concurrency"
    limits.give_back(redis_client, instance, "a")
    planned = limits.let_out(redis_client, instance)
    # A more urgent task comes to wait meanwhile (b's room is kept for b), and b, fetched before its
    # pusher is done, is sent to wait again behind it.
    assert start(redis_client, instance, "y", priority=0) == "concurrency"
    assert start(redis_client, instance, "b", enqueued_at=1) == "queue"
    limits.push_out(redis_client, instance, planned)
    assert redis_client.hexists(keys.LIMIT_MESSAGES.format(instance.tag), "b")  # still there to come back


def test_a_forked_child_never_inherits_a_held_counters_or_definitions_lock():
    import os

    from tasks.counters import counters

    with counters._lock, limits.definitions._lock:
        pid = os.fork()
        if pid == 0:  # the child: both locks are its own, free
            os._exit(0 if counters._lock.acquire(timeout=1) and limits.definitions._lock.acquire(timeout=1) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0

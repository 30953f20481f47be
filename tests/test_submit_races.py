"""Submissions that meet halfway: an idempotency key used by two requests at once, and Redis failing
around the push. The interleavings are made with a hook on the push (tasks.submit._push), never by
timing; Redis is real (a server of the test's own where it must fail)."""

import json
import threading

import pytest

import tasks.submit
from tasks.submit import BrokerUnavailable, enqueue, prepare
from tests.conftest import OwnRedis
from tests.test_submit import queued


@pytest.fixture
def own_redis(tmp_path, monkeypatch):
    """A Redis of the test's own that every submission of the test uses; it may be stopped."""
    server = OwnRedis(tmp_path)
    client = server.start()
    monkeypatch.setattr(tasks.submit, "get_redis", lambda: client)
    yield server, client
    server.stop()


def around_the_push(monkeypatch, before=None, after=None):
    """Run `before` just before the next push's EXEC and `after` just after it (once)."""
    real = tasks.submit._push
    calls = []

    def push(*args, **kwargs):
        first = not calls
        calls.append(1)
        if first and before:
            before()
        real(*args, **kwargs)
        if first and after:
            after()
    monkeypatch.setattr(tasks.submit, "_push", push)


def messages(client) -> dict[str, str]:
    """{task id: queue} of every queued message."""
    found = {}
    for queue in queued(client):
        for raw in client.lrange(queue, 0, -1):
            found[json.loads(raw)["headers"]["id"]] = queue
    return found


def test_a_redis_failure_after_the_push_answers_what_was_enqueued(own_redis, monkeypatch):
    server, client = own_redis
    first = enqueue([prepare("vokaflow.echo", args=[1], idempotency_key="order-7", priority="HIGH")])[0]
    around_the_push(monkeypatch, after=server.stop)  # Redis goes away the moment the tasks are in
    again, other = enqueue([prepare("vokaflow.echo", args=[1], idempotency_key="order-7"),
                            prepare("vokaflow.echo", args=[2], partition_key="a")])
    assert again.duplicate and again.task_id == first.task_id and again.queue == first.queue
    assert not other.duplicate and other.queue == "general.normal.p3"
    client = server.start()  # the same server again, from its AOF: what was answered is there
    assert messages(client) == {first.task_id: first.queue, other.task_id: other.queue}


def test_a_duplicate_is_never_answered_for_a_first_submission_whose_push_failed(own_redis, monkeypatch):
    server, client = own_redis
    answered = {}

    def b_meanwhile_then_redis_full():
        answered["b"] = enqueue([prepare("vokaflow.echo", args=["b"], idempotency_key="k")])[0]
        client.config_set("maxmemory", 1)  # noeviction: A's push is refused (OOM), a real Redis error

    around_the_push(monkeypatch, before=b_meanwhile_then_redis_full)
    try:
        a = enqueue([prepare("vokaflow.echo", args=["a"], idempotency_key="k")])[0]
    except BrokerUnavailable:
        a = None
    client.config_set("maxmemory", 0)
    b = answered["b"]
    assert a is None or (a.duplicate and a.task_id == b.task_id)
    # B's answer names a task that exists, and the key names it
    assert client.exists(f"vokaflow:task:{b.task_id}")
    assert list(messages(client)) == [b.task_id]
    c = enqueue([prepare("vokaflow.echo", args=["c"], idempotency_key="k")])[0]
    assert c.duplicate and c.task_id == b.task_id and list(messages(client)) == [b.task_id]


def test_a_duplicate_answers_with_the_first_tasks_own_route(redis_client, monkeypatch):
    answered = {}

    def b_meanwhile():
        answered["b"] = enqueue([prepare("vokaflow.echo", args=["b"], idempotency_key="k", priority="LOW",
                                         partition_key="b")])[0]

    around_the_push(monkeypatch, before=b_meanwhile)
    a = enqueue([prepare("vokaflow.echo", args=["a"], idempotency_key="k", priority="HIGH", partition_key="a")])[0]
    b = answered["b"]
    assert a.task_id == b.task_id and a.duplicate != b.duplicate
    first, repeat = (a, b) if b.duplicate else (b, a)
    assert (repeat.queue, repeat.priority, repeat.partition, repeat.submitted_at) == \
        (first.queue, first.priority, first.partition, first.submitted_at)
    assert messages(redis_client) == {first.task_id: first.queue}


def test_a_batch_that_loses_a_key_to_a_concurrent_request_answers_that_requests_task(redis_client, monkeypatch):
    answered = {}

    def single_meanwhile():
        answered["single"] = enqueue([prepare("vokaflow.echo", args=["s"], idempotency_key="k2",
                                              priority="LOW")])[0]

    around_the_push(monkeypatch, before=single_meanwhile)
    batch = enqueue([prepare("vokaflow.echo", args=[i], idempotency_key=f"k{i}") for i in range(4)])
    single = answered["single"]
    assert [s.duplicate for s in batch] == [False, False, True, False]
    assert batch[2].task_id == single.task_id and batch[2].queue == single.queue
    assert sorted(messages(redis_client)) == sorted([s.task_id for s in batch])


def test_many_submissions_of_one_key_at_once_make_one_task(redis_client):
    answers, errors = [], []
    start = threading.Barrier(8)

    def submit(i):
        start.wait()
        try:
            answers.append(enqueue([prepare("vokaflow.echo", args=[i], idempotency_key="same",
                                            priority="HIGH" if i % 2 else "LOW")])[0])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    (first,) = [a for a in answers if not a.duplicate]
    assert {(a.task_id, a.queue) for a in answers} == {(first.task_id, first.queue)}
    assert messages(redis_client) == {first.task_id: first.queue}

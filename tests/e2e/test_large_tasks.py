"""Large tasks: their bodies wait out of their queues, no script copies them, nothing is lost.

A message over VOKAFLOW_INLINE_BODY_BYTES waits in its queue without its body, which waits in a
key of its own until the task is acknowledged (vokaflow.transport.outline). Real Redis, real
workers.
"""

import json
import signal
from datetime import UTC, datetime, timedelta

import pytest

import tests.e2e.worker_tasks  # noqa: F401  (registers the tests.* tasks here too, to submit them)
from tasks.scheduled import move_due, scheduled_count
from tasks.state import revoke_task
from tasks.submit import enqueue, prepare, submit_task
from tests.conftest import task_meta, wait_for, wait_for_state
from vokaflow import transport
from vokaflow.core import keys

pytestmark = pytest.mark.django_db(transaction=True)
BIG = 1_500_000  # characters of the argument: a 2 MB message once base64-encoded
QUEUES = [f"general.normal.p{p}" for p in range(8)]


def queued(redis_client) -> list[bytes]:
    return [m for q in QUEUES for m in redis_client.lrange(q, 0, -1)]


def bodies(redis_client) -> list[bytes]:
    return list(redis_client.scan_iter(keys.BODY.format("*")))


def test_a_large_task_waits_as_a_small_message_and_its_body_goes_with_its_acknowledgement(
        start_worker, redis_client):
    task_id = submit_task("tests.measure", args=["a" + "x" * (BIG - 2) + "z"], worker_type="general")
    (message,) = queued(redis_client)
    assert len(message) < 2048, f"the queued message is {len(message)} bytes"
    envelope = json.loads(message)
    assert envelope["body"] == "" and envelope["properties"][transport.BODY_BYTES] > BIG
    assert envelope["headers"]["id"] == task_id
    (body_key,) = bodies(redis_client)
    assert body_key.decode() == keys.BODY.format(envelope["properties"]["delivery_tag"])
    start_worker("general")
    assert wait_for_state(task_id)["result"] == [BIG, "a", "z"]
    wait_for(lambda: not bodies(redis_client) and redis_client.hlen("unacked") == 0, 10,
             message="the body and the record to go with the acknowledgement")


def test_large_tasks_come_one_per_fetch_and_small_ones_as_a_batch_within_the_byte_budget(redis_client):
    # The fetch script itself, as a worker calls it: two large tasks and twenty small ones queued.
    requests = [prepare("tests.measure", args=["y" * BIG], worker_type="general", partition=0) for _ in range(2)]
    requests += [prepare("tests.measure", args=["s" * 8_000], worker_type="general", partition=0)
                 for _ in range(20)]
    enqueue(requests)
    small_size = len(redis_client.lindex(QUEUES[0], 0))
    assert small_size < transport.INLINE_BYTES  # queued whole
    keys_ = ["unacked", "unacked_index", *QUEUES, transport.bell_key(QUEUES[0])]
    levels = [1, 8]  # one level of 8 queues
    costs = [8, int(2.5 * small_size), 1, "tests.measure", transport.BUDGET // 8]  # cap 8 a fetch, 2.5 smalls a batch
    sizes = []
    while True:
        reply = redis_client.eval(transport._FETCH, len(keys_), *keys_, 8, 1, 1, *levels, *costs, 0, 0, 0)
        if reply[0] == b"empty":
            break
        sizes.append([len(reply[i + 1]) for i in range(1, len(reply), 3)])
        assert all(reply[i + 2] == 1 for i in range(1, len(reply), 3))  # each recorded as unacked
    large, small = sizes[:2], sizes[2:]
    assert [len(batch) for batch in large] == [1, 1] and all(s < 2048 for batch in large for s in batch)
    # two fit the byte budget
    assert [len(batch) for batch in small] == [2] * 10, sizes
    assert redis_client.hlen("unacked") == 22 and len(bodies(redis_client)) == 2


def test_a_fetch_records_a_message_it_cannot_parse(redis_client):
    # Nothing in the script decodes JSON: the tag is read from the message's tail.
    item = '{"body": "not json at all: {{{", "properties": {"delivery_tag": "tag-1"}}'
    redis_client.lpush(QUEUES[0], item)
    keys_ = ["unacked", "unacked_index", *QUEUES, transport.bell_key(QUEUES[0])]
    reply = redis_client.eval(transport._FETCH, len(keys_), *keys_, 8, 1, 1, 1, 8, 1, 1 << 20, 0, 0, 0, 0)
    assert reply[1:] == [QUEUES[0].encode(), item.encode(), 1]
    assert redis_client.hget("unacked", "tag-1") == item.encode()


def test_purge_deletes_the_bodies_of_large_tasks(redis_client):
    from workers.queues import purge_queue

    enqueue([prepare("tests.measure", args=["p" * BIG], worker_type="general", partition=3) for _ in range(3)]
            + [prepare("tests.measure", args=["small"], worker_type="general", partition=3)])
    assert len(bodies(redis_client)) == 3
    assert purge_queue("general.normal.p3") == 4
    assert bodies(redis_client) == [] and redis_client.llen("general.normal.p3") == 0
    assert list(redis_client.scan_iter(keys.PURGING.format("*"))) == []


def test_a_revoked_delayed_large_task_leaves_no_body_behind(redis_client):
    task_id = submit_task("tests.measure", args=["d" * BIG], worker_type="general",
                          eta=datetime.now(UTC) + timedelta(days=2))
    assert scheduled_count() == 1 and len(bodies(redis_client)) == 1
    revoke_task(task_id)
    assert move_due(redis_client, now=datetime.now(UTC).timestamp() + 2 * 86400 + 3600) == 0
    assert scheduled_count() == 0 and bodies(redis_client) == []


def test_a_delayed_large_task_runs_with_its_body(start_worker, redis_client):
    task_id = submit_task("tests.measure", args=["e" * BIG], worker_type="general", countdown=2)
    start_worker("general")
    assert wait_for_state(task_id, timeout=30)["result"] == [BIG, "e", "e"]
    wait_for(lambda: not bodies(redis_client), 10, message="the body to go with the acknowledgement")


def test_large_tasks_held_by_a_killed_worker_run_after_the_visibility_timeout(start_worker, redis_client):
    from tests.conftest import worker_env

    env = worker_env(VOKAFLOW_VISIBILITY_TIMEOUT=3, VOKAFLOW_RESTORE_INTERVAL=1)
    ids = [s.task_id for s in enqueue([prepare("tests.sleep_then_measure", args=[2, "k" * BIG],
                                               worker_type="general") for _ in range(2)])]
    first = start_worker("general", concurrency=1, env=env)
    wait_for(lambda: task_meta(ids[0])["status"] == "STARTED" or task_meta(ids[1])["status"] == "STARTED", 20,
             message="a large task to start")
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)
    start_worker("general", concurrency=2, env=env)
    for task_id in ids:
        assert wait_for_state(task_id, timeout=40)["result"] == [BIG, "k", "k"]
    wait_for(lambda: not bodies(redis_client) and redis_client.hlen("unacked") == 0, 20,
             message="every body and record to go")


def test_a_large_result_is_stored_whole_beside_the_fetch(start_worker, redis_client):
    # A SUCCESS meta over the script limit is written by an optimistic transaction, not carried
    # by the next fetch script; small ones still ride it.
    start_worker("general")
    large = submit_task("vokaflow.echo", args=["r" * 200_000], worker_type="general")
    small = submit_task("vokaflow.echo", args=["s"], worker_type="general")
    assert wait_for_state(large)["result"] == {"args": ["r" * 200_000], "kwargs": {}}
    assert wait_for_state(small)["result"] == {"args": ["s"], "kwargs": {}}

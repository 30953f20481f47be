"""Redis Cluster: the layout of keys over slots, URLs, and a real cluster of six redis-server
processes (tests/conftest.py's redis_cluster)."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta

import pytest
import redis

from vokaflow.core.slots import SLOTS, key_slot, partition_tag, task_id_for, task_tag
from vokaflow.redis_connect import BadRedisUrl, cluster_client, cluster_nodes, redacted_url

# The slots `redis-cli --cluster create` gives 3 primaries.
THIRDS = [range(0, 5461), range(5461, 10923), range(10923, SLOTS)]


def per_primary(partitions: int) -> list[int]:
    slots = [key_slot(partition_tag(p, partitions)) for p in range(partitions)]
    return [sum(slot in third for slot in slots) for third in THIRDS]


def test_key_slots_are_redis_clusters_own(cluster):
    node = cluster.primaries()[0]
    for key in ["cpu.high.p3", "cpu.high.p3{a1f0}", "x{}y", "{}{a}", "a{b}c{d}", "é{ü}"]:
        assert key_slot(key) == node.cluster("keyslot", key), key


def test_partitions_of_a_type_spread_over_three_primaries():
    assert per_primary(8) == [3, 2, 3]  # no primary holds more than 3 of the default 8
    assert per_primary(12) == [4, 4, 4]
    assert max(per_primary(24)) == 8
    assert len({partition_tag(p, 8) for p in range(8)}) == 8


def test_a_task_id_carries_its_partitions_tag_and_stays_a_uuid():
    import uuid

    tag = partition_tag(3, 8)
    task_id = task_id_for(tag)
    assert task_tag(task_id) == tag and str(uuid.UUID(task_id)) == task_id
    assert task_tag("not-hex-id") == "not-hex-id"  # an id from elsewhere: a slot of its own


def test_cluster_urls_name_every_node_with_password_and_tls():
    nodes, user, password, tls = cluster_nodes("redisclusters://app:s%3Acret@a:7000,b:7001,c/")
    assert nodes == [("a", 7000), ("b", 7001), ("c", 6379)] and (user, password, tls) == ("app", "s:cret", True)
    assert redacted_url("rediscluster://:pw@a:7000,b:7001/") == "rediscluster://***@a:7000,b:7001/"
    with pytest.raises(BadRedisUrl, match="names no node"):
        cluster_nodes("rediscluster:///")
    with pytest.raises(BadRedisUrl, match="is not host:port"):
        cluster_nodes("rediscluster://a:notaport/")


def test_a_cluster_url_finds_every_primary_from_any_one_node(cluster):
    client = cluster_client(f"rediscluster://127.0.0.1:{cluster.ports[4]}/")
    assert len(client.get_primaries()) == 3 and len(client.get_replicas()) == 3
    client.set("hello", "cluster")
    assert client.get("hello") == b"cluster"


def test_a_url_that_is_no_cluster_or_does_not_answer_says_which_and_why(redis_client, cluster):
    from django.conf import settings

    port = redis_client.connection_pool.connection_kwargs["port"]
    with pytest.raises(BadRedisUrl, match=rf"rediscluster://\*\*\*@127.0.0.1:{port}/ cannot be used: it is not a "
                                          "Redis Cluster") as caught:
        cluster_client(f"rediscluster://:hunter2@127.0.0.1:{port}/")
    assert "hunter2" not in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(BadRedisUrl, match="rediscluster://127.0.0.1:1/ cannot be used"):
        cluster_client("rediscluster://127.0.0.1:1/", timeout=0.5)
    assert settings.REDIS_URL  # the suite's single Redis is untouched


def test_the_clusters_own_check_is_clean(cluster):
    check = subprocess.run(["redis-cli", "--cluster", "check", f"127.0.0.1:{cluster.ports[0]}"],
                           capture_output=True, text=True, timeout=30)
    assert check.returncode == 0 and "[OK] All 16384 slots covered." in check.stdout, check.stdout


def test_one_script_may_touch_only_one_slot(cluster):
    """Why every key set a script touches shares a hash tag."""
    client = cluster.client()
    tag = partition_tag(0, 8)
    assert client.eval("return redis.call('SET', KEYS[1], 1) and redis.call('SET', KEYS[2], 2)", 2,
                       f"a{{{tag}}}", f"b{{{tag}}}") is not None
    owner = client.get_node_from_key("a")
    node = redis.Redis(host=owner.host, port=owner.port)
    with pytest.raises(redis.ResponseError, match="same slot"):  # Redis itself refuses it (CROSSSLOT)
        node.eval("return 1", 2, "a", "b{x}")


def test_a_batch_spreads_over_the_shards_each_task_with_its_record_in_its_queues_slot(on_cluster):
    from tasks.records import task_record
    from tasks.submit import enqueue, prepare
    from vokaflow.core.queues import parse_queue

    client = on_cluster.client()
    answers = enqueue([prepare("vokaflow.echo", args=[i], partition_key=f"customer-{i}") for i in range(200)])
    queues = {a.queue for a in answers}
    assert all(parse_queue(q) and q.endswith("}") for q in queues) and len(queues) == 8
    for answer in answers[:20]:
        assert key_slot(answer.queue) == key_slot(f"vokaflow:task:{{{answer.task_id[:4]}}}")
        assert task_record(answer.task_id).queue == answer.queue
    per_primary = []
    for node in client.get_primaries():
        direct = redis.Redis(host=node.host, port=node.port)
        per_primary.append(sum(direct.llen(q) for q in queues if client.get_node_from_key(q).name == node.name))
    assert sum(per_primary) == 200 and all(n > 0 for n in per_primary)  # every primary holds some


def test_an_idempotency_key_answers_the_first_task_on_the_cluster(on_cluster):
    from tasks.submit import enqueue, prepare

    first = enqueue([prepare("vokaflow.echo", args=[1], idempotency_key="order-7")], owner=None)[0]
    again = enqueue([prepare("vokaflow.echo", args=[2], idempotency_key="order-7")], owner=None)[0]
    assert again.duplicate and again.task_id == first.task_id and again.queue == first.queue


def marks(client, worker_type: str, rank: int) -> list[tuple[int, int]]:
    """(announcements, found stale) of `rank` in every partition group's marks of `worker_type`."""
    from vokaflow.announce import groups, marks_key

    return [(int(client.hget(marks_key(worker_type, g), str(rank)) or 0),
             int(client.hget(marks_key(worker_type, g), f"{rank}s") or 0)) for g in groups()]


def announcing(client, queue: str):
    from vokaflow.core import keys
    from vokaflow.core.queues import queue_tag

    return client.hget(keys.in_group(keys.ANNOUNCING, queue_tag(queue)), queue)


def test_a_push_into_an_empty_queue_announces_its_level_to_every_group_once(on_cluster):
    """vokaflow.announce: the push that finds a queue empty adds one to its rank's count in every
    group and marks its announcement done; pushes into the non-empty queue then add nothing; the
    lowest level is never announced."""
    from tasks.submit import enqueue, prepare

    client = on_cluster.client()
    first = enqueue([prepare("vokaflow.echo", args=[1], priority="HIGH", partition_key="a")])[0]
    assert marks(client, "general", 2) == [(1, 0)] * 8
    assert announcing(client, first.queue) == b"done"
    for i in range(3):  # single and batched pushes into the same, non-empty queue
        enqueue([prepare("vokaflow.echo", args=[i], priority="HIGH", partition_key="a")] * (i + 1))
    assert marks(client, "general", 2) == [(1, 0)] * 8
    enqueue([prepare("vokaflow.echo", args=[1], priority="MAINTENANCE", partition_key="a")])
    assert marks(client, "general", 7) == [(0, 0)] * 8
    client.delete(first.queue)  # emptied (a purge): the next push announces again
    enqueue([prepare("vokaflow.echo", args=[1], priority="HIGH", partition_key="a")])
    assert marks(client, "general", 2) == [(2, 0)] * 8


def test_a_push_while_an_announcement_is_under_way_announces_too(on_cluster):
    """The race the token closes: a push that finds the queue empty has written its token but not
    yet its marks; a second push into the now non-empty queue must announce as well, or it could
    be answered before any group knew of its level."""
    from tasks.submit import enqueue, prepare
    from vokaflow.announce import ANNOUNCE
    from vokaflow.core import keys
    from vokaflow.core.queues import queue_tag

    client = on_cluster.client()
    probe = enqueue([prepare("vokaflow.echo", args=[0], priority="CRITICAL", partition_key="b")])[0]
    queue, hash_key = probe.queue, keys.in_group(keys.ANNOUNCING, queue_tag(probe.queue))
    client.delete(queue)
    client.lpush(queue, "m1")  # the first pusher, stopped between its push and its marks:
    assert client.eval(ANNOUNCE, 2, queue, hash_key, 1, "first") == 2
    enqueue([prepare("vokaflow.echo", args=[1], priority="CRITICAL", partition_key="b")])
    assert marks(client, "general", 1) == [(2, 0)] * 8  # the probe's and the second push's
    assert announcing(client, queue) == b"first"  # only the first pusher marks its own token done
    client.lpush(queue, "m2")
    assert client.eval(ANNOUNCE, 2, queue, hash_key, 1, "third") == 1  # still under way: announce too


def test_delayed_tasks_moved_when_due_announce_their_level(on_cluster):
    from tasks.scheduled import move_due
    from tasks.submit import enqueue, prepare
    from vokaflow.core.queues import parse_queue

    client = on_cluster.client()
    eta = datetime.now(UTC) + timedelta(seconds=5)
    answers = enqueue([prepare("vokaflow.echo", args=[i], priority="EMERGENCY", eta=eta, partition_key=f"k{i}")
                       for i in range(20)])
    assert marks(client, "general", 0) == [(0, 0)] * 8  # waiting in the scheduled sets: no queue yet
    assert move_due(now=eta.timestamp()) == 20
    queues = {a.queue for a in answers}
    assert all(parse_queue(q).priority == 0 for q in queues) and len(queues) == 8
    # Eight queues found empty, each announced once to all eight groups.
    assert marks(client, "general", 0) == [(8, 0)] * 8
    assert {announcing(client, q) for q in queues} == {b"done"}


def test_a_fetch_takes_nothing_while_a_higher_level_is_announced_and_no_record_hides_a_later_one(on_cluster):
    """The marks check of the cluster's fetch script (cluster_transport.MARKS_CHECK), on one group:
    it answers `marked` instead of taking a task while a level above the one served was announced
    more often than recorded as seen; a record lets the fetch go on; a record never lowers what
    was seen, and one that arrives late never hides a later announcement."""
    from math import ceil
    from time import time

    from tasks.submit import enqueue, prepare
    from vokaflow.announce import marks_key
    from vokaflow.cluster_transport import FETCH, unacked_keys
    from vokaflow.core.queues import queue_tag

    client = on_cluster.client()
    queue = enqueue([prepare("vokaflow.echo", args=[1], partition_key="m")])[0].queue  # NORMAL, rank 3
    group = queue_tag(queue)
    marks, (unacked, index, _) = marks_key("general", group), unacked_keys(group)
    client.hset(marks, "1", 5)  # five CRITICAL announcements, none seen

    def fetch(*stale: tuple[str, str]):
        keys_ = [marks, unacked, index, queue]
        args = [len(stale), *[v for pair in stale for v in pair], 3, "0", "1", "2",
                1, 0, ceil(time()), 1, 1, 8, 256 * 1024, 0, 0, 0, 0]
        return [x.decode() if isinstance(x, bytes) else x for x in client.eval(FETCH, len(keys_), *keys_, *args)]

    assert fetch() == ["marked", "1", "5"] and client.llen(queue) == 1
    assert fetch(("1", "5"))[0] == "message" and client.llen(queue) == 0
    client.hincrby(marks, "1", 1)  # a later announcement
    enqueue([prepare("vokaflow.echo", args=[2], partition_key="m")])
    assert fetch(("1", "5")) == ["marked", "1", "6"]  # a late record of 5 does not hide the sixth
    assert fetch(("1", "3")) == ["marked", "1", "6"] and client.hget(marks, "1s") == b"5"  # never lowered
    assert fetch(("1", "6"))[0] == "message"


def test_a_large_message_to_a_queue_of_no_partition_group_is_pushed_on_the_cluster(on_cluster):
    """A remote-control reply (a queue of no partition group) keeps its own slot, apart from its
    outlined body's: it is pushed outside a MULTI, as before the announcements."""
    import json

    from vokaflow.transport import push

    client = on_cluster.client()
    message = json.dumps({"body": "x" * 40_000, "headers": {}, "properties": {"delivery_tag": "reply-1"}})
    push(client, {"c0.reply.celery.pidbox": [message]})
    assert client.llen("c0.reply.celery.pidbox") == 1 and client.exists("vokaflow:body:reply-1")


def test_a_quota_place_queued_before_acknowledgements_are_taken_is_freed_with_them(on_cluster):
    """On a cluster the places travel apart from the fetch (each owner's set has a slot of its
    own): taking the pending acknowledgements frees every place queued so far, and drops none
    (the combined soak on a cluster left hundreds taken, drained with the acknowledgements and
    never written)."""
    from kombu import Connection

    from vokaflow.cluster_transport import ClusterTransport
    from vokaflow.hotpath import pending_releases
    from vokaflow.redis_connect import kombu_url

    client = on_cluster.client()
    client.zadd("vokaflow:pending:7", {"t1": 1e12, "t2": 1e12})
    with Connection(kombu_url(on_cluster.url), transport=ClusterTransport,
                    transport_options={"cluster_url": on_cluster.url, "priority_steps": [0]}) as conn:
        channel = conn.default_channel
        pending_releases.extend([("vokaflow:pending:7", "t1"), ("vokaflow:pending:7", "t2")])
        channel._take_pending()
        assert not pending_releases and client.zcard("vokaflow:pending:7") == 0

"""Delayed tasks wait in a Redis sorted set per worker type and move to their queue when due."""

import json
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from tasks.scheduled import move_due, scheduled_count, scheduled_tasks
from tasks.state import revoke_task
from tasks.submit import submit_task
from tasks.validation import SubmissionError
from tests.test_submit import queued

BASE = "/api/high-scale-tasks"


def test_a_delayed_task_waits_in_its_types_set_and_not_in_a_queue(redis_client):
    task_id = submit_task("vokaflow.echo", countdown=30, priority="HIGH", partition_key="a")
    assert queued(redis_client) == {}
    ((raw, due),) = redis_client.zrange("vokaflow:scheduled:general", 0, -1, withscores=True)
    message = json.loads(raw)
    assert message["headers"]["id"] == task_id and message["properties"]["delivery_info"]["routing_key"] == \
        "general.high.p3"
    assert abs(due - (time.time() + 30)) < 2
    assert move_due(redis_client) == 0 and scheduled_count() == 1


def test_due_tasks_move_to_the_queue_named_in_them_and_ring_its_bell(redis_client):
    soon = submit_task("vokaflow.echo", countdown=5, partition_key="a")
    later = submit_task("vokaflow.sleep", args=[1], countdown=50, priority="LOW", partition_key="a")
    bells = redis_client.xlen("vokaflow:bell:general")
    assert move_due(redis_client, now=time.time() + 10) == 1
    assert queued(redis_client) == {"general.normal.p3": 1}
    assert json.loads(redis_client.lindex("general.normal.p3", 0))["headers"]["id"] == soon
    assert redis_client.xlen("vokaflow:bell:general") >= max(bells, 1)
    assert [t.task_id for t in scheduled_tasks(10)] == [later]
    assert move_due(redis_client, now=time.time() + 100) == 1
    assert queued(redis_client) == {"general.normal.p3": 1, "io.low.p3": 1}


def test_movers_running_at_once_move_each_task_exactly_once(redis_client):
    from tasks.submit import enqueue, prepare

    enqueue([prepare("vokaflow.echo", args=[i], countdown=5) for i in range(1000)])
    moved = []
    later = time.time() + 10
    threads = [threading.Thread(target=lambda: moved.append(move_due(redis_client, now=later))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(moved) == 1000 and sum(queued(redis_client).values()) == 1000 and scheduled_count() == 0
    ids = [json.loads(m)["headers"]["id"] for q in queued(redis_client) for m in redis_client.lrange(q, 0, -1)]
    assert len(set(ids)) == 1000


def test_the_scheduled_page_lists_soonest_first_with_route_and_eta(redis_client):
    far_eta = datetime.now(UTC).replace(microsecond=0) + timedelta(days=400)
    far = submit_task("vokaflow.sleep", args=[1], eta=far_eta)
    near = submit_task("vokaflow.cpu", args=[10], countdown=60, priority="CRITICAL")
    listed = scheduled_tasks(10)
    assert [t.task_id for t in listed] == [near, far]
    assert listed[0].worker_type == "CPU_INTENSIVE" and listed[0].priority == "CRITICAL"
    # the listed ETA is the one submitted, whatever the day of the year the test runs on
    assert abs(listed[1].eta - far_eta) < timedelta(seconds=1)
    assert [t.task_id for t in scheduled_tasks(1)] == [near]


@pytest.mark.django_db
def test_a_revoked_scheduled_task_is_dropped_when_it_comes_due(redis_client):
    task_id = submit_task("vokaflow.echo", eta=datetime.now(UTC) + timedelta(days=30))
    revoke_task(task_id)
    # the revoke outlives the wait: it is kept until the eta plus the result TTL
    assert redis_client.zscore("vokaflow:revoked", task_id) > time.time() + 30 * 86400
    assert move_due(redis_client, now=time.time() + 30 * 86400 + 3600) == 0
    assert queued(redis_client) == {} and scheduled_count() == 0


def submit_delayed_as(client, days: int = 30) -> str:
    response = client.post(f"{BASE}/tasks/", {"task": "vokaflow.echo", "countdown": days * 86400}, format="json")
    assert response.status_code == 202, response.content
    return response.json()["task_id"]


def test_revoking_a_users_delayed_task_frees_its_quota_place_at_once(api, user, redis_client):
    task_id = submit_delayed_as(api)
    pending = f"vokaflow:pending:{user.pk}"
    assert redis_client.zscore(pending, task_id) is not None
    response = api.delete(f"{BASE}/tasks/{task_id}/")
    assert response.status_code == 200 and response.json()["state"] == "REVOKED"
    assert redis_client.zscore(pending, task_id) is None
    assert api.get(f"{BASE}/tasks/{task_id}/").json()["state"] == "REVOKED"


def test_a_users_delayed_task_that_comes_due_revoked_gives_its_place_back(api, user, redis_client):
    task_id = submit_delayed_as(api)
    other = submit_delayed_as(api)
    pending = f"vokaflow:pending:{user.pk}"
    # a revoke recorded while the place was not freed (the user's id travels as a JSON number)
    redis_client.zadd("vokaflow:revoked", {task_id: time.time() + 60 * 86400})
    assert json.loads(redis_client.zrange("vokaflow:scheduled:general", 0, 0)[0])["headers"]["vokaflow_owner"] \
        == user.pk
    assert move_due(redis_client, now=time.time() + 30 * 86400 + 3600) == 1
    assert redis_client.zscore(pending, task_id) is None
    assert redis_client.zscore(pending, other) is not None  # moved to its queue: still pending
    assert queued(redis_client) and scheduled_count() == 0


@pytest.mark.parametrize("body, field", [
    ({"countdown": 4e8}, "countdown"),
    ({"countdown": 1e300}, "countdown"),
    ({"eta": "9999-12-31T23:59:59Z"}, "eta"),
])
def test_a_delay_beyond_ten_years_is_refused_naming_the_limit(api, redis_client, body, field):
    response = api.post(f"{BASE}/tasks/", {"task": "vokaflow.echo", **body}, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()["errors"] and "VOKAFLOW_MAX_DELAY" in response.json()["detail"]
    assert queued(redis_client) == {} and scheduled_count() == 0


def test_nine_years_is_accepted(redis_client):
    submit_task("vokaflow.echo", countdown=9 * 365 * 86400)
    with pytest.raises(SubmissionError):
        submit_task("vokaflow.echo", countdown=11 * 365 * 86400)
    assert scheduled_count() == 1

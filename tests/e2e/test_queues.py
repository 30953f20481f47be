"""Queues API with real workers: depth and age, pause and resume a level, purge."""

import time

import pytest
from rest_framework.test import APIClient

from tasks.submit import enqueue, prepare
from tests.conftest import client_as, user_with_perms, wait_for, wait_for_state

BASE = "/api/high-scale-tasks"
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def staff():
    return client_as(user_with_perms("operator", is_staff=True))


def submit(priority: str, n: int = 1, partition_key: str = "k") -> list[str]:
    requests = [prepare("vokaflow.echo", args=[i], priority=priority, partition_key=partition_key) for i in range(n)]
    return [s.task_id for s in enqueue(requests)]


def test_queues_are_staff_only(api):
    assert APIClient().get(f"{BASE}/queues/").status_code == 401
    assert api.get(f"{BASE}/queues/").status_code == 403
    assert api.post(f"{BASE}/queues/pause", {"worker_type": "GENERAL_PURPOSE", "priority": "LOW"},
                    format="json").status_code == 403


def test_list_shows_each_non_empty_queue_with_depth_and_oldest_age(staff, redis_client):
    submit("LOW", 3)
    time.sleep(1.1)  # the oldest task is at least a second old
    submit("HIGH", 1)
    body = staff.get(f"{BASE}/queues/").json()
    assert body["paused_levels"] == []
    by_name = {q["name"]: q for q in body["queues"]}
    assert set(by_name) == {"general.low.p5", "general.high.p5"}
    low = by_name["general.low.p5"]
    assert (low["worker_type"], low["priority"], low["partition"], low["depth"]) == ("GENERAL_PURPOSE", "LOW", 5, 3)
    assert low["oldest_age_seconds"] >= 1 and low["paused"] is False
    assert [q["name"] for q in body["queues"]] == ["general.high.p5", "general.low.p5"]  # highest priority first
    assert "/api/high-scale-tasks/queues/" in staff.get("/api/schema/").content.decode()


def test_bad_level_is_a_400_naming_the_field(staff, redis_client):
    response = staff.post(f"{BASE}/queues/pause", {"worker_type": "GENERAL_PURPOSE", "priority": "URGENT"},
                          format="json")
    assert response.status_code == 400 and "priority" in response.json()["errors"]
    assert redis_client.smembers("vokaflow:paused") == set()


def test_purge_deletes_the_queue_and_answers_the_count(staff, redis_client):
    submit("LOW", 4)
    response = staff.delete(f"{BASE}/queues/general.low.p5/")
    assert response.status_code == 200 and response.json() == {"purged": 4}
    assert redis_client.llen("general.low.p5") == 0
    missing = staff.delete(f"{BASE}/queues/general.urgent.p0/")
    assert missing.status_code == 404 and "no queue named" in missing.json()["detail"]


@pytest.mark.slow
def test_a_paused_level_stays_queued_on_live_and_new_workers_until_resumed(staff, start_worker, redis_client):
    live = start_worker("general", concurrency=1)
    wait_for(lambda: staff.get(f"{BASE}/workers/status").json()["total_workers"] == 1, 10, 0.1, "the heartbeat")
    response = staff.post(f"{BASE}/queues/pause", {"worker_type": "GENERAL_PURPOSE", "priority": "LOW"}, format="json")
    assert response.status_code == 200 and response.json()["paused"] is True
    wait_for(lambda: "Canceling queue general.low.p5" in live.output(), 10, 0.1, "the worker to cancel the queue")

    low = submit("LOW", 3)
    # A lower priority than LOW: the worker reaches it only by skipping the paused level.
    wait_for_state(submit("BACKGROUND", 1)[0])
    assert redis_client.llen("general.low.p5") == 3
    body = staff.get(f"{BASE}/queues/").json()
    assert body["paused_levels"] == [{"worker_type": "GENERAL_PURPOSE", "priority": "LOW"}]
    assert body["queues"][0]["paused"] is True
    assert staff.get(f"{BASE}/metrics").json()["paused_levels"] == body["paused_levels"]
    assert 'vokaflow_paused_level{priority="LOW",worker_type="GENERAL_PURPOSE"} 1.0' in \
        staff.get("/metrics").content.decode()

    # A worker started while the level is paused leaves it alone too.
    live.stop()
    later = start_worker("general", concurrency=1)
    wait_for_state(submit("BATCH", 1)[0])
    assert redis_client.llen("general.low.p5") == 3

    assert staff.post(f"{BASE}/queues/resume", {"worker_type": "GENERAL_PURPOSE", "priority": "LOW"},
                      format="json").json()["paused"] is False
    for task_id in low:
        wait_for_state(task_id)
    assert "Started consuming from general.low.p5" in later.output()
    assert staff.get(f"{BASE}/queues/").json() == {"queues": [], "paused_levels": []}


@pytest.mark.slow
def test_a_worker_that_missed_the_broadcast_follows_the_paused_set(start_worker, redis_client):
    worker = start_worker("general", concurrency=1)
    # Written straight to the set, as if the worker had been starting when the pause was broadcast.
    redis_client.sadd("vokaflow:paused", "GENERAL_PURPOSE:LOW")
    wait_for(lambda: "Canceling queue general.low.p0" in worker.output(), 10, 0.1, "the heartbeat to pause it")
    low = submit("LOW", 2)
    wait_for_state(submit("BACKGROUND", 1)[0])
    assert redis_client.llen("general.low.p5") == 2
    redis_client.srem("vokaflow:paused", "GENERAL_PURPOSE:LOW")
    for task_id in low:
        wait_for_state(task_id)

"""Per-user quota of pending tasks: 429 with Retry-After when full, nothing enqueued, freed as tasks finish."""

import time

import pytest

from tasks.quota import pending_count
from tasks.submit import submit_task
from tests.conftest import wait_for, wait_for_state
from tests.test_submit import queued

BASE = "/api/high-scale-tasks"


@pytest.fixture
def quota_of_three(settings):
    settings.VOKAFLOW_USER_PENDING_QUOTA = 3


def submit(api, **body):
    return api.post(f"{BASE}/tasks/", {"task": "vokaflow.echo", **body}, format="json")


def test_a_user_over_the_quota_gets_429_and_nothing_is_enqueued(api, user, redis_client, quota_of_three):
    for i in range(3):
        assert submit(api, args=[i]).status_code == 202
    response = submit(api, args=[4])
    assert response.status_code == 429, response.content
    assert int(response["Retry-After"]) > 0
    body = response.json()
    assert body["quota"] == 3 and body["pending"] == 3 and "VOKAFLOW_USER_PENDING_QUOTA" in body["detail"]
    assert sum(queued(redis_client).values()) == 3
    assert pending_count(redis_client, str(user.pk)) == 3


def test_a_batch_that_would_go_over_is_refused_whole_and_its_idempotency_keys_stay_free(
        api, redis_client, quota_of_three):
    assert submit(api).status_code == 202
    batch = {"tasks": [{"task": "vokaflow.echo", "idempotency_key": f"k{i}"} for i in range(3)]}
    response = api.post(f"{BASE}/tasks/batch/", batch, format="json")
    assert response.status_code == 429
    assert sum(queued(redis_client).values()) == 1
    assert not redis_client.exists("vokaflow:idem:k0")
    two = api.post(f"{BASE}/tasks/batch/", {"tasks": batch["tasks"][:2]}, format="json")
    assert two.status_code == 202 and not any(t["duplicate"] for t in two.json()["tasks"])


def test_the_quota_is_per_user_and_the_python_api_has_none(api, redis_client, quota_of_three):
    from django.contrib.auth import get_user_model
    from rest_framework.test import APIClient

    for _ in range(3):
        submit(api)
    other = APIClient()
    other.force_authenticate(get_user_model().objects.create_user("bob", password="bob-password"))
    assert submit(other).status_code == 202
    for _ in range(5):
        submit_task("vokaflow.echo")
    assert sum(queued(redis_client).values()) == 9


def test_a_duplicate_submission_takes_no_place(api, user, redis_client, quota_of_three):
    for _ in range(5):
        assert submit(api, idempotency_key="same").status_code == 202
    assert pending_count(redis_client, str(user.pk)) == 1


def test_an_entry_whose_finish_was_never_reported_stops_counting_after_the_result_ttl(
        api, user, redis_client, quota_of_three):
    for _ in range(3):
        submit(api)
    assert submit(api).status_code == 429
    key = f"vokaflow:pending:{user.pk}"
    assert 0 < redis_client.ttl(key) <= 24 * 3600 + 1
    oldest = redis_client.zrange(key, 0, 0)[0]
    redis_client.zadd(key, {oldest: time.time() - 1})  # as if submitted a result TTL ago
    assert submit(api).status_code == 202


@pytest.mark.django_db(transaction=True)
def test_finished_tasks_free_their_places(start_worker, redis_client, settings):
    from django.contrib.auth import get_user_model
    from rest_framework.test import APIClient

    settings.VOKAFLOW_USER_PENDING_QUOTA = 3
    user = get_user_model().objects.create_user("carol", password="carol-password")
    client = APIClient()
    client.force_authenticate(user)
    ids = [submit(client, args=[i]).json()["task_id"] for i in range(2)]
    failing = client.post(f"{BASE}/tasks/", {"task": "vokaflow.fail"}, format="json").json()["task_id"]
    assert submit(client).status_code == 429
    start_worker("general")
    for task_id in ids:
        wait_for_state(task_id)
    wait_for_state(failing, ("FAILURE",))
    wait_for(lambda: pending_count(redis_client, str(user.pk)) == 0, message="the places to be freed")
    assert submit(client).status_code == 202

"""Tasks belong to whoever submitted them: reads, revokes and idempotency keys are scoped to the user."""

import pytest
from rest_framework.test import APIClient

from tasks.submit import submit_task
from tests.test_submit import queued

BASE = "/api/high-scale-tasks"
pytestmark = pytest.mark.django_db


def client_for(django_user_model, username: str, **flags) -> APIClient:
    client = APIClient()
    client.force_authenticate(django_user_model.objects.create_user(username, **flags))
    return client


@pytest.fixture
def alice(django_user_model):
    return client_for(django_user_model, "alice")


@pytest.fixture
def bob(django_user_model):
    return client_for(django_user_model, "bob")


@pytest.fixture
def staff(django_user_model):
    return client_for(django_user_model, "ops", is_staff=True)


def submit(client, **payload) -> dict:
    response = client.post(f"{BASE}/tasks/", {"task": "vokaflow.echo", **payload}, format="json")
    assert response.status_code == 202, response.content
    return response.json()


def test_another_users_task_answers_404_like_an_unknown_id(alice, bob, staff, redis_client):
    task_id = submit(alice)["task_id"]
    assert alice.get(f"{BASE}/tasks/{task_id}/").status_code == 200
    theirs = bob.get(f"{BASE}/tasks/{task_id}/")
    unknown = bob.get(f"{BASE}/tasks/00000000-0000-0000-0000-000000000000/")
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.json() == {"detail": f"no task with id {task_id}"}
    assert staff.get(f"{BASE}/tasks/{task_id}/").json()["state"] == "PENDING"


def test_another_user_cannot_revoke_a_task(alice, bob, redis_client):
    task_id = submit(alice)["task_id"]
    assert bob.delete(f"{BASE}/tasks/{task_id}/").status_code == 404
    assert alice.get(f"{BASE}/tasks/{task_id}/").json()["state"] == "PENDING"
    assert redis_client.zscore("vokaflow:revoked", task_id) is None
    assert alice.delete(f"{BASE}/tasks/{task_id}/").json()["state"] == "REVOKED"


def test_staff_may_revoke_any_task(alice, staff, redis_client):
    task_id = submit(alice)["task_id"]
    assert staff.delete(f"{BASE}/tasks/{task_id}/").json()["state"] == "REVOKED"


def test_a_task_from_the_python_api_belongs_to_the_system_and_staff_see_it(alice, staff, redis_client):
    task_id = submit_task("vokaflow.echo", args=["system"])
    assert alice.get(f"{BASE}/tasks/{task_id}/").status_code == 404
    assert alice.delete(f"{BASE}/tasks/{task_id}/").status_code == 404
    assert staff.get(f"{BASE}/tasks/{task_id}/").status_code == 200


def test_the_owner_is_stored_but_never_shown(alice, django_user_model, redis_client):
    from tasks.records import task_record

    body = submit(alice)
    assert "owner" not in body
    assert "owner" not in alice.get(f"{BASE}/tasks/{body['task_id']}/").json()
    assert task_record(body["task_id"]).owner == django_user_model.objects.get(username="alice").pk


def test_batch_tasks_belong_to_the_submitter(alice, bob, redis_client):
    response = alice.post(f"{BASE}/tasks/batch/", {"tasks": [{"task": "vokaflow.noop"}] * 3}, format="json")
    ids = [t["task_id"] for t in response.json()["tasks"]]
    assert all(alice.get(f"{BASE}/tasks/{i}/").status_code == 200 for i in ids)
    assert all(bob.get(f"{BASE}/tasks/{i}/").status_code == 404 for i in ids)


def test_idempotency_keys_are_scoped_to_the_user(alice, bob, redis_client):
    first = submit(alice, idempotency_key="invoice-9")
    again = submit(alice, idempotency_key="invoice-9")
    assert again["task_id"] == first["task_id"] and again["duplicate"] is True
    bobs = submit(bob, idempotency_key="invoice-9")
    assert bobs["duplicate"] is False and bobs["task_id"] != first["task_id"]
    assert bob.get(f"{BASE}/tasks/{bobs['task_id']}/").status_code == 200
    assert sum(queued(redis_client).values()) == 2
    # The system's key of the same name is a third submission.
    system = submit_task("vokaflow.echo", idempotency_key="invoice-9")
    assert system not in (first["task_id"], bobs["task_id"])
    assert sum(queued(redis_client).values()) == 3


def test_idempotency_in_a_batch_is_scoped_to_the_user(alice, bob, redis_client):
    entry = {"task": "vokaflow.noop", "idempotency_key": "nightly"}
    first = alice.post(f"{BASE}/tasks/batch/", {"tasks": [entry]}, format="json").json()["tasks"][0]
    bobs = bob.post(f"{BASE}/tasks/batch/", {"tasks": [entry, entry]}, format="json").json()["tasks"]
    assert bobs[0]["duplicate"] is False and bobs[0]["task_id"] != first["task_id"]
    assert bobs[1]["duplicate"] is True and bobs[1]["task_id"] == bobs[0]["task_id"]
    assert sum(queued(redis_client).values()) == 2

"""The task API through Django's test client: auth, shapes, every bad input, broker down."""

import json

import pytest
from rest_framework.test import APIClient

from tests.conftest import run_python, worker_env
from tests.test_submit import queued

BASE = "/api/high-scale-tasks"
pytestmark = pytest.mark.django_db


def test_requests_without_credentials_get_401():
    client = APIClient()
    for method, path in [("post", f"{BASE}/tasks/"), ("get", f"{BASE}/tasks/catalog/"),
                         ("post", f"{BASE}/tasks/batch/"), ("get", f"{BASE}/tasks/abc/")]:
        assert getattr(client, method)(path, {}, format="json").status_code == 401, path


def test_a_jwt_from_the_token_endpoint_opens_the_api(user, redis_client):
    client = APIClient()
    token = client.post("/api/auth/token/", {"username": "alice", "password": "alice-password"}, format="json")
    assert token.status_code == 200
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token.json()['access']}")
    response = client.post(f"{BASE}/tasks/", {"task": "vokaflow.noop"}, format="json")
    assert response.status_code == 202
    wrong = APIClient().post("/api/auth/token/", {"username": "alice", "password": "nope"}, format="json")
    assert wrong.status_code == 401


def test_submit_answers_202_with_the_route(api, redis_client):
    response = api.post(f"{BASE}/tasks/", {"task": "vokaflow.sleep", "args": [0.1], "priority": "CRITICAL",
                                           "partition_key": "customer-42"}, format="json")
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["queue"] == "io.critical.p5" and body["partition"] == 5
    assert body["priority"] == "CRITICAL" and body["worker_type"] == "IO_INTENSIVE"
    assert body["task"] == "vokaflow.sleep" and body["task_id"]
    assert body["status_url"].endswith(f"{BASE}/tasks/{body['task_id']}/")
    assert queued(redis_client) == {"io.critical.p5": 1}


def test_paths_work_with_and_without_trailing_slash(api, redis_client):
    assert api.post(f"{BASE}/tasks", {"task": "vokaflow.noop"}, format="json").status_code == 202
    assert api.get(f"{BASE}/tasks/catalog").status_code == 200
    assert api.post(f"{BASE}/tasks/batch", {"tasks": [{"task": "vokaflow.noop"}]}, format="json").status_code == 202


def test_state_of_a_pending_task_and_404_for_an_unknown_one(api, redis_client):
    task_id = api.post(f"{BASE}/tasks/", {"task": "vokaflow.echo"}, format="json").json()["task_id"]
    body = api.get(f"{BASE}/tasks/{task_id}/").json()
    assert body["state"] == "PENDING" and body["queue"].startswith("general.normal.p") and body["retries"] == 0
    missing = api.get(f"{BASE}/tasks/00000000-0000-0000-0000-000000000000/")
    assert missing.status_code == 404 and "no task" in missing.json()["detail"]


def test_idempotency_key_returns_the_first_submission(api, redis_client):
    payload = {"task": "vokaflow.echo", "args": [1], "idempotency_key": "invoice-9"}
    first = api.post(f"{BASE}/tasks/", payload, format="json").json()
    second = api.post(f"{BASE}/tasks/", payload, format="json").json()
    assert second["task_id"] == first["task_id"] and second["duplicate"] is True and first["duplicate"] is False
    assert sum(queued(redis_client).values()) == 1


def test_catalog_lists_submittable_tasks_with_defaults_and_arguments(api):
    entries = {e["name"]: e for e in api.get(f"{BASE}/tasks/catalog/").json()}
    assert {"vokaflow.noop", "vokaflow.echo", "vokaflow.sleep", "vokaflow.cpu", "vokaflow.fail",
            "vokaflow.flaky"} <= set(entries)
    assert entries["vokaflow.cpu"]["worker_type"] == "CPU_INTENSIVE"
    assert entries["vokaflow.sleep"]["arguments"] == [{"name": "seconds", "required": False, "type": "float",
                                                        "default": 1.0, "min": 0, "max": 60}]
    assert entries["vokaflow.flaky"]["max_retries"] == 3


@pytest.mark.parametrize("payload, field", [
    ({}, "task"),
    ({"task": "os.system", "args": ["rm -rf /"]}, "task"),
    ({"task": "vokaflow.echo", "priority": "URGENT"}, "priority"),
    ({"task": "vokaflow.echo", "worker_type": "GPU"}, "worker_type"),
    ({"task": "vokaflow.echo", "args": "not a list"}, "args"),
    ({"task": "vokaflow.echo", "kwargs": [1, 2]}, "kwargs"),
    ({"task": "vokaflow.echo", "countdown": "soon"}, "countdown"),
    ({"task": "vokaflow.echo", "eta": "yesterday"}, "eta"),
    ({"task": "vokaflow.echo", "priorty": "HIGH"}, "priorty"),
    ({"task": "vokaflow.echo", "partition_key": 7}, "partition_key"),
])
def test_bad_input_is_a_400_naming_the_field_and_nothing_is_enqueued(api, redis_client, payload, field):
    response = api.post(f"{BASE}/tasks/", payload, format="json")
    assert response.status_code == 400, response.content
    body = response.json()
    assert field in body["errors"] and field in body["detail"]
    assert queued(redis_client) == {}


def test_an_unknown_task_error_lists_what_is_allowed(api, redis_client):
    body = api.post(f"{BASE}/tasks/", {"task": "celery.backend_cleanup"}, format="json").json()
    assert "vokaflow.echo" in body["allowed"] and "celery.backend_cleanup" not in body["allowed"]


def test_malformed_json_and_non_object_bodies_are_400(api, redis_client):
    broken = api.post(f"{BASE}/tasks/", data="{not json", content_type="application/json")
    assert broken.status_code == 400
    assert api.post(f"{BASE}/tasks/", [1, 2], format="json").status_code == 400
    assert queued(redis_client) == {}


def test_an_oversized_body_is_413(api, redis_client, settings):
    settings.VOKAFLOW_MAX_BODY_BYTES = 10_000
    response = api.post(f"{BASE}/tasks/", {"task": "vokaflow.echo", "args": ["x" * 20_000]}, format="json")
    assert response.status_code == 413 and "limit" in response.json()["detail"]
    assert queued(redis_client) == {}


def test_a_batch_of_1000_is_enqueued_with_one_entry_each(api, redis_client):
    tasks = [{"task": "vokaflow.noop", "priority": "LOW", "partition_key": f"k{i}"} for i in range(1000)]
    response = api.post(f"{BASE}/tasks/batch/", {"tasks": tasks}, format="json")
    assert response.status_code == 202
    body = response.json()
    assert body["count"] == 1000 and len({t["task_id"] for t in body["tasks"]}) == 1000
    assert sum(queued(redis_client).values()) == 1000
    assert all(q.startswith("general.low.") for q in queued(redis_client))


def test_a_batch_over_1000_is_refused_whole(api, redis_client):
    response = api.post(f"{BASE}/tasks/batch/", {"tasks": [{"task": "vokaflow.noop"}] * 1001}, format="json")
    assert response.status_code == 400 and "1001" in response.json()["detail"]
    assert queued(redis_client) == {}


def test_one_bad_entry_fails_the_whole_batch_and_names_its_index(api, redis_client):
    tasks = [{"task": "vokaflow.noop"}] * 5 + [{"task": "vokaflow.noop", "priority": "NOW"}]
    body = api.post(f"{BASE}/tasks/batch/", {"tasks": tasks}, format="json").json()
    assert "tasks[5].priority" in body["errors"]
    assert queued(redis_client) == {}


def test_revoking_an_unknown_task_is_404_and_a_pending_one_becomes_revoked(api, redis_client):
    assert api.delete(f"{BASE}/tasks/nope/").status_code == 404
    task_id = api.post(f"{BASE}/tasks/", {"task": "vokaflow.echo"}, format="json").json()["task_id"]
    response = api.delete(f"{BASE}/tasks/{task_id}/")
    assert response.status_code == 200 and response.json()["state"] == "REVOKED"


def test_openapi_schema_and_docs_are_served(api):
    schema = api.get("/api/schema/", HTTP_ACCEPT="application/json")
    assert schema.status_code == 200
    assert f"{BASE}/tasks/" in json.loads(schema.content)["paths"]
    assert api.get("/api/docs/").status_code == 200


def test_health_is_open_and_says_no_worker_is_alive(redis_client):
    response = APIClient().get("/api/health/")
    body = response.json()
    assert response.status_code == 503 and body["status"] == "failing"
    assert body["checks"]["database"]["ok"] and body["checks"]["broker"]["ok"]
    assert not body["checks"]["workers"]["ok"] and "start one" in body["checks"]["workers"]["error"]


BROKER_DOWN_CLIENT = """
import json, time, django
django.setup()
from django.test.utils import setup_test_environment
setup_test_environment()
from django.contrib.auth.models import User
from rest_framework.test import APIClient
client = APIClient()
client.force_authenticate(User(username="probe", id=1))
started = time.monotonic()
submit = client.post("/api/high-scale-tasks/tasks/", {"task": "vokaflow.echo"}, format="json")
health = APIClient().get("/api/health/")
print(json.dumps({"submit": submit.status_code, "detail": submit.json().get("detail", ""),
                  "health": health.status_code, "broker_ok": health.json()["checks"]["broker"]["ok"],
                  "seconds": time.monotonic() - started}))
"""


def test_broker_down_is_a_503_with_a_clear_message_not_a_hang():
    env = worker_env(DJANGO_SETTINGS_MODULE="vokaflow.settings", REDIS_URL="redis://127.0.0.1:1/0",
                     ALLOWED_HOSTS="testserver")
    result = run_python(BROKER_DOWN_CLIENT, env=env, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["submit"] == 503 and "unreachable" in outcome["detail"]
    assert outcome["health"] == 503 and outcome["broker_ok"] is False

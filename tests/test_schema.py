"""The OpenAPI schema is the contract: shapes, error answers, strict enums, JSON everywhere."""

from __future__ import annotations

import json

import pytest
from rest_framework.test import APIClient

from tasks import validation
from tasks.api.serializers import LockSerializer, TaskSubmitSerializer
from tests.test_submit import queued
from vokaflow.core.priorities import Priority
from vokaflow.core.workers import WorkerType

BASE = "/api/high-scale-tasks"
pytestmark = pytest.mark.django_db


@pytest.fixture
def schema(api) -> dict:
    return json.loads(api.get("/api/schema/", HTTP_ACCEPT="application/json").content)


def operation(schema: dict, path: str, method: str) -> dict:
    return schema["paths"][path][method]


def response_schema(schema: dict, path: str, method: str, code: str, media: str = "application/json") -> dict:
    found = operation(schema, path, method)["responses"][code]["content"][media]["schema"]
    return resolve(schema, found)


def resolve(schema: dict, node: dict) -> dict:
    if "$ref" in node:
        return schema["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    return node


def test_the_request_serializers_have_the_fields_validation_accepts():
    assert tuple(TaskSubmitSerializer().fields) == validation.PAYLOAD_FIELDS
    assert set(LockSerializer().fields) == validation.LOCK_FIELDS


def test_batch_answer_dlq_page_and_metrics_are_documented_as_they_are(schema):
    batch = response_schema(schema, f"{BASE}/tasks/batch/", "post", "202")
    assert set(batch["properties"]) == {"count", "tasks"} and batch["properties"]["tasks"]["type"] == "array"
    page = response_schema(schema, f"{BASE}/dlq/", "get", "200")
    assert set(page["properties"]) == {"count", "next", "previous", "results"}
    assert list(operation(schema, "/metrics", "get")["responses"]["200"]["content"]) == ["text/plain"]


def test_every_operation_documents_its_errors_with_the_error_schema(schema):
    for path, methods in schema["paths"].items():
        for method, op in methods.items():
            errors = {code: r for code, r in op["responses"].items() if code >= "400"}
            assert "503" in errors, (method, path)
            for code, answer in errors.items():
                if path == "/api/health/":
                    continue  # its 503 is the health report, naming the failing check
                assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}, \
                    (method, path, code)
    submit = operation(schema, f"{BASE}/tasks/", "post")["responses"]
    assert {"400", "401", "403", "413", "415", "429", "503"} <= set(submit)
    assert {"404", "409"} <= set(operation(schema, f"{BASE}/tasks/{{task_id}}/", "delete")["responses"])
    error = schema["components"]["schemas"]["Error"]
    assert error["required"] == ["detail"] and "errors" in error["properties"]


def test_the_lock_schema_has_skip_if_locked_and_an_optional_timeout_with_its_default(schema):
    lock = schema["components"]["schemas"]["Lock"]
    assert lock["required"] == ["key"] and lock["properties"]["timeout"]["default"] == validation.LOCK_TIMEOUT_DEFAULT
    assert lock["properties"]["skip_if_locked"]["type"] == "boolean"
    assert lock["additionalProperties"] is False


def test_a_waiting_lock_acquire_documents_its_429_with_retry_after(schema):
    # Beyond VOKAFLOW_LOCK_WAITERS waiting acquires per web process, 429 at once (tests/test_lock_waits.py).
    answers = operation(schema, f"{BASE}/lock/{{key}}/acquire/", "post")["responses"]
    assert set(answers) >= {"200", "409", "429"}
    assert "VOKAFLOW_LOCK_WAITERS" in answers["429"]["description"]
    assert answers["429"]["headers"]["Retry-After"]["schema"] == {"type": "integer"}
    assert resolve(schema, answers["429"]["content"]["application/json"]["schema"]) == \
        schema["components"]["schemas"]["Error"]
    assert "429 with Retry-After" in schema["components"]["schemas"]["Acquire"]["properties"]["wait"]["description"]


def test_task_is_an_enum_of_the_submittable_names(schema, api):
    task = schema["components"]["schemas"]["TaskSubmit"]["properties"]["task"]
    enum = resolve(schema, task["allOf"][0])["enum"]
    names = [e["name"] for e in api.get(f"{BASE}/tasks/catalog/").json()]
    assert enum == names


@pytest.mark.parametrize("value", ["high", " High ", "HIGH ", 0, 2, True])
def test_priority_is_the_exact_upper_case_name(api, redis_client, value):
    response = api.post(f"{BASE}/tasks/", {"task": "vokaflow.noop", "priority": value}, format="json")
    assert response.status_code == 400 and "priority" in response.json()["errors"]
    assert queued(redis_client) == {}


@pytest.mark.parametrize("value", ["io", "io_intensive", " IO_INTENSIVE"])
def test_worker_type_is_the_exact_upper_case_name(api, redis_client, value):
    response = api.post(f"{BASE}/tasks/", {"task": "vokaflow.noop", "worker_type": value}, format="json")
    assert response.status_code == 400 and "worker_type" in response.json()["errors"]
    assert queued(redis_client) == {}


def test_the_python_api_and_the_cli_keep_short_and_any_case_names():
    assert Priority.parse(" high ") is Priority.HIGH and Priority.parse(2) is Priority.HIGH
    assert WorkerType.parse("io") is WorkerType.IO_INTENSIVE
    with pytest.raises(ValueError):
        Priority.parse("high", strict=True)


@pytest.mark.parametrize("path", [f"{BASE}/tasks/a%20b/", f"{BASE}/dlq/%E2%9C%93/", f"{BASE}/lock/a*b",
                                  f"{BASE}/nothing-here", "/api/nope"])
def test_unknown_api_paths_are_json_404(api, path):
    response = api.get(path)
    assert response.status_code == 404 and response["Content-Type"] == "application/json"
    assert "detail" in response.json()


def test_unknown_api_paths_are_json_404_without_credentials_too():
    response = APIClient().post(f"{BASE}/tasks/a%20b/retry")
    assert response.status_code == 404 and response.json()["detail"]


@pytest.mark.parametrize("host", ["/v;", "evil.example", "a b"])
def test_a_host_header_the_server_does_not_answer_for_is_a_json_400_on_the_api(api, redis_client, host):
    response = api.post(f"{BASE}/dlq/x/retry/", {}, format="json", HTTP_HOST=host)
    assert response.status_code == 400 and response["Content-Type"] == "application/json"
    assert response.json()["errors"] == {"Host": ["not allowed"]}
    assert queued(redis_client) == {}
    page = APIClient().get("/console/", HTTP_HOST=host)  # pages keep Django's own 400 page
    assert page.status_code == 400 and page["Content-Type"].startswith("text/html")


def test_a_field_error_from_a_serializer_is_flat_and_named(django_user_model, redis_client):
    client = APIClient()
    client.force_authenticate(django_user_model.objects.create_user("root", is_staff=True, is_superuser=True))
    body = client.post(f"{BASE}/dlq/retry", {"priority": "high"}, format="json").json()
    assert list(body["errors"]) == ["priority"] and "priority" in body["detail"]

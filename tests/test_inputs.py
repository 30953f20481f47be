"""Inputs that once answered 500: each is a 400 (or 411) JSON naming the field, and nothing is enqueued."""

from __future__ import annotations

import http.client
import io
import json
import re
import subprocess
import sys

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from tasks.models import DeadLetter
from tasks.submit import submit_task
from tasks.validation import SubmissionError
from tests.conftest import ROOT, free_port, wait_for, worker_env
from tests.test_submit import queued

BASE = "/api/high-scale-tasks"
pytestmark = pytest.mark.django_db


@pytest.fixture
def superuser(django_user_model):
    return django_user_model.objects.create_user("root", password="root-password", is_staff=True, is_superuser=True)


@pytest.fixture
def admin_api(superuser):
    client = APIClient()
    client.force_authenticate(superuser)
    return client


def assert_nothing_enqueued(redis_client) -> None:
    assert queued(redis_client) == {}
    assert list(redis_client.scan_iter(match="vokaflow:task:*")) == []
    assert list(redis_client.scan_iter(match="vokaflow:idem:*")) == []


def post_raw(client, path: str, raw: str, method: str = "post"):
    return getattr(client, method)(BASE + path, data=raw, content_type="application/json")


def assert_400_naming(response, field: str) -> dict:
    assert response.status_code == 400, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert field in body["errors"], body
    assert field in body["detail"], body
    return body


@pytest.mark.parametrize("eta", ["2030-02-30T00:00:00", "2030-01-01T25:00:00", "2030-01-01T00:00:00+25:00",
                                 "9999-12-31T23:00:00-05:00"])
def test_an_impossible_eta_is_a_400(api, redis_client, eta):
    assert_400_naming(api.post(f"{BASE}/tasks/", {"task": "vokaflow.noop", "eta": eta}, format="json"), "eta")
    assert_nothing_enqueued(redis_client)


@pytest.mark.parametrize("countdown", ["1e12", "1e300", str(10**30), str(10**400)])
def test_a_countdown_past_the_last_date_is_a_400(api, redis_client, countdown):
    response = post_raw(api, "/tasks/", '{"task": "vokaflow.noop", "countdown": ' + countdown + "}")
    body = assert_400_naming(response, "countdown")
    assert "VOKAFLOW_MAX_DELAY" in body["detail"] or "finite" in body["detail"]
    assert_nothing_enqueued(redis_client)


def test_a_countdown_that_is_not_finite_is_refused_by_the_python_api(redis_client):
    with pytest.raises(SubmissionError, match="countdown: must be a finite number"):
        submit_task("vokaflow.noop", countdown=float("inf"))
    assert_nothing_enqueued(redis_client)


@pytest.mark.parametrize("field", ["partition_key", "idempotency_key"])
def test_a_lone_surrogate_in_a_key_is_a_400(api, redis_client, field):
    assert_400_naming(post_raw(api, "/tasks/", '{"task": "vokaflow.noop", "' + field + '": "a\\ud800"}'), field)
    assert_nothing_enqueued(redis_client)


@pytest.mark.parametrize("field", ["partition_key", "idempotency_key"])
def test_a_lone_surrogate_in_a_key_is_refused_by_the_python_api(redis_client, field):
    with pytest.raises(SubmissionError, match=f"{field}: not valid Unicode"):
        submit_task("vokaflow.noop", **{field: "a\ud800"})
    assert_nothing_enqueued(redis_client)


def test_a_lone_surrogate_in_a_batch_names_the_entry(api, redis_client):
    raw = '{"tasks": [{"task": "vokaflow.noop"}, {"task": "vokaflow.noop", "partition_key": "\\udfff"}]}'
    assert_400_naming(post_raw(api, "/tasks/batch/", raw), "tasks[1].partition_key")
    assert_nothing_enqueued(redis_client)


def test_a_lone_surrogate_in_a_lock_key_and_in_a_release_token_is_a_400(api, admin_api, redis_client):
    assert_400_naming(post_raw(api, "/tasks/", '{"task": "vokaflow.noop", "lock": {"key": "\\ud800"}}'), "lock")
    assert_400_naming(post_raw(admin_api, "/lock/nightly/release", '{"token": "\\ud800"}', "delete"), "token")
    assert_400_naming(post_raw(admin_api, "/lock/nightly/acquire", '{"owner": "\\ud800", "timeout": 5}'), "owner")
    assert_nothing_enqueued(redis_client)
    assert list(redis_client.scan_iter(match="vokaflow:lock:*")) == []


def test_a_valid_surrogate_pair_is_accepted(api, redis_client):
    raw = '{"task": "vokaflow.echo", "args": ["\\ud83d\\ude00"], "partition_key": "\\ud83d\\ude00"}'
    response = post_raw(api, "/tasks/", raw)
    assert response.status_code == 202, response.content
    assert sum(queued(redis_client).values()) == 1


def test_a_body_nested_943_deep_is_a_400(api, redis_client):
    raw = '{"task": "vokaflow.echo", "args": ' + "[" * 943 + "]" * 943 + "}"
    body = assert_400_naming(post_raw(api, "/tasks/", raw), "args")
    assert "nested deeper than 64" in body["detail"]
    assert_nothing_enqueued(redis_client)


def test_a_body_nested_beyond_the_parser_is_a_400(api, redis_client):
    response = post_raw(api, "/tasks/", "[" * 100_000 + "]" * 100_000)
    assert response.status_code == 400 and "nested" in response.json()["detail"]
    assert_nothing_enqueued(redis_client)


def test_arguments_nested_just_under_the_limit_are_accepted_and_readable(api, redis_client):
    deep = json.loads("[" * 60 + "]" * 60)
    response = api.post(f"{BASE}/tasks/", {"task": "vokaflow.echo", "args": [deep]}, format="json")
    assert response.status_code == 202, response.content
    assert api.get(f"{BASE}/tasks/{response.json()['task_id']}/").status_code == 200


@pytest.mark.parametrize("field", ["args", "kwargs"])
@pytest.mark.parametrize("depth", [65, 943])
def test_arguments_nested_too_deep_are_refused_at_submission(redis_client, field, depth):
    deep = json.loads("[" * depth + "]" * depth)
    value = [deep] if field == "args" else {"a": deep}
    with pytest.raises(SubmissionError, match=f"{field}: nested deeper than 64"):
        submit_task("vokaflow.echo", **{field: value})
    assert_nothing_enqueued(redis_client)


@pytest.fixture
def dead_letter(db):
    return DeadLetter.objects.create(task_id="dead-1", task_name="vokaflow.fail", args=[1], kwargs={},
                                     worker_type="GENERAL_PURPOSE", priority="NORMAL", partition=0,
                                     queue="general.normal.p0", reason="not_retried", error="boom",
                                     dlq_timestamp=timezone.now())


@pytest.mark.parametrize("raw", ["[1]", '"x"', "1", "[]", "null"])
def test_bulk_retry_with_a_body_that_is_not_an_object_is_a_400(admin_api, redis_client, dead_letter, raw):
    assert_400_naming(post_raw(admin_api, "/dlq/retry", raw), "body")
    assert_400_naming(post_raw(admin_api, "/dlq/dead-1/retry", raw), "body")
    assert DeadLetter.objects.get(task_id="dead-1").status == "dead"
    assert_nothing_enqueued(redis_client)


@pytest.mark.parametrize("params", ["args__contains=x", "kwargs__has_key=a", "traceback__regex=(", "nope=1",
                                    "partition__gt=abc"])
def test_the_admin_refuses_unknown_lookups_without_a_server_error(superuser, dead_letter, params):
    from django.test import Client

    client = Client()
    client.force_login(superuser)
    response = client.get(f"/admin/tasks/deadletter/?{params}")
    assert response.status_code == 400, response.status_code


@pytest.mark.parametrize("params", ["status__exact=dead", "status=dead", "worker_type=GENERAL_PURPOSE",
                                    "dlq_timestamp__gte=2000-01-01", "q=boom"])
def test_the_admin_filters_still_work(superuser, dead_letter, params):
    from django.test import Client

    client = Client()
    client.force_login(superuser)
    response = client.get(f"/admin/tasks/deadletter/?{params}")
    assert response.status_code == 200 and b"vokaflow.fail" in response.content


@pytest.mark.parametrize("skip", ["false", '"false"', "0", "null"])
def test_skip_if_locked_must_be_a_json_boolean(api, redis_client, skip):
    raw = '{"task": "vokaflow.noop", "lock": {"key": "k", "skip_if_locked": ' + skip + "}}"
    response = post_raw(api, "/tasks/", raw)
    if skip == "false":
        assert response.status_code == 202, response.content
        return
    assert_400_naming(response, "lock.skip_if_locked")
    assert_nothing_enqueued(redis_client)


def test_a_chunked_body_without_a_dechunking_server_is_a_411(redis_client):
    from vokaflow.wsgi import application

    answers = []
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": f"{BASE}/tasks/", "SERVER_NAME": "localhost",
               "SERVER_PORT": "80", "wsgi.url_scheme": "http", "HTTP_TRANSFER_ENCODING": "chunked",
               "CONTENT_TYPE": "application/json", "wsgi.input": io.BytesIO(b'{"task": "vokaflow.noop"}'),
               "wsgi.errors": sys.stderr}
    body = b"".join(application(environ, lambda status, headers: answers.append((status, dict(headers)))))
    assert answers[0][0].startswith("411") and answers[0][1]["Content-Type"] == "application/json"
    assert "Content-Length" in json.loads(body)["detail"]
    assert_nothing_enqueued(redis_client)


@pytest.fixture
def gunicorn(transactional_db, tmp_path):
    port = free_port()
    log = open(tmp_path / "gunicorn.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "vokaflow.wsgi", "--bind", f"127.0.0.1:{port}",
                             "--workers", "1"], cwd=ROOT, env=worker_env(ALLOWED_HOSTS="127.0.0.1"),
                            stdout=log, stderr=subprocess.STDOUT)

    def answers():
        try:
            http.client.HTTPConnection("127.0.0.1", port, timeout=1).request("GET", "/api/schema/")
            return True
        except OSError:
            return False
    try:
        wait_for(answers, 30, 0.1, "gunicorn to listen")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def chunked_post(port: int, path: str, chunks: list[bytes], token: str) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("POST", path, body=iter(chunks), encode_chunked=True,
                       headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    response = connection.getresponse()
    return response.status, json.loads(response.read())


@pytest.mark.slow
def test_a_chunked_body_is_read_by_gunicorn(gunicorn, django_user_model, redis_client, settings):
    from rest_framework_simplejwt.tokens import AccessToken

    token = str(AccessToken.for_user(django_user_model.objects.create_user("chunky")))
    status, body = chunked_post(gunicorn, f"{BASE}/tasks/", [b'{"task": "vokaflow.echo", ', b'"args": [1]}'], token)
    assert status == 202, body
    assert sum(queued(redis_client).values()) == 1
    # Over the body limit (2 MiB by default), chunked or not: 413 and nothing more enqueued.
    big = [b'{"task": "vokaflow.echo", "args": ["', b"x" * settings.VOKAFLOW_MAX_BODY_BYTES, b'"]}']
    status, body = chunked_post(gunicorn, f"{BASE}/tasks/", big, token)
    assert status == 413 and "limit" in body["detail"]
    assert sum(queued(redis_client).values()) == 1


@pytest.mark.parametrize("query, field", [
    ("page_size=null", "page_size"), ("page_size=0", "page_size"), ("page_size=-3", "page_size"),
    ("page_size=2.5", "page_size"), ("page_size=", "page_size"), ("page=null", "page"), ("page=0", "page"),
])
def test_a_dlq_page_or_page_size_that_is_not_a_whole_number_from_1_is_a_400(admin_api, redis_client, query, field):
    assert_400_naming(admin_api.get(f"{BASE}/dlq/?{query}"), field)


def test_dlq_pages_still_take_whole_numbers_last_and_a_size_over_500(admin_api, redis_client):
    for i in range(3):
        DeadLetter.objects.create(task_id=f"dead-{i}", task_name="vokaflow.fail", worker_type="GENERAL_PURPOSE",
                                  priority="LOW", partition=0, queue="general.low.p0", reason="not_retried",
                                  dlq_timestamp=timezone.now())
    assert len(admin_api.get(f"{BASE}/dlq/?page_size=2&page=2").json()["results"]) == 1
    assert len(admin_api.get(f"{BASE}/dlq/?page_size=2&page=last").json()["results"]) == 1
    assert admin_api.get(f"{BASE}/dlq/?page_size=100000").json()["count"] == 3
    assert admin_api.get(f"{BASE}/dlq/?page=3&page_size=2").status_code == 404  # past the last page


def error_detail_pattern(client) -> re.Pattern:
    """What the schema says every error's `detail` matches."""
    schema = client.get("/api/schema/?format=json").json()
    return re.compile(schema["components"]["schemas"]["Error"]["properties"]["detail"]["pattern"])


@pytest.mark.parametrize("path, body", [
    ("/queues/pause", {"worker_type": "\x00", "priority": "LOW"}),
    ("/queues/resume", {"worker_type": "GENERAL_PURPOSE", "priority": "\x00\x1b[31m"}),
    ("/dlq/retry", {"worker_type": "\x00"}),
    ("/dlq/retry?priority=%00", None),
    ("/dlq/dead-1/retry", {"priority": "LOW\x00"}),
    ("/tasks/", {"task": "vokaflow.echo", "\x00": 1}),
    ("/tasks/batch/", {"tasks": [{"task": "vokaflow.echo", "ab\x00c": 1}]}),
])
def test_an_error_that_quotes_a_control_character_escapes_it(admin_api, redis_client, path, body):
    response = admin_api.post(BASE + path, body, format="json") if body is not None else admin_api.post(BASE + path)
    assert response.status_code == 400, response.content
    answer = response.json()
    assert error_detail_pattern(admin_api).fullmatch(answer["detail"]), answer
    texts = [answer["detail"], *answer["errors"], *(r for reasons in answer["errors"].values() for r in reasons)]
    assert all(text.isprintable() for text in texts), answer
    assert "\\x00" in answer["detail"]  # the value is still shown, escaped
    assert_nothing_enqueued(redis_client)


def test_a_get_filter_and_an_unknown_path_escape_what_they_quote(admin_api, redis_client):
    answer = admin_api.get(f"{BASE}/dlq/?status=%00%07").json()
    assert answer["detail"] == 'status: "\\x00\\x07" is not a valid choice.', answer
    missing = admin_api.get("/api/no-such%00thing/")
    assert missing.status_code == 404 and missing.json()["detail"].endswith("/api/no-such\\x00thing/")

"""Generated requests from the OpenAPI schema, over every operation, as staff and as a plain user.

Schemathesis sends what the schema allows (and what it forbids) through the real WSGI
application, real Redis and the test database, and runs every check it has: no 5xx, every
status code documented, every body and content type as documented, data the schema allows is
accepted and data it forbids is refused. Bounded: a few thousand cases in all.
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import load_all_checks
from schemathesis.specs.openapi import checks as openapi_checks

pytestmark = [pytest.mark.slow, pytest.mark.django_db]

# Per operation and role: 27 operations x 2 roles x 2 modes (valid, invalid) x this.
MAX_EXAMPLES = int(os.environ.get("VOKAFLOW_SCHEMATHESIS_EXAMPLES", "20"))

load_all_checks()
# Every check a single request can be judged by. (The stateful ones, use_after_free and
# ensure_resource_availability, need links between operations the schema does not declare.)
CHECKS = [
    schemathesis.checks.not_a_server_error,
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_headers_conformance,
    openapi_checks.response_schema_conformance,
    openapi_checks.negative_data_rejection,
    openapi_checks.positive_data_acceptance,
    openapi_checks.missing_required_header,
    openapi_checks.unsupported_method,
    openapi_checks.allow_header_conformance,
    openapi_checks.ignored_auth,
]




def only_the_absent_worker_fails(ctx, response, case) -> None:
    """Health answers 503 here for one reason only: no worker runs in this test (Redis and the
    database are up), so that 503 is the documented report, not a server error."""
    if response.status_code == 503:
        failing = {name for name, check in response.json()["checks"].items() if not check["ok"]}
        assert failing == {"workers"}, f"health failing for {failing}: {response.text}"


HEALTH_CHECKS = [check for check in CHECKS if check is not schemathesis.checks.not_a_server_error] \
    + [only_the_absent_worker_fails]
# A submission's arguments are checked against the bounds its task declares (platform_task's
# `bounds`, e.g. vokaflow.sleep up to 60 s), which a schema of free-form `args`/`kwargs` cannot
# state: a schema-valid body may rightly get a 400 naming the argument. Every other check applies.
SUBMISSION_CHECKS = [check for check in CHECKS if check is not openapi_checks.positive_data_acceptance]
# A schedule is checked the same way (its task's arguments), and as a whole (a cron that never
# fires, an end before its start, a name taken), and so is a limit (a rate or a concurrency, not
# null for both): rules no schema states.
SUBMISSIONS = {("POST", "/api/high-scale-tasks/tasks/"), ("POST", "/api/high-scale-tasks/tasks/batch/"),
               ("POST", "/api/high-scale-tasks/schedules/"),
               ("PATCH", "/api/high-scale-tasks/schedules/{schedule_id}/"),
               ("PUT", "/api/high-scale-tasks/limits/{name}/")}


@pytest.fixture(params=["staff", "user"])
def role_headers(request, django_user_model, settings) -> dict:
    from rest_framework_simplejwt.tokens import AccessToken

    # Generated logins each hash a password: the fast hasher keeps the run to its cases, not PBKDF2.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

    staff = request.param == "staff"
    user = django_user_model.objects.create_user(request.param, is_staff=staff, is_superuser=staff)
    return {"Authorization": f"Bearer {AccessToken.for_user(user)}"}


@pytest.fixture
def keep_the_test_connection():
    """Serve requests on the test's database connection, as Django's test client does: the
    handler would otherwise close it after each request, and with it the test's transaction."""
    from django.core import signals
    from django.db import close_old_connections

    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


def test_every_operation_answers_as_documented(db, keep_the_test_connection, role_headers, redis_client):
    from vokaflow.wsgi import application

    schema = schemathesis.openapi.from_wsgi("/api/schema/?format=json", application)
    failures = []
    for operation in (result.ok() for result in schema.get_all_operations()):
        checks = HEALTH_CHECKS if operation.path == "/api/health/" else CHECKS
        if (operation.method.upper(), operation.path) in SUBMISSIONS:
            checks = SUBMISSION_CHECKS
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            try:
                exercise(operation, mode, checks, role_headers, redis_client)
            except Unsatisfiable:
                pass  # nothing in this operation can be made invalid (no parameters, no body)
            except (Exception, BaseExceptionGroup) as exc:  # every operation's failures, reported together
                failures.append(f"{mode.value} {operation.label}:\n{exc}")
    assert not failures, f"{len(failures)} failing:\n\n" + "\n\n".join(failures)


def exercise(operation, mode, checks, headers, redis_client) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    def call(case):
        try:
            case.call_and_validate(headers=headers, checks=checks)
        finally:
            # A lock taken by one case must not make a later acquire wait up to 30 s for it.
            for key in redis_client.scan_iter(match="vokaflow:lock:*"):
                redis_client.delete(key)

    call()

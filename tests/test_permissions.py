"""The permission matrix: every API endpoint and admin action, for every kind of caller.

Roles: anonymous; the owner of the task (a plain user); another plain user; staff without
permissions; staff with the view permissions (tasks.view_deadletter, tasks.view_locks); staff
with the change permissions (tasks.change_deadletter, tasks.use_locks); a superuser.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest
from django.test import Client
from rest_framework.test import APIClient

from tasks.models import DeadLetter
from tasks.submit import submit_task
from tests.conftest import user_with_perms

pytestmark = pytest.mark.django_db
BASE = "/api/high-scale-tasks"

ROLES = ["anonymous", "owner", "other", "staff", "staff_view", "staff_change", "superuser"]
PLAIN = ["owner", "other"]
STAFF_ROLES = ["staff", "staff_view", "staff_change", "superuser"]
SIGNED_IN = PLAIN + STAFF_ROLES


def make_user(role: str):
    if role == "anonymous":
        return None
    if role == "superuser":
        from django.contrib.auth import get_user_model

        return get_user_model().objects.create_superuser(role, password=None)
    perms = {"staff_view": ["tasks.view_deadletter", "tasks.view_locks"],
             "staff_change": ["tasks.change_deadletter", "tasks.use_locks"]}.get(role, [])
    return user_with_perms(role, *perms, is_staff=role.startswith("staff"))


def expect(default: int, **by_role: int) -> dict[str, int]:
    """The status each role gets: 401 for anonymous unless said, `default` for the others."""
    table = {role: default for role in ROLES}
    table["anonymous"] = 401
    for roles, status in by_role.items():
        for role in roles.split("__"):
            table[role] = status
    return table


# Groups of roles spelled as keyword names ("owner__other" = both).
NOT_PERMITTED = "owner__other__staff"
VIEW_ONLY = "staff_view"


@dataclass
class Endpoint:
    name: str
    method: str
    path: str
    expected: dict[str, int]
    body: dict | None = field(default=None)


ENDPOINTS = [
    Endpoint("submit", "post", "/tasks/", expect(202), {"task": "vokaflow.noop"}),
    Endpoint("batch", "post", "/tasks/batch/", expect(202), {"tasks": [{"task": "vokaflow.noop"}]}),
    Endpoint("catalog", "get", "/tasks/catalog/", expect(200)),
    Endpoint("task state", "get", "/tasks/{task}/", expect(200, other=404)),
    Endpoint("task revoke", "delete", "/tasks/{task}/", expect(200, other=404)),
    Endpoint("workers status", "get", "/workers/status", expect(200)),
    Endpoint("fleet metrics", "get", "/metrics", expect(200)),
    Endpoint("prometheus", "get", "PROMETHEUS", expect(200)),
    Endpoint("dlq list", "get", "/dlq/", expect(200, **{NOT_PERMITTED: 403})),
    Endpoint("dlq detail", "get", "/dlq/{letter}/", expect(200, **{NOT_PERMITTED: 403})),
    Endpoint("dlq retry", "post", "/dlq/{letter}/retry", expect(202, **{NOT_PERMITTED: 403, VIEW_ONLY: 403}), {}),
    Endpoint("dlq bulk retry", "post", "/dlq/retry", expect(202, **{NOT_PERMITTED: 403, VIEW_ONLY: 403}), {}),
    Endpoint("dlq discard", "delete", "/dlq/{letter}/", expect(200, **{NOT_PERMITTED: 403, VIEW_ONLY: 403})),
    Endpoint("lock detail", "get", "/lock/nightly", expect(200, **{NOT_PERMITTED: 403})),
    Endpoint("lock acquire", "post", "/lock/nightly/acquire",
             expect(200, **{NOT_PERMITTED: 403, VIEW_ONLY: 403}), {"timeout": 5}),
    Endpoint("lock extend", "post", "/lock/nightly/extend",
             expect(409, **{NOT_PERMITTED: 403, VIEW_ONLY: 403}), {"token": "not-held", "timeout": 5}),
    Endpoint("lock release", "delete", "/lock/nightly/release?token=not-held",
             expect(404, **{NOT_PERMITTED: 403, VIEW_ONLY: 403})),
    # Queue control is for staff, whatever their permissions.
    Endpoint("queue list", "get", "/queues", expect(200, owner__other=403)),
    Endpoint("queue pause", "post", "/queues/pause", expect(200, owner__other=403),
             {"worker_type": "IO_INTENSIVE", "priority": "LOW"}),
    Endpoint("queue resume", "post", "/queues/resume", expect(200, owner__other=403),
             {"worker_type": "IO_INTENSIVE", "priority": "LOW"}),
    Endpoint("queue purge", "delete", "/queues/io.low.p0", expect(200, owner__other=403)),
]


@pytest.fixture
def world(redis_client):
    """The owner's pending task and one dead letter, and a user per role."""
    users = {role: make_user(role) for role in ROLES}
    task_id = submit_task("vokaflow.echo", args=["mine"], owner=users["owner"].pk)
    letter = DeadLetter.objects.create(task_id="dead-1", task_name="vokaflow.echo", args=["x"], kwargs={},
                                       worker_type="GENERAL_PURPOSE", priority="NORMAL", partition=0,
                                       queue="general.normal.p0", reason="not_retried", error="boom",
                                       dlq_timestamp=datetime.now(UTC))
    return {"users": users, "task": task_id, "letter": letter}


def api_client(user) -> APIClient:
    client = APIClient()
    if user is not None:
        client.force_authenticate(user)
    return client


@pytest.mark.parametrize("endpoint, role", [(e, r) for e in ENDPOINTS for r in ROLES],
                         ids=[f"{e.name}-{r}" for e in ENDPOINTS for r in ROLES])
def test_api_permission_matrix(world, endpoint: Endpoint, role: str):
    path = endpoint.path.format(task=world["task"], letter=world["letter"].task_id)
    url = "/metrics" if path == "PROMETHEUS" else BASE + path
    client = api_client(world["users"][role])
    kwargs = {"format": "json"} if endpoint.body is not None else {}
    response = getattr(client, endpoint.method)(url, endpoint.body, **kwargs)
    assert response.status_code == endpoint.expected[role], response.content[:300]


def test_another_users_task_is_indistinguishable_from_an_unknown_one(world):
    other = api_client(world["users"]["other"])
    theirs = other.get(f"{BASE}/tasks/{world['task']}/")
    unknown = other.get(f"{BASE}/tasks/no-such-task/")
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.json()["detail"].replace(world["task"], "ID") == unknown.json()["detail"].replace("no-such-task",
                                                                                                   "ID")


# --- the admin ---------------------------------------------------------------------------------

ADMIN_PAGES = {
    # page: status per role (302: to the login page)
    "changelist": expect(200, owner__other=302, staff=403, anonymous=302),
    "change page": expect(200, owner__other=302, staff=403, anonymous=302),
}


def admin_client(user) -> Client:
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


@pytest.mark.parametrize("page", ADMIN_PAGES)
@pytest.mark.parametrize("role", ROLES)
def test_admin_dead_letter_pages(world, page: str, role: str):
    url = "/admin/tasks/deadletter/"
    if page == "change page":
        url += f"{world['letter'].pk}/change/"
    response = admin_client(world["users"][role]).get(url)
    assert response.status_code == ADMIN_PAGES[page][role]
    if response.status_code == 302:
        assert "/admin/login/" in response["Location"]


@pytest.mark.parametrize("role", ROLES)
def test_the_console_is_for_staff(world, role: str):
    response = admin_client(world["users"][role]).get("/console/")
    if role in STAFF_ROLES:
        assert response.status_code == 200
    else:
        assert response.status_code == 302 and "/admin/login/" in response["Location"]


ACTIONS = {"retry_selected": "retried", "discard_selected": "discarded"}
MAY_CHANGE = {"staff_change", "superuser"}


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("role", ROLES)
def test_admin_actions_need_the_change_permission(world, action: str, role: str):
    client = admin_client(world["users"][role])
    changelist = client.get("/admin/tasks/deadletter/")
    offered = changelist.status_code == 200 and f'value="{action}"'.encode() in changelist.content
    assert offered == (role in MAY_CHANGE)

    response = client.post("/admin/tasks/deadletter/", {"action": action, "_selected_action": [world["letter"].pk]})
    status = DeadLetter.objects.get(pk=world["letter"].pk).status
    assert status == (ACTIONS[action] if role in MAY_CHANGE else "dead")
    expected = {"anonymous": 302, "owner": 302, "other": 302, "staff": 403}.get(role)
    if expected:
        assert response.status_code == expected

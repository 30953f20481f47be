"""Console pages through Django's test client: who may see them, what each renders."""

import pytest
from django.test import Client

from tasks.models import DeadLetter
from tasks.submit import enqueue, prepare

pytestmark = pytest.mark.django_db

PAGES = ["/console/", "/console/queues/", "/console/running/", "/console/scheduled/", "/console/tasks/",
         "/console/submit/"]


@pytest.fixture
def staff(django_user_model):
    client = Client()
    client.force_login(django_user_model.objects.create_user("operator", is_staff=True))
    return client


def test_root_redirects_to_the_console_and_the_console_to_the_login(redis_client):
    assert Client().get("/").headers["Location"] == "/console/"
    for page in PAGES:
        response = Client().get(page)
        assert response.status_code == 302 and response.headers["Location"].startswith("/admin/login/"), page


def test_plain_users_are_sent_to_the_login(user, redis_client):
    client = Client()
    client.force_login(user)
    assert client.get("/console/").status_code == 302


def test_every_page_renders_whole_and_as_a_fragment(staff, redis_client):
    enqueue([prepare("vokaflow.echo", args=[1], priority="LOW", partition_key="k")])
    for page in PAGES:
        response = staff.get(page)
        assert response.status_code == 200, page
        assert b"<html" in response.content and b"console.js" in response.content
    fragment = staff.get("/console/?partial=1")
    assert fragment.status_code == 200 and b"<html" not in fragment.content
    assert b'data-level="GENERAL_PURPOSE:LOW"' in fragment.content
    assert b"general.low.p5" in staff.get("/console/queues/?worker_type=GENERAL_PURPOSE&priority=LOW").content


def test_purge_confirmation_states_the_count(staff, redis_client):
    enqueue([prepare("vokaflow.echo", args=[i], priority="LOW", partition_key="k") for i in range(3)])
    page = staff.get("/console/queues/general.low.p5/purge/")
    assert b"3 tasks" in page.content and redis_client.llen("general.low.p5") == 3
    staff.post("/console/queues/general.low.p5/purge/")
    assert redis_client.llen("general.low.p5") == 0


def test_submit_errors_show_next_to_their_field_and_nothing_is_enqueued(staff, redis_client):
    response = staff.post("/console/submit/", {"task": "vokaflow.sleep", "arg_seconds": "two", "priority": "URGENT"})
    assert response.status_code == 200
    assert b'data-error-for="arg_seconds"' in response.content
    response = staff.post("/console/submit/", {"task": "vokaflow.sleep", "arg_seconds": "0.1", "priority": "URGENT"})
    assert b'data-error-for="priority"' in response.content and b"unknown priority" in response.content
    assert not [k for k in redis_client.scan_iter("io.*")]
    response = staff.post("/console/submit/", {"task": "vokaflow.sleep", "arg_seconds": "0.1", "priority": "HIGH"})
    assert response.status_code == 302 and response.headers["Location"].startswith("/console/tasks/")
    assert redis_client.llen("io.high.p0") + sum(redis_client.llen(f"io.high.p{p}") for p in range(1, 8)) == 1


def test_a_task_submitted_from_the_console_is_the_submitting_users(staff, django_user_model, redis_client):
    from tasks.records import task_record
    from tests.conftest import client_as

    response = staff.post("/console/submit/", {"task": "vokaflow.echo", "priority": "LOW"})
    assert response.status_code == 302, response.content
    task_id = response.headers["Location"].rstrip("/").rsplit("/", 1)[1]
    operator = django_user_model.objects.get(username="operator")
    assert task_record(task_id).owner == operator.pk
    assert redis_client.zscore(f"vokaflow:pending:{operator.pk}", task_id) is not None  # counted in the quota
    operator.is_staff = False  # no longer staff: the task is still the operator's own
    operator.save()
    assert client_as(operator).get(f"/api/high-scale-tasks/tasks/{task_id}/").status_code == 200
    other = django_user_model.objects.create_user("someone-else")
    assert client_as(other).get(f"/api/high-scale-tasks/tasks/{task_id}/").status_code == 404


def test_the_console_submits_under_the_users_quota(staff, redis_client, settings):
    settings.VOKAFLOW_USER_PENDING_QUOTA = 1
    assert staff.post("/console/submit/", {"task": "vokaflow.echo", "priority": "LOW"}).status_code == 302
    response = staff.post("/console/submit/", {"task": "vokaflow.echo", "priority": "LOW"})
    assert response.status_code == 200 and b"VOKAFLOW_USER_PENDING_QUOTA" in response.content
    assert sum(redis_client.llen(f"general.low.p{p}") for p in range(8)) == 1


def test_task_page_of_an_unknown_task_is_a_404(staff, redis_client):
    response = staff.get("/console/tasks/no-such-task/")
    assert response.status_code == 404 and b"No task with id" in response.content


def test_retry_from_the_task_page_needs_the_change_permission(staff, django_user_model, redis_client):
    from django.contrib.auth.models import Permission
    from django.utils import timezone

    DeadLetter.objects.create(task_id="dead-1", task_name="vokaflow.fail", args=["x"], worker_type="GENERAL_PURPOSE",
                              priority="LOW", partition=0, queue="general.low.p0", reason="not_retried",
                              dlq_timestamp=timezone.now())
    assert staff.post("/console/tasks/dead-1/retry/").status_code == 403
    user = django_user_model.objects.get(username="operator")
    user.user_permissions.add(Permission.objects.get(codename="change_deadletter"))
    response = staff.post("/console/tasks/dead-1/retry/")
    assert response.status_code == 302 and DeadLetter.objects.get(task_id="dead-1").status == "retried"
    assert redis_client.llen("general.low.p0") == 1


def dead_letters(n: int, **fields) -> list[DeadLetter]:
    from django.utils import timezone

    defaults = {"task_name": "vokaflow.fail", "args": ["x"], "worker_type": "GENERAL_PURPOSE", "priority": "LOW",
                "partition": 0, "queue": "general.low.p0", "reason": "not_retried", "error": "TaskFailed: x"}
    return DeadLetter.objects.bulk_create([DeadLetter(task_id=f"{fields.get('priority', 'LOW')}-{i}",
                                                      dlq_timestamp=timezone.now(), **{**defaults, **fields})
                                           for i in range(n)])


def test_dead_letter_list_uses_the_platforms_labels_and_shows_the_reason(admin_client, redis_client):
    dead_letters(1, worker_type="CPU_INTENSIVE", queue="cpu.low.p0")
    page = admin_client.get("/admin/tasks/deadletter/").content.decode()
    assert "?worker_type=CPU_INTENSIVE" in page and ">CPU_INTENSIVE<" in page and "?priority=LOW" in page
    assert ">cpu<" not in page and ">low<" not in page
    assert "column-reason" in page and "Retry every dead letter matching these filters" in page


def test_retry_every_dead_letter_matching_the_filters_states_the_count_first(admin_client, redis_client):
    dead_letters(3, priority="LOW")
    dead_letters(2, priority="HIGH", queue="general.high.p0")
    confirm = admin_client.get("/admin/tasks/deadletter/retry-matching/?priority=HIGH")
    assert "2 dead letters" in confirm.content.decode()
    assert DeadLetter.objects.filter(status="retried").count() == 0
    response = admin_client.post("/admin/tasks/deadletter/retry-matching/?priority=HIGH")
    assert response.status_code == 302 and response.headers["Location"].endswith("?priority=HIGH")
    assert set(DeadLetter.objects.filter(status="retried").values_list("priority", flat=True)) == {"HIGH"}
    assert DeadLetter.objects.filter(status="retried").count() == 2 and redis_client.llen("general.high.p0") == 2


def test_retry_and_discard_buttons_need_the_change_permission(django_user_model, redis_client):
    from django.contrib.auth.models import Permission

    letter = dead_letters(1)[0]
    viewer = django_user_model.objects.create_user("viewer", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_deadletter"))
    client = Client()
    client.force_login(viewer)
    page = client.get(f"/admin/tasks/deadletter/{letter.pk}/change/").content.decode()
    assert 'id="dlq-retry"' not in page
    assert client.post(f"/admin/tasks/deadletter/{letter.pk}/retry/").status_code == 403
    assert client.get(f"/admin/tasks/deadletter/{letter.pk}/discard/").status_code in (403, 405)
    viewer.user_permissions.add(Permission.objects.get(codename="change_deadletter"))
    client.force_login(django_user_model.objects.get(pk=viewer.pk))
    assert 'id="dlq-discard"' in client.get(f"/admin/tasks/deadletter/{letter.pk}/change/").content.decode()
    assert client.get(f"/admin/tasks/deadletter/{letter.pk}/discard/").status_code == 405
    client.post(f"/admin/tasks/deadletter/{letter.pk}/discard/")
    assert DeadLetter.objects.get(pk=letter.pk).status == "discarded"

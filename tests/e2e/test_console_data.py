"""What the console reads, with real workers: held countdown tasks, running tasks, per-minute history."""

import pytest
from django.test import Client

from tasks.scheduled import scheduled_tasks
from tasks.submit import enqueue, prepare
from tests.conftest import wait_for, wait_for_state
from workers.status import outcome_history

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def staff(django_user_model):
    client = Client()
    client.force_login(django_user_model.objects.create_user("operator", is_staff=True))
    return client


def test_a_countdown_task_held_by_a_worker_is_listed_as_scheduled_soonest_first(start_worker, staff):
    start_worker("general", concurrency=1)
    later, sooner = (enqueue([prepare("vokaflow.echo", args=[n], countdown=n)])[0].task_id for n in (300, 120))
    listed = wait_for(lambda: len(found := scheduled_tasks()) == 2 and found, 10, 0.1, "two held tasks")
    assert [t.task_id for t in listed] == [sooner, later]
    assert listed[0].name == "vokaflow.echo" and listed[0].queue.startswith("general.normal.")
    assert "120" in listed[0].args
    assert sooner in staff.get("/console/scheduled/").content.decode()


def test_a_running_task_shows_with_its_worker_start_and_arguments(start_worker, staff):
    worker = start_worker("io", concurrency=1)
    task_id = enqueue([prepare("vokaflow.sleep", args=[3])])[0].task_id
    page = wait_for(lambda: task_id in (body := staff.get("/console/running/").content.decode()) and body, 10, 0.1,
                    "the running task on the Running page")
    assert worker.name in page and "vokaflow.sleep" in page and "[3]" in page
    assert "STARTED" in staff.get(f"/console/tasks/{task_id}/").content.decode()


def test_outcomes_are_counted_per_minute_for_the_charts(start_worker, redis_client):
    start_worker("general", concurrency=2)
    done = [s.task_id for s in enqueue([prepare("vokaflow.echo", args=[i]) for i in range(5)])]
    failed = enqueue([prepare("vokaflow.fail")])[0].task_id
    for task_id in done:
        wait_for_state(task_id)
    wait_for_state(failed, ("FAILURE",))

    def counted(bucket: int) -> bool:
        last = outcome_history(bucket, 2)
        return sum(b["completed"] for b in last) == 5 and sum(b["failed"] for b in last) == 1
    wait_for(lambda: counted(60) and counted(900), 10, 0.2, "the flush to add 5 completed and 1 failed")
    key = next(iter(redis_client.scan_iter("vokaflow:history:60:completed:*")))
    assert 24 * 3600 < redis_client.ttl(key) <= 25 * 3600

"""The operations console in a real headless Chromium, against a live server and real workers."""

from __future__ import annotations

import pytest

import tests.e2e.worker_tasks  # noqa: F401  (registers the test tasks here too, to submit them)
from tasks.models import DeadLetter
from tasks.state import task_status
from tasks.submit import enqueue, prepare
from tests.conftest import task_meta, wait_for, wait_for_state
from vokaflow.core import keys

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

CONSOLE_PAGES = ["/console/", "/console/queues/", "/console/running/", "/console/scheduled/", "/console/schedules/",
                 "/console/limits/", "/console/tasks/",
                 "/console/submit/", "/console/queues/?worker_type=GENERAL_PURPOSE&priority=LOW"]


def submit(task: str, n: int = 1, **options) -> list[str]:
    return [s.task_id for s in enqueue([prepare(task, **options) for _ in range(n)])]


def test_log_in_and_see_the_overview(browser):
    assert browser.text("h1") == "Overview"
    assert "pending by worker type and priority" in browser.text("main").lower()
    assert len(browser.css("#pending-grid tbody tr")) == 5
    browser.wait_text("#live-state", lambda t: t.startswith("live"))


def test_no_console_page_requests_anything_from_another_host(browser):
    submit("vokaflow.echo", args=[1], priority="LOW", partition_key="k")
    for page in CONSOLE_PAGES:
        browser.visit(page)
        browser.wait_text("h1", lambda t: bool(t))
    letter = DeadLetter.objects.create(task_id="dead-1", task_name="vokaflow.fail", worker_type="GENERAL_PURPOSE",
                                       priority="LOW", queue="general.low.p0", reason="not_retried",
                                       dlq_timestamp="2026-01-01T00:00:00Z")
    browser.visit("/admin/tasks/deadletter/")
    browser.visit(f"/admin/tasks/deadletter/{letter.pk}/change/")
    browser.visit("/console/")
    browser.wait_text("#live-state", lambda t: t.startswith("live "))  # a refresh went out, and came back
    own = [u for u in browser.collect() if "/static/console/" in u]
    assert any(u.endswith("console.js") for u in own) and any(u.endswith("console.css") for u in own)
    assert any("partial=1" in u for u in browser.requests)
    assert browser.foreign_requests() == []


def test_a_task_submitted_from_the_form_reaches_success_on_its_page(browser, start_worker):
    start_worker("general", concurrency=1)
    browser.visit("/console/submit/")
    browser.fill("#id_args", '["hello", 42]')
    browser.select("#id_priority", "HIGH")
    browser.click("#submit-task")
    wait_for(lambda: "/console/tasks/" in browser.driver.current_url, 10, 0.1, "the task page")
    browser.wait_text("#task-state", "SUCCESS")  # the page refreshes itself: no reload
    assert "hello" in browser.text("#task-result")
    task_id = browser.driver.current_url.rstrip("/").rsplit("/", 1)[1]
    assert task_status(task_id)["state"] == "SUCCESS" and task_status(task_id)["priority"] == "HIGH"


def test_the_form_shows_a_bad_argument_next_to_its_field(browser, redis_client):
    browser.visit("/console/submit/")
    browser.select("#id_task", "vokaflow.sleep")  # the script reloads the form with sleep's arguments
    wait_for(lambda: browser.css("#id_arg_seconds"), 10, 0.1, "the seconds field")
    browser.fill("#id_arg_seconds", "soon")
    browser.click("#submit-task")
    assert "not a valid float" in browser.wait_text('[data-error-for="arg_seconds"]', lambda t: bool(t))
    assert not list(redis_client.scan_iter("io.*"))


def test_a_queues_depth_changes_after_a_batch(browser):
    browser.visit("/console/queues/")
    assert "No task is waiting" in browser.text("#live")
    submit("vokaflow.echo", 20, priority="LOW", partition_key="k")
    browser.wait_text('tr[data-queue="general.low.p5"] .depth', "20")
    submit("vokaflow.echo", 15, priority="LOW", partition_key="k")
    browser.wait_text('tr[data-queue="general.low.p5"] .depth', "35")
    browser.visit("/console/")
    assert browser.text('[data-level="GENERAL_PURPOSE:LOW"]') == "35"


def test_pause_a_level_and_its_worker_leaves_it_alone_then_resume(browser, start_worker, redis_client):
    worker = start_worker("general", concurrency=1)
    wait_for(lambda: redis_client.zcard("vokaflow:workers"), 10, 0.1, "the worker's heartbeat")
    browser.visit("/console/queues/?worker_type=GENERAL_PURPOSE&priority=LOW")
    browser.click('td[data-level="GENERAL_PURPOSE:LOW"] button')
    browser.wait_text('td[data-level="GENERAL_PURPOSE:LOW"] .tag', "PAUSED")
    wait_for(lambda: "Canceling queue general.low.p5" in worker.output(), 10, 0.1, "the worker to leave the queue")

    low = submit("vokaflow.echo", 3, priority="LOW", partition_key="k")
    wait_for_state(submit("vokaflow.echo", priority="BACKGROUND", partition_key="k")[0])  # below LOW: it ran
    browser.wait_text('tr[data-queue="general.low.p5"] .depth', "3")
    assert browser.text('tr[data-queue="general.low.p5"] .tag') == "PAUSED"
    assert all(task_meta(t)["status"] == "PENDING" for t in low)

    browser.click('td[data-level="GENERAL_PURPOSE:LOW"] button')  # now "Resume"
    for task_id in low:
        wait_for_state(task_id)
    browser.wait_text("#live", lambda t: "No task is waiting" in t)
    assert redis_client.smembers("vokaflow:paused") == set()


@pytest.mark.parametrize("worker_type, pool, task, args", [
    ("cpu", "prefork", "tests.sleep_then_mark", [8, "stopped-from-console"]),
    ("io", "threads", "vokaflow.sleep", [6]),
])
def test_stop_a_running_task_from_the_running_page(browser, start_worker, redis_client, worker_type, pool, task,
                                                   args):
    worker = start_worker(worker_type, pool=pool, concurrency=1)
    try:
        _stop_from_the_running_page(browser, redis_client, task, args)
    finally:
        worker.kill()  # a task that was not stopped would hold a core through a warm shutdown


def _stop_from_the_running_page(browser, redis_client, task, args):
    task_id = submit(task, args=args)[0]
    browser.visit("/console/running/")
    browser.wait_text(f'tr[data-task="{task_id}"] td:nth-child(2)', task)
    browser.click(f'tr[data-task="{task_id}"] button')
    # The button took the API's revoke path (tasks.state.revoke_task) and landed on the task's page.
    wait_for(lambda: f"/console/tasks/{task_id}/" in browser.driver.current_url, 10, 0.1, "the task page")
    assert redis_client.zscore(keys.REVOKED, task_id) is not None
    assert browser.text("#task-state") in ("REVOKED", "STARTED")  # STARTED: told to stop, not stopped yet
    assert "Task " + task_id in browser.text(".messages")

    # Stopping for real: on prefork the task is terminated and stays REVOKED; on threads it stops
    # at its next check and ends REVOKED, never SUCCESS.
    wait_for(lambda: not browser.css(f'tr[data-task="{task_id}"]') and
             task_status(task_id)["state"] == "REVOKED" and not _busy(redis_client), 15, 0.2,
             "the task to stop and stay REVOKED")
    browser.visit("/console/running/")
    wait_for(lambda: not browser.css(f'tr[data-task="{task_id}"]'), 5, 0.2, "the task to leave the Running page")
    assert task_status(task_id)["state"] == "REVOKED"


def _busy(redis_client) -> int:
    from workers.status import live_workers

    return sum(w["busy"] for w in live_workers())


def test_retry_a_dead_letter_from_its_admin_page(browser, start_worker):
    start_worker("general", concurrency=1)
    task_id = submit("vokaflow.fail", args=["broken on purpose"])[0]
    letter = wait_for(lambda: DeadLetter.objects.filter(task_id=task_id).first(), 20, 0.1, "the dead letter")
    browser.visit(f"/admin/tasks/deadletter/{letter.pk}/change/")
    assert "not_retried" in browser.text("#content-main").lower().replace(" ", "_") or \
        "Not Retried" in browser.text("#content-main")
    browser.click("#dlq-retry")
    browser.wait_text(".messagelist", lambda t: "Retried as task" in t)
    letter.refresh_from_db()
    assert letter.status == "retried" and letter.retried_task_id
    wait_for_state(letter.retried_task_id, ("FAILURE",))  # it ran again (and failed again, as vokaflow.fail does)
    again = wait_for(lambda: DeadLetter.objects.filter(task_id=letter.retried_task_id).first(), 20, 0.1,
                     "the retry's own dead letter")
    assert again.retried_from == task_id
    assert not browser.css("#dlq-retry")  # a retried dead letter offers no second retry


def test_a_schedule_is_run_now_disabled_and_enabled_from_the_schedules_page(browser, start_worker):
    from tasks.schedules.services import schedule_create

    start_worker("general", concurrency=1)
    schedule = schedule_create(owner=None, name="hourly-echo", task="vokaflow.echo", args=["from the page"],
                               cron="0 * * * *", timezone="Europe/Paris")
    browser.visit("/console/schedules/")
    row = f'tr[data-schedule="{schedule.pk}"]'
    browser.wait_text(row, lambda t: "0 * * * *" in t and "Europe/Paris" in t)  # (read between refreshes)
    browser.click(f'{row} form[action$="/run/"] button')
    browser.wait_text(f"{row} td.runs", "SUCCESS")  # the run's task reached SUCCESS, shown without a reload
    browser.click(f'{row} form[action$="/disable/"] button')
    browser.wait_text(row, lambda t: "DISABLED" in t.upper())
    browser.wait_text(f"{row} td.next-run", "—")
    browser.click(f'{row} form[action$="/enable/"] button')
    browser.wait_text(f"{row} td.next-run", lambda t: t != "—")
    assert browser.foreign_requests() == []


def test_a_limit_is_changed_and_reset_from_the_limits_page(browser, redis_client):
    from tasks import limits

    browser.visit("/console/limits/")
    row = 'tr[data-limit="tests.two_at_once"]'
    browser.wait_text(f"{row} td:nth-child(3)", "2")
    browser.wait_text(row, lambda t: "code" in t)
    browser.fill(f'{row} input[name="concurrency"]', "5")
    browser.click(f'{row} form[action$="/change/"] button')
    browser.wait_text(f"{row} td:nth-child(3)", "5")
    assert limits.limit_get(name="tests.two_at_once").concurrency == 5
    browser.click(f'{row} form[action$="/reset/"] button')
    browser.wait_text(f"{row} td:nth-child(3)", "2")
    assert limits.limit_get(name="tests.two_at_once").source == "code"

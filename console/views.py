"""Console pages (staff only). Thin: console.selectors reads, the platform's services act.

Every page with live figures renders its fragment alone when asked with `?partial=1`; the
page's script fetches that every 2 s while the tab is visible and swaps it in."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpResponseRedirect
from django.middleware.csrf import get_token
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST

from console import rows, selectors
from console.forms import SubmitForm
from tasks import catalog, dlq
from tasks.ownership import owner_id
from tasks.quota import QuotaExceeded
from tasks.state import TaskAlreadyFinished, TaskNotFound, revoke_task
from tasks.submit import BrokerUnavailable, enqueue, prepare_payload
from tasks.validation import SubmissionError
from workers import queues

RETRY_PERMISSION = "tasks.change_deadletter"
SCHEDULED_SHOWN = 200
SCHEDULES_SHOWN = 200
SCHEDULE_PERMISSION = "tasks.change_schedule"  # enable, disable, run now
LIMIT_PERMISSION = "tasks.change_limits"


def _live(request, name: str, title: str, context: dict):
    """The whole page, or only its live fragment for the refresh script."""
    query = request.GET.copy()
    query.pop("partial", None)
    context["page_url"] = request.path + (f"?{query.urlencode()}" if query else "")  # where a form comes back to
    # Row links are built on these prefixes: a {% url %} per row cost a fifth of a 200-row page.
    context["task_base"], context["queues_base"] = reverse("console:lookup"), reverse("console:queues")
    if request.GET.get("partial"):
        return render(request, f"console/_{name}.html", context)
    return render(request, f"console/{name}.html", {**context, "title": title, "page": name})


def _back(request, fallback: str) -> HttpResponseRedirect:
    target = request.POST.get("next") or request.GET.get("next")
    if target and url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}):
        return HttpResponseRedirect(target)
    return redirect(fallback)


@staff_member_required
def overview(request):
    return _live(request, "overview", "Overview", selectors.overview())


@staff_member_required
def queue_list(request):
    worker_type, priority = request.GET.get("worker_type") or None, request.GET.get("priority") or None
    context = selectors.queue_page(worker_type, priority)
    context["queue_rows"] = rows.queue_rows(context["queues"], reverse("console:queues"))
    return _live(request, "queues", "Queues", {**context, "worker_type": worker_type, "priority": priority})


@staff_member_required
@require_POST
def queue_level(request, action: str):
    change = {"pause": queues.pause_level, "resume": queues.resume_level}[action]
    try:
        done = change(request.POST.get("worker_type", ""), request.POST.get("priority", ""))
    except ValueError as exc:
        messages.error(request, str(exc))
    else:
        state = "paused: its tasks stay queued" if done["paused"] else "resumed"
        messages.success(request, f"{done['worker_type']} {done['priority']} {state}.")
    return _back(request, "console:queues")


@staff_member_required
def queue_purge(request, name: str):
    depth = next((q.depth for q in queues.non_empty_queues() if q.name == name), 0)
    if request.method == "POST":
        try:
            purged = queues.purge_queue(name)
        except queues.UnknownQueue as exc:
            raise Http404(str(exc)) from None
        messages.success(request, f"Purged {purged} tasks from {name}.")
        return redirect("console:queues")
    return render(request, "console/purge.html", {"title": f"Purge {name}", "page": "queues", "name": name,
                                                  "depth": depth})


@staff_member_required
def running(request):
    tasks = selectors.running_tasks()
    return _live(request, "running", "Running", {
        "tasks": tasks, "rows": rows.running_rows(tasks, reverse("console:lookup"), get_token(request))})


@staff_member_required
def scheduled(request):
    from tasks.scheduled import scheduled_tasks

    tasks = scheduled_tasks(limit=SCHEDULED_SHOWN)
    return _live(request, "scheduled", "Scheduled", {
        "tasks": tasks, "limit": SCHEDULED_SHOWN, "rows": rows.scheduled_rows(tasks, reverse("console:lookup"))})


@staff_member_required
def schedule_list(request):
    from console.selectors import schedules_page

    return _live(request, "schedules", "Schedules", schedules_page(limit=SCHEDULES_SHOWN))


@staff_member_required
@require_POST
def schedule_action(request, schedule_id: int, action: str):
    """Enable, Disable and Run now: the same services as the API, under the same permission."""
    from tasks.schedules import services

    if not request.user.has_perm(SCHEDULE_PERMISSION):
        raise PermissionDenied("changing a schedule needs the permission to change schedules")
    try:
        if action == "run":
            task_id = services.schedule_run_now(schedule_id=schedule_id)
            messages.success(request, f"Schedule {schedule_id} ran now as task {task_id}.")
        else:
            schedule = services.schedule_update(schedule_id=schedule_id, enabled=action == "enable")
            messages.success(request, f"Schedule {schedule.name} {action}d.")
    except services.ScheduleNotFound:
        raise Http404(f"no schedule with id {schedule_id}") from None
    except (services.ScheduleReadOnly, services.ScheduleInvalid, SubmissionError, BrokerUnavailable,
            QuotaExceeded) as exc:
        messages.error(request, str(exc))
    return _back(request, reverse("console:schedules"))


@staff_member_required
def limit_list(request):
    from tasks.limits import limit_list as limits_now

    if not (request.user.has_perm(LIMIT_PERMISSION) or request.user.has_perm("tasks.view_limits")):
        raise PermissionDenied("seeing the limits needs the permission to view limits")

    return _live(request, "limits", "Limits", {"limits": limits_now(),
                                               "may_change": request.user.has_perm(LIMIT_PERMISSION)})


@staff_member_required
@require_POST
def limit_action(request, name: str, action: str):
    """Change (rate, concurrency, per from the form; empty: none) or Reset: the API's services."""
    from tasks import limits

    if not request.user.has_perm(LIMIT_PERMISSION):
        raise PermissionDenied("changing a limit needs the permission to change limits")
    try:
        if action == "reset":
            limits.limit_reset(name=name)
            messages.success(request, f"Limit {name} is back to what the code declares.")
        else:
            concurrency = request.POST.get("concurrency", "").strip()
            if concurrency and not (concurrency.isascii() and concurrency.isdigit() and len(concurrency) <= 7):
                raise limits.LimitInvalid("concurrency", f"a whole number from 1 to {limits.MAX_CONCURRENCY}")
            limits.limit_set(name=name, rate=request.POST.get("rate", "").strip() or None,
                             concurrency=int(concurrency) if concurrency else None,
                             per=request.POST.get("per", "").strip() or None)
            messages.success(request, f"Limit {name} changed; every worker follows within 2 s.")
    except limits.LimitNotFound:
        raise Http404(f"no limit named {name}") from None
    except limits.LimitInvalid as exc:
        messages.error(request, str(exc))
    return _back(request, reverse("console:limits"))


@staff_member_required
def task_lookup(request):
    task_id = request.GET.get("id", "").strip()
    if task_id:
        return redirect("console:task", task_id=task_id)
    return render(request, "console/lookup.html", {"title": "Find a task", "page": "lookup"})


@staff_member_required
def task_detail(request, task_id: str):
    try:
        context = selectors.task_page(task_id)
    except TaskNotFound:
        return render(request, "console/lookup.html", {"title": "Find a task", "page": "lookup",
                                                       "missing": task_id}, status=404)
    return _live(request, "task", f"Task {task_id}", {**context, "task_id": task_id})


@staff_member_required
@require_POST
def task_revoke(request, task_id: str):
    """The Stop button: the same path as DELETE tasks/{id}/."""
    try:
        answer = revoke_task(task_id)
    except TaskNotFound:
        raise Http404(f"no task with id {task_id}") from None
    except TaskAlreadyFinished as exc:
        messages.warning(request, str(exc))
    else:
        stopping = " (told to stop; it ends at its next check)" if answer.get("stopping") else ""
        messages.success(request, f"Task {task_id}: {answer['state']}{stopping}.")
    return _back(request, reverse("console:task", args=[task_id]))


@staff_member_required
@require_POST
def task_retry(request, task_id: str):
    """Retry a dead letter (tasks.dlq); lands on the new task's page."""
    if not request.user.has_perm(RETRY_PERMISSION):
        raise PermissionDenied("retrying a dead letter needs the permission to change dead letters")
    try:
        letter = dlq.dead_letter_retry(task_id=task_id)
    except dlq.DeadLetterNotFound:
        raise Http404(f"no dead letter for task {task_id}") from None
    except (dlq.DeadLetterNotRetriable, SubmissionError, BrokerUnavailable) as exc:
        messages.error(request, str(exc))
        return redirect("console:task", task_id=task_id)
    messages.success(request, f"Retried dead letter {task_id} as task {letter.retried_task_id}.")
    return redirect("console:task", task_id=letter.retried_task_id)


@staff_member_required
def submit(request):
    entries = catalog.catalog()
    chosen = request.POST.get("task") or request.GET.get("task") or "vokaflow.echo"
    entry = next((e for e in entries if e.name == chosen), entries[0])
    if request.method != "POST" or "choose" in request.POST:
        form = SubmitForm(initial={"task": entry.name}, entries=entries, entry=entry)
    else:
        form = SubmitForm(request.POST, entries=entries, entry=entry)
        if form.is_valid():
            try:
                # The submitting user's task, as through the API: their quota, theirs to follow.
                submission = enqueue([prepare_payload(form.payload())], owner=owner_id(request.user))[0]
            except ValidationError as exc:
                form.add_error(None, exc)
            except SubmissionError as exc:
                form.add_error(form.field_for(exc.field), f"{exc.field}: {exc.message}" if
                               form.field_for(exc.field) is None else exc.message)
            except (BrokerUnavailable, QuotaExceeded) as exc:
                form.add_error(None, str(exc))
            else:
                messages.success(request, f"Submitted {submission.task} to {submission.queue}.")
                return redirect("console:task", task_id=submission.task_id)
    return render(request, "console/submit.html", {"title": "Submit a task", "page": "submit", "form": form,
                                                   "entry": entry})

"""Admin for dead letters: read-only, filterable, with retry and discard actions, Retry and
Discard buttons on a dead letter's page, and "retry every dead letter matching these filters"."""

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.decorators import method_decorator
from django.utils.html import format_html
from django.views.decorators.http import require_POST

from tasks import dlq
from tasks.models import DeadLetter
from tasks.permissions import CHANGE_DEAD_LETTERS
from vokaflow.celery import app
from vokaflow.core.priorities import Priority
from vokaflow.core.workers import WorkerType


class ChoicesFilter(admin.SimpleListFilter):
    """A filter whose choices are known up front: no SELECT DISTINCT over the whole table."""

    field: str

    def choices_list(self) -> list[tuple[str, str]]:
        raise NotImplementedError

    def lookups(self, request, model_admin):
        return self.choices_list()

    def queryset(self, request, queryset):
        return queryset.filter(**{self.field: self.value()}) if self.value() else queryset


class WorkerTypeFilter(ChoicesFilter):
    title, parameter_name, field = "worker type", "worker_type", "worker_type"

    def choices_list(self):
        return [(w.value, w.value) for w in WorkerType]  # the labels the list's column shows


class PriorityFilter(ChoicesFilter):
    title, parameter_name, field = "priority", "priority", "priority"

    def choices_list(self):
        return [(p.name, p.name) for p in Priority]


class TaskFilter(ChoicesFilter):
    title, parameter_name, field = "task", "task", "task_name"

    def choices_list(self):
        return [(name, name) for name in sorted(n for n, t in app.tasks.items() if hasattr(t, "worker_type"))]


@admin.register(DeadLetter)
class DeadLetterAdmin(admin.ModelAdmin):
    list_display = ["task_name", "worker_type", "priority", "reason", "error_summary", "retries", "dead_lettered_at",
                    "status"]
    list_filter = ["status", WorkerTypeFilter, PriorityFilter, "reason", "dlq_timestamp", TaskFilter]
    search_fields = ["task_name", "=task_id", "error"]
    ordering = ["-dlq_timestamp", "-id"]
    list_per_page = 100
    show_full_result_count = False  # no second COUNT(*) over the whole table on every page
    actions = ["retry_selected", "discard_selected"]
    change_form_template = "admin/tasks/deadletter/change_form.html"
    change_list_template = "admin/tasks/deadletter/change_list.html"
    RETRY_PERMISSION = CHANGE_DEAD_LETTERS

    class Media:
        css = {"all": ["console/admin.css"]}
    readonly_fields = ["task_id", "task_name", "status", "reason", "error", "formatted_traceback", "args", "kwargs",
                       "worker_type", "priority", "partition", "queue", "total_retries", "first_submitted_at",
                       "dlq_timestamp", "hostname", "worker", "owner", "retried_task_id", "retried_from", "updated_at"]
    fieldsets = [
        (None, {"fields": ["task_id", "task_name", "status", "reason", "error", "formatted_traceback"]}),
        ("Call", {"fields": ["args", "kwargs"]}),
        ("Routing", {"fields": ["worker_type", "priority", "partition", "queue"]}),
        ("History", {"fields": ["total_retries", "first_submitted_at", "dlq_timestamp", "hostname", "worker",
                                "owner", "retried_task_id", "retried_from", "updated_at"]}),
    ]

    # Query-string filters the list offers; any other lookup (`?args__contains=x`, which SQLite
    # cannot run, `?traceback__regex=(`) would reach the database unchecked: 400 instead of 500.
    FILTER_LOOKUPS = ("", "exact", "gte", "lt", "isnull")

    def lookup_allowed(self, lookup, value, request):
        custom = {f.parameter_name for f in self.list_filter if isinstance(f, type)}
        field, _, suffix = lookup.partition("__")
        return lookup in custom or (field in self.list_filter and suffix in self.FILTER_LOOKUPS)

    def get_queryset(self, request):
        # The list never shows the traceback or the arguments: leave them in the database.
        qs = super().get_queryset(request)
        if request.resolver_match and request.resolver_match.url_name.endswith("changelist"):
            qs = qs.defer("traceback", "args", "kwargs")
        return qs

    @admin.display(description="retries", ordering="total_retries")
    def retries(self, obj):
        return obj.total_retries

    @admin.display(description="when (UTC)", ordering="dlq_timestamp")
    def dead_lettered_at(self, obj):
        return obj.dlq_timestamp.strftime("%Y-%m-%d %H:%M")  # one short line at 1,366 px

    @admin.display(description="error")
    def error_summary(self, obj):
        return obj.error_summary

    @admin.display(description="traceback")
    def formatted_traceback(self, obj):
        return format_html('<pre style="white-space: pre-wrap; font-size: 12px">{}</pre>', obj.traceback or "—")

    def may_retry(self, request) -> bool:
        """Retry and discard change a dead letter: they need the change permission (the form
        itself stays read-only)."""
        return request.user.is_active and request.user.has_perm(self.RETRY_PERMISSION)

    def get_urls(self):
        own = [
            path("retry-matching/", self.admin_site.admin_view(self.retry_matching_view),
                 name="tasks_deadletter_retry_matching"),
            path("<path:object_id>/retry/", self.admin_site.admin_view(self.retry_view),
                 name="tasks_deadletter_retry"),
            path("<path:object_id>/discard/", self.admin_site.admin_view(self.discard_view),
                 name="tasks_deadletter_discard"),
        ]
        return own + super().get_urls()

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        return super().changeform_view(request, object_id, form_url,
                                       {**(extra_context or {}), "may_retry": self.may_retry(request)})

    def changelist_view(self, request, extra_context=None):
        return super().changelist_view(request, {**(extra_context or {}), "may_retry": self.may_retry(request)})

    def _letter_for_change(self, request, object_id) -> DeadLetter:
        if not self.may_retry(request):
            raise PermissionDenied
        return get_object_or_404(DeadLetter, pk=object_id)

    @method_decorator(require_POST)  # with Django's CSRF check
    def retry_view(self, request, object_id):
        letter = self._letter_for_change(request, object_id)
        try:
            letter = dlq.dead_letter_retry(task_id=letter.task_id)
        except (dlq.DeadLetterNotRetriable, ValueError) as exc:
            self.message_user(request, str(exc), messages.ERROR)
        else:
            self.message_user(request, format_html(
                'Retried as task <a href="{}">{}</a>.', reverse("console:task", args=[letter.retried_task_id]),
                letter.retried_task_id), messages.SUCCESS)
        return redirect("admin:tasks_deadletter_change", object_id)

    @method_decorator(require_POST)  # with Django's CSRF check
    def discard_view(self, request, object_id):
        letter = self._letter_for_change(request, object_id)
        dlq.dead_letter_discard(task_id=letter.task_id)
        self.message_user(request, "Discarded (the record stays for audit).", messages.SUCCESS)
        return redirect("admin:tasks_deadletter_change", object_id)

    def retry_matching_view(self, request):
        """GET: a confirmation stating how many dead letters the list's filters match; POST: retry them."""
        if not self.may_retry(request):
            raise PermissionDenied
        changelist = self.get_changelist_instance(request)
        matching = changelist.get_queryset(request).filter(status=DeadLetter.Status.DEAD)
        if request.method == "POST":
            self._retry(request, list(matching.values_list("task_id", flat=True)))
            return redirect(reverse("admin:tasks_deadletter_changelist") + changelist.get_query_string())
        context = {**self.admin_site.each_context(request), "opts": self.model._meta, "title": "Retry dead letters",
                   "count": matching.count(), "filters": changelist.get_filters_params(),
                   "query": changelist.get_query_string(), "search": changelist.query}
        return TemplateResponse(request, "admin/tasks/deadletter/retry_matching.html", context)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_retry_permission(self, request, obj=None):
        """The permission the Retry action asks for (Django's admin convention)."""
        return self.may_retry(request)

    def has_discard_permission(self, request, obj=None):
        """Discarding changes a dead letter's status too: the same change permission."""
        return self.may_retry(request)

    def has_delete_permission(self, request, obj=None):
        return False  # discard instead: the row stays for audit; retention prunes

    @admin.action(description="Retry selected", permissions=["retry"])
    def retry_selected(self, request, queryset):
        self._retry(request, list(queryset.values_list("task_id", flat=True)))

    def _retry(self, request, task_ids: list[str]) -> None:
        """Retry these dead letters in batches and say exactly how many were retried."""
        try:
            outcome = dlq.dead_letter_retry_many(task_ids=task_ids, status=None)
        except dlq.BulkRetryInterrupted as exc:
            self.message_user(request, exc.detail, messages.ERROR)
            return
        self.message_user(request, f"Retried {outcome.retried} of {len(task_ids)} dead letters.", messages.SUCCESS)
        if outcome.failed:
            self.message_user(request, f"{outcome.failed} were not retried: already retried, resolved or "
                                       "their task no longer exists.", messages.WARNING)

    @admin.action(description="Discard selected", permissions=["discard"])
    def discard_selected(self, request, queryset):
        count = dlq.dead_letter_discard_many(list(queryset.values_list("task_id", flat=True)))
        self.message_user(request, f"Discarded {count} dead letters (kept for audit).", messages.SUCCESS)
from tasks.schedules import admin as _schedules_admin  # noqa: E402,F401  (registers ScheduleAdmin)

"""Admin for dead letters: read-only, filterable, with retry and discard actions."""

from django.contrib import admin, messages
from django.utils.html import format_html

from tasks import dlq
from tasks.models import DeadLetter
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
        return [(w.value, w.short) for w in WorkerType]


class PriorityFilter(ChoicesFilter):
    title, parameter_name, field = "priority", "priority", "priority"

    def choices_list(self):
        return [(p.name, p.name.lower()) for p in Priority]


class TaskFilter(ChoicesFilter):
    title, parameter_name, field = "task", "task", "task_name"

    def choices_list(self):
        return [(name, name) for name in sorted(n for n, t in app.tasks.items() if hasattr(t, "worker_type"))]


@admin.register(DeadLetter)
class DeadLetterAdmin(admin.ModelAdmin):
    list_display = ["task_name", "worker_type", "priority", "error_summary", "total_retries", "dlq_timestamp",
                    "status"]
    list_filter = ["status", WorkerTypeFilter, PriorityFilter, "reason", "dlq_timestamp", TaskFilter]
    search_fields = ["task_name", "=task_id", "error"]
    ordering = ["-dlq_timestamp", "-id"]
    list_per_page = 100
    show_full_result_count = False  # no second COUNT(*) over the whole table on every page
    actions = ["retry_selected", "discard_selected"]
    readonly_fields = ["task_id", "task_name", "status", "reason", "error", "formatted_traceback", "args", "kwargs",
                       "worker_type", "priority", "partition", "queue", "total_retries", "first_submitted_at",
                       "dlq_timestamp", "hostname", "worker", "retried_task_id", "retried_from", "updated_at"]
    fieldsets = [
        (None, {"fields": ["task_id", "task_name", "status", "reason", "error", "formatted_traceback"]}),
        ("Call", {"fields": ["args", "kwargs"]}),
        ("Routing", {"fields": ["worker_type", "priority", "partition", "queue"]}),
        ("History", {"fields": ["total_retries", "first_submitted_at", "dlq_timestamp", "hostname", "worker",
                                "retried_task_id", "retried_from", "updated_at"]}),
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

    @admin.display(description="error")
    def error_summary(self, obj):
        return obj.error_summary

    @admin.display(description="traceback")
    def formatted_traceback(self, obj):
        return format_html('<pre style="white-space: pre-wrap; font-size: 12px">{}</pre>', obj.traceback or "—")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_retry_permission(self, request, obj=None):
        """Retrying and discarding change a dead letter's status: Django's change permission."""
        return request.user.has_perm("tasks.change_deadletter")

    def has_delete_permission(self, request, obj=None):
        return False  # discard instead: the row stays for audit; retention prunes

    @admin.action(description="Retry selected", permissions=["retry"])
    def retry_selected(self, request, queryset):
        task_ids = list(queryset.values_list("task_id", flat=True))
        try:
            outcome = dlq.dead_letter_retry_many(task_ids=task_ids, status=None)
        except dlq.BulkRetryInterrupted as exc:
            self.message_user(request, exc.detail, messages.ERROR)
            return
        self.message_user(request, f"Retried {outcome.retried} of {len(task_ids)} dead letters.", messages.SUCCESS)
        if outcome.failed:
            self.message_user(request, f"{outcome.failed} were not retried: already retried, resolved or "
                                       "their task no longer exists.", messages.WARNING)

    @admin.action(description="Discard selected", permissions=["retry"])
    def discard_selected(self, request, queryset):
        count = dlq.dead_letter_discard_many(list(queryset.values_list("task_id", flat=True)))
        self.message_user(request, f"Discarded {count} dead letters (kept for audit).", messages.SUCCESS)

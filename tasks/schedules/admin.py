"""Admin for schedules: the same checks and writes as the API (tasks.schedules.services), with
enable, disable and run-now actions; the platform's own schedules are read-only."""

from __future__ import annotations

import copy

from django import forms
from django.contrib import admin, messages

from tasks.models import Schedule
from tasks.schedules import services
from vokaflow.core.errors import VokaFlowError
from vokaflow.core.priorities import Priority
from vokaflow.core.workers import WorkerType


class ScheduleForm(forms.ModelForm):
    priority = forms.ChoiceField(choices=[("", "the task's default")] + [(p.name, p.name) for p in Priority],
                                 required=False)
    worker_type = forms.ChoiceField(choices=[("", "the task's default")] + [(w.value, w.value) for w in WorkerType],
                                    required=False)

    class Meta:
        model = Schedule
        fields = list(services.FIELDS)

    def clean(self):
        cleaned = super().clean()
        trial = copy.copy(self.instance)
        try:
            services.schedule_apply(trial, {f: cleaned[f] for f in services.FIELDS if f in cleaned},
                                    creating=self.instance.pk is None)
        except services.ScheduleInvalid as exc:
            self.add_error(exc.field if exc.field in self.fields else None, exc.message)
        return cleaned


@admin.register(Schedule)
class ScheduleAdmin(admin.ModelAdmin):
    form = ScheduleForm
    list_display = ["name", "task", "timing", "enabled", "next_run", "last_run", "source", "owner"]
    list_filter = ["enabled", "source", "overlap", "missed"]
    search_fields = ["name", "task"]
    actions = ["enable_selected", "disable_selected", "run_selected_now"]

    @admin.display(description="when")
    def timing(self, obj: Schedule) -> str:
        return f"every {obj.every} s" if obj.every else f"{obj.cron} ({obj.timezone})"

    @admin.display(description="next run")
    def next_run(self, obj: Schedule):
        return services.schedule_details(obj, states=0)["next_run_at"]

    @admin.display(description="last run")
    def last_run(self, obj: Schedule):
        return services.schedule_details(obj, states=0)["last_run_at"]

    def has_change_permission(self, request, obj=None) -> bool:
        return super().has_change_permission(request, obj) and not (obj and obj.source == Schedule.Source.CODE)

    def has_delete_permission(self, request, obj=None) -> bool:
        return super().has_delete_permission(request, obj) and not (obj and obj.source == Schedule.Source.CODE)

    def save_model(self, request, obj, form, change):
        data = {f: form.cleaned_data[f] for f in services.FIELDS if f in form.cleaned_data}
        if change:
            services.schedule_update(schedule_id=obj.pk, **{f: data[f] for f in form.changed_data if f in data})
        else:
            obj.pk = services.schedule_create(owner=request.user.pk, **data).pk

    def delete_model(self, request, obj):
        services.schedule_delete(schedule_id=obj.pk)

    def delete_queryset(self, request, queryset):
        for schedule in queryset:
            self.delete_model(request, schedule)

    def _each(self, request, queryset, act, done: str) -> None:
        count = 0
        for schedule in queryset:
            try:
                act(schedule)
                count += 1
            except VokaFlowError as exc:
                self.message_user(request, f"{schedule.name}: {exc}", messages.ERROR)
        self.message_user(request, f"{count} schedule(s) {done}.", messages.SUCCESS)

    @admin.action(description="Enable the selected schedules", permissions=["change"])
    def enable_selected(self, request, queryset):
        self._each(request, queryset, lambda s: services.schedule_update(schedule_id=s.pk, enabled=True), "enabled")

    @admin.action(description="Disable the selected schedules", permissions=["change"])
    def disable_selected(self, request, queryset):
        self._each(request, queryset, lambda s: services.schedule_update(schedule_id=s.pk, enabled=False), "disabled")

    @admin.action(description="Run the selected schedules now", permissions=["change"])
    def run_selected_now(self, request, queryset):
        self._each(request, queryset, lambda s: services.schedule_run_now(schedule_id=s.pk), "run now")

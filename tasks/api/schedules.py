"""Schedule API: list, create, read, change, delete, run now. Thin: tasks.schedules.services works.

Django's model permissions, as in the admin: reading needs tasks.view_schedule (or change),
creating tasks.add_schedule, changing and running now tasks.change_schedule, deleting
tasks.delete_schedule."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.response import Response
from rest_framework.views import APIView

from tasks.api.dlq import PAGE_PARAMETERS, DeadLetterPagination
from tasks.api.serializers import CLOSED, PRIORITY_NAMES, WORKER_TYPE_NAMES, given_fields
from tasks.models import Schedule
from tasks.schedules import services
from tasks.validation import MAX_KEY_LENGTH
from vokaflow.schema import ErrorSerializer

MAX_EVERY = 10 * 366 * 86400


class SchedulePermission(BasePermission):
    def has_permission(self, request, view) -> bool:
        user = request.user
        if not (user and user.is_authenticated):
            return False
        if request.method in SAFE_METHODS:
            return user.has_perm("tasks.view_schedule") or user.has_perm("tasks.change_schedule")
        action = {"POST": getattr(view, "post_action", "change"), "DELETE": "delete"}.get(request.method, "change")
        return user.has_perm(f"tasks.{action}_schedule")


class ScheduleInputSerializer(serializers.Serializer):
    """The fields a schedule is made of; checked by tasks.schedules.services (one place)."""

    openapi_extra = {**CLOSED, "not": {"required": ["every", "cron"],
                                       "description": "every or cron, not both",
                                       "properties": {"every": {"type": "integer"}, "cron": {"type": "string"}}}}

    name = serializers.CharField(max_length=200, trim_whitespace=False)
    task = serializers.CharField(max_length=200, trim_whitespace=False,
                                 help_text="A submittable task (tasks/catalog/).")
    args = serializers.ListField(child=serializers.JSONField(allow_null=True), required=False, allow_null=True)
    kwargs = serializers.DictField(child=serializers.JSONField(allow_null=True), required=False, allow_null=True)
    priority = serializers.ChoiceField(PRIORITY_NAMES, required=False, allow_null=True,
                                       help_text="Default: the task's own.")
    worker_type = serializers.ChoiceField(WORKER_TYPE_NAMES, required=False, allow_null=True,
                                          help_text="Default: the task's own.")
    partition_key = serializers.CharField(required=False, allow_null=True, allow_blank=True, trim_whitespace=False,
                                          max_length=MAX_KEY_LENGTH)
    every = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=MAX_EVERY,
                                     help_text="Seconds between occurrences, anchored at start_at (or creation).")
    cron = serializers.CharField(required=False, allow_blank=True, max_length=200, trim_whitespace=False,
                                 help_text="Five fields: minute hour day-of-month month day-of-week.")
    timezone = serializers.CharField(required=False, max_length=64, trim_whitespace=False,
                                     help_text="IANA name for cron (default UTC).")
    start_at = serializers.DateTimeField(required=False, allow_null=True)
    end_at = serializers.DateTimeField(required=False, allow_null=True)
    enabled = serializers.BooleanField(required=False)
    overlap = serializers.ChoiceField(Schedule.Overlap.values, required=False,
                                      help_text="skip: no new occurrence while the previous one runs.")
    missed = serializers.ChoiceField(Schedule.Missed.values, required=False,
                                     help_text="What occurrences missed while no beat ran do: one run, or none.")


class ScheduleChangeSerializer(ScheduleInputSerializer):
    openapi_extra: dict[str, object] = {**CLOSED}

    name = serializers.CharField(max_length=200, trim_whitespace=False, required=False)
    task = serializers.CharField(max_length=200, trim_whitespace=False, required=False)


class RunSerializer(serializers.Serializer):
    due_at = serializers.DateTimeField()
    task_id = serializers.CharField(allow_null=True)
    state = serializers.CharField(help_text="The task's state; SKIPPED when no task was enqueued, EXPIRED when "
                                            "its state is gone (older than the result TTL).")
    skipped = serializers.CharField(allow_null=True, help_text="Why: missed, overlap, refused: …")
    manual = serializers.BooleanField(help_text="Run now, outside the schedule.")


class ScheduleSerializer(serializers.ModelSerializer):
    owner = serializers.IntegerField(source="owner_id", allow_null=True, read_only=True)
    next_run_at = serializers.DateTimeField(allow_null=True, read_only=True)
    last_run_at = serializers.DateTimeField(allow_null=True, read_only=True)

    class Meta:
        model = Schedule
        fields = ["id", "name", "task", "args", "kwargs", "priority", "worker_type", "partition_key", "owner",
                  "every", "cron", "timezone", "start_at", "end_at", "enabled", "overlap", "missed", "source",
                  "created_at", "updated_at", "next_run_at", "last_run_at"]


class ScheduleDetailSerializer(ScheduleSerializer):
    recent_runs = RunSerializer(many=True, read_only=True)

    class Meta(ScheduleSerializer.Meta):
        fields = [*ScheduleSerializer.Meta.fields, "recent_runs"]


class SchedulePageSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = ScheduleSerializer(many=True)


class RunNowSerializer(serializers.Serializer):
    task_id = serializers.CharField()
    schedule = serializers.IntegerField()


def _shown(schedule: Schedule, serializer_class=ScheduleSerializer):
    details = services.schedule_details(schedule, states=20 if serializer_class is ScheduleDetailSerializer else 0)
    for name, value in details.items():
        setattr(schedule, name, value)
    return serializer_class(schedule).data


class ScheduleListView(APIView):
    """Every schedule, by name (GET); a new one, owned by the caller (POST, 201)."""

    permission_classes = [SchedulePermission]
    post_action = "add"

    @extend_schema(parameters=PAGE_PARAMETERS, operation_id="schedules_list",
                   responses={200: SchedulePageSerializer, 404: ErrorSerializer})
    def get(self, request):
        paginator = DeadLetterPagination()
        page = paginator.paginate_queryset(Schedule.objects.order_by("name", "id"), request, view=self)
        return paginator.get_paginated_response([_shown(s) for s in page])

    @extend_schema(request=ScheduleInputSerializer, responses={201: ScheduleDetailSerializer},
                   operation_id="schedules_create")
    def post(self, request):
        data = given_fields(ScheduleInputSerializer, request.data)
        schedule = services.schedule_create(owner=request.user.pk, **data)
        return Response(_shown(schedule, ScheduleDetailSerializer), status=201)


class ScheduleDetailView(APIView):
    """One schedule with next_run_at, last_run_at and recent_runs (GET); change some of its fields
    (PATCH); delete it (DELETE, 204). The platform's own schedules (source code) are read-only: 409."""

    permission_classes = [SchedulePermission]

    @extend_schema(responses={200: ScheduleDetailSerializer})
    def get(self, request, schedule_id):
        return Response(_shown(services.schedule_get(schedule_id=int(schedule_id)), ScheduleDetailSerializer))

    @extend_schema(request=ScheduleChangeSerializer, responses={200: ScheduleDetailSerializer, 409: ErrorSerializer})
    def patch(self, request, schedule_id):
        data = given_fields(ScheduleChangeSerializer, request.data)
        schedule = services.schedule_update(schedule_id=int(schedule_id), **data)
        return Response(_shown(schedule, ScheduleDetailSerializer))

    @extend_schema(responses={204: None, 409: ErrorSerializer})
    def delete(self, request, schedule_id):
        services.schedule_delete(schedule_id=int(schedule_id))
        return Response(status=204)


class ScheduleRunView(APIView):
    """Enqueue one occurrence now, outside the schedule's timing (202)."""

    permission_classes = [SchedulePermission]
    post_action = "change"

    @extend_schema(request=None, responses={202: RunNowSerializer, 429: ErrorSerializer},
                   operation_id="schedules_run")
    def post(self, request, schedule_id):
        task_id = services.schedule_run_now(schedule_id=int(schedule_id))
        return Response({"task_id": task_id, "schedule": int(schedule_id)}, status=202)

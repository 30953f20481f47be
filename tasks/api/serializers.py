"""Request and response shapes of the task API, for the OpenAPI schema.

Requests are validated by tasks.submit.prepare_payload (one place, fast enough for a batch
of 1,000), not by these classes."""

from rest_framework import serializers
from rest_framework.exceptions import ValidationError

from vokaflow.core.priorities import Priority
from vokaflow.core.workers import WorkerType


class LockSerializer(serializers.Serializer):
    key = serializers.CharField(max_length=200)
    timeout = serializers.FloatField(min_value=0.1)


class TaskSubmitSerializer(serializers.Serializer):
    task = serializers.CharField(help_text="Name of a submittable task (see tasks/catalog/).")
    args = serializers.JSONField(required=False, default=list, help_text="Positional arguments (a list).")
    kwargs = serializers.JSONField(required=False, default=dict, help_text="Keyword arguments (an object).")
    priority = serializers.ChoiceField(choices=[p.name for p in Priority], required=False,
                                       help_text="Default: the task's own.")
    worker_type = serializers.ChoiceField(choices=[w.value for w in WorkerType], required=False,
                                          help_text="Default: the task's own.")
    partition_key = serializers.CharField(required=False, max_length=200)
    countdown = serializers.FloatField(required=False, min_value=0)
    eta = serializers.DateTimeField(required=False)
    lock = LockSerializer(required=False)
    idempotency_key = serializers.CharField(required=False, max_length=200)


class TaskBatchSerializer(serializers.Serializer):
    tasks = TaskSubmitSerializer(many=True, help_text="1 to 1,000 tasks, validated together before any is enqueued.")


class SubmissionSerializer(serializers.Serializer):
    task_id = serializers.CharField()
    task = serializers.CharField()
    queue = serializers.CharField()
    priority = serializers.CharField()
    worker_type = serializers.CharField()
    partition = serializers.IntegerField()
    submitted_at = serializers.CharField()
    eta = serializers.CharField(allow_null=True)
    duplicate = serializers.BooleanField(help_text="True when an idempotency key matched an earlier submission.")
    status_url = serializers.CharField()


class TaskStatusSerializer(serializers.Serializer):
    task_id = serializers.CharField()
    task = serializers.CharField(allow_null=True)
    state = serializers.CharField()
    result = serializers.JSONField(allow_null=True)
    error = serializers.CharField(allow_null=True)
    traceback = serializers.CharField(allow_null=True)
    retries = serializers.IntegerField()
    queue = serializers.CharField(allow_null=True)
    priority = serializers.CharField(required=False)
    worker_type = serializers.CharField(required=False)
    partition = serializers.IntegerField(required=False)
    submitted_at = serializers.CharField(required=False)
    eta = serializers.CharField(allow_null=True, required=False)
    worker = serializers.CharField(allow_null=True)
    finished_at = serializers.CharField(allow_null=True)
    stopping = serializers.BooleanField(help_text="True while a running task asked to stop has not stopped yet.")


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()


class CatalogEntrySerializer(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField()
    worker_type = serializers.CharField()
    priority = serializers.CharField()
    max_retries = serializers.IntegerField(allow_null=True)
    soft_time_limit = serializers.FloatField(allow_null=True)
    time_limit = serializers.FloatField(allow_null=True)
    arguments = serializers.ListField(child=serializers.DictField())


def validated(serializer_class, data) -> dict:
    """The validated data, or a 400 naming each bad field."""
    serializer = serializer_class(data=data)
    if not serializer.is_valid():
        raise ValidationError(serializer.errors)
    return dict(serializer.validated_data)

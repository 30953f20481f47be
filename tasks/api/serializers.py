"""Request and response shapes of the task API, for the OpenAPI schema.

Requests are validated by tasks.validation.prepare_payload (one place, fast enough for a batch
of 1,000); the request serializers here are built from the same rules (its field names,
bounds, patterns and enums), and tests/test_schemathesis.py holds the two together: every body
the schema allows is accepted, every body it forbids is refused."""

from django.conf import settings
from django.http import QueryDict
from django.utils.dateparse import parse_datetime
from rest_framework import serializers
from rest_framework.exceptions import ValidationError

from tasks import catalog, validation
from vokaflow.api_errors import flat_errors
from vokaflow.core.errors import BadRequest
from vokaflow.core.priorities import Priority
from vokaflow.core.workers import WorkerType

PRIORITY_NAMES = [p.name for p in Priority]
WORKER_TYPE_NAMES = [w.value for w in WorkerType]


# Shapes validated by tasks.validation, not by DRF: unknown fields are refused, strings are taken
# as they are (vokaflow.schema reads `openapi_extra`).
CLOSED = {"additionalProperties": False}


class LockSerializer(serializers.Serializer):
    openapi_extra = CLOSED

    key = serializers.RegexField(validation.LOCK_KEY_PATTERN, max_length=validation.MAX_KEY_LENGTH)
    timeout = serializers.FloatField(required=False, default=validation.LOCK_TIMEOUT_DEFAULT,
                                     min_value=validation.LOCK_TIMEOUT_MIN, max_value=validation.LOCK_TIMEOUT_MAX,
                                     help_text="Seconds the lock is held at most (renewed while the task runs).")
    skip_if_locked = serializers.BooleanField(required=False, default=False,
                                              help_text="Drop the task (REVOKED) instead of waiting when taken.")


class TaskSubmitSerializer(serializers.Serializer):
    openapi_extra = {**CLOSED, "not": {"required": ["countdown", "eta"], "description": "countdown or eta, not both",
                                       "properties": {"countdown": {"type": "number"}, "eta": {"type": "string"}}}}

    task = serializers.ChoiceField(choices=[], help_text="Name of a submittable task (see tasks/catalog/).")
    args = serializers.ListField(child=serializers.JSONField(), required=False, allow_null=True,
                                 help_text="Positional arguments.")
    kwargs = serializers.DictField(child=serializers.JSONField(), required=False, allow_null=True,
                                   help_text="Keyword arguments.")
    priority = serializers.ChoiceField(choices=PRIORITY_NAMES, required=False, allow_null=True,
                                       help_text="Default: the task's own.")
    worker_type = serializers.ChoiceField(choices=WORKER_TYPE_NAMES, required=False, allow_null=True,
                                          help_text="Default: the task's own.")
    partition_key = serializers.CharField(required=False, allow_null=True, allow_blank=True, trim_whitespace=False,
                                          max_length=validation.MAX_KEY_LENGTH)
    countdown = serializers.FloatField(required=False, allow_null=True, min_value=0,
                                       max_value=settings.VOKAFLOW_MAX_DELAY,
                                       help_text="Seconds from now (at most VOKAFLOW_MAX_DELAY).")
    eta = serializers.DateTimeField(required=False, allow_null=True, help_text="When to run (not with countdown).")
    lock = LockSerializer(required=False, allow_null=True)
    idempotency_key = serializers.CharField(required=False, allow_null=True, trim_whitespace=False, min_length=1,
                                            max_length=validation.MAX_KEY_LENGTH,
                                            help_text="The same key within 24 h answers the first task (duplicate).")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["task"].choices = catalog.submittable_names()  # registered once the app is loaded


class TaskBatchSerializer(serializers.Serializer):
    tasks = serializers.ListField(child=TaskSubmitSerializer(), min_length=1, max_length=settings.VOKAFLOW_BATCH_LIMIT,
                                  help_text="1 to 1,000 tasks, validated together before any is enqueued.")


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
    replicated = serializers.BooleanField(
        required=False, help_text="Only with VOKAFLOW_REDIS_REPLICAS_ACK: whether that many replicas confirmed "
                                  "the task's writes in time; false: it is enqueued, but a failover now could lose it.")
    status_url = serializers.CharField()


class BatchSubmissionSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    tasks = SubmissionSerializer(many=True)


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
    held_by = serializers.CharField(allow_null=True, help_text="The fleet-wide limit a waiting task waits for, and "
                                                               "why: concurrency, rate or queue (older tasks first).")


class CatalogEntrySerializer(serializers.Serializer):
    name = serializers.CharField()
    description = serializers.CharField()
    worker_type = serializers.CharField()
    priority = serializers.CharField()
    max_retries = serializers.IntegerField(allow_null=True)
    soft_time_limit = serializers.FloatField(allow_null=True)
    time_limit = serializers.FloatField(allow_null=True)
    arguments = serializers.ListField(child=serializers.DictField())


def json_object(data) -> dict:
    """A request body that must be a JSON object (or empty): anything else is a 400 naming `body`."""
    if not isinstance(data, dict):
        raise BadRequest(f"body: must be a JSON object, got {type(data).__name__}",
                         errors={"body": [f"must be a JSON object, got {type(data).__name__}"]})
    return data


# DRF coerces ("5" for a number, 5 for a string, "yes" for true); a JSON body must carry the type
# the schema says. Query strings are text by nature and keep DRF's parsing.
JSON_TYPES = [(serializers.BooleanField, (bool,), "a JSON boolean"),
              ((serializers.FloatField, serializers.IntegerField), (int, float), "a JSON number"),
              ((serializers.CharField, serializers.ChoiceField, serializers.DateTimeField), (str,), "a JSON string")]


def json_type_errors(serializer, data: dict) -> dict[str, list[str]]:
    errors = {}
    for name, field in serializer.fields.items():
        value = data.get(name)
        if value is None:
            continue  # absent, or null: DRF answers for null
        for kinds, types, label in JSON_TYPES:
            if isinstance(field, kinds):
                if isinstance(value, bool) and bool not in types or not isinstance(value, types):
                    errors[name] = [f"must be {label}"]
                break
    return errors


def validated(serializer_class, data) -> dict:
    """The validated data, or a 400 naming each bad field."""
    serializer = serializer_class(data=json_object(data))
    if isinstance(data, QueryDict):  # DRF would take `?status=` as no filter at all: say it is empty
        errors = {name: ["must not be empty"] for name in serializer.fields if data.get(name) == ""}
    else:
        errors = json_type_errors(serializer, data)
    if errors:
        raise ValidationError(errors)
    if not serializer.is_valid():
        raise ValidationError(serializer.errors)
    return dict(serializer.validated_data)


def given_fields(serializer_class, data) -> dict:
    """A JSON body's fields, checked by `serializer_class` as the schema states them: a 400 naming
    each unknown, mistyped or invalid field (a date-time must name its zone); only the fields the
    body gives are returned (a partial change sets nothing else)."""
    serializer = serializer_class(data=json_object(data))
    unknown = sorted(set(data) - set(serializer.fields))
    if unknown:
        accepted = f"unknown field; accepted fields: {', '.join(serializer.fields)}"
        raise BadRequest(f"{unknown[0]}: {accepted}", errors={unknown[0]: [accepted]})
    errors = json_type_errors(serializer, data)
    for name, field in serializer.fields.items():  # DRF would read a zone-less one in the server's zone
        value = data.get(name)
        if isinstance(field, serializers.DateTimeField) and isinstance(value, str) and name not in errors \
                and (parsed := parse_datetime(value)) is not None and parsed.tzinfo is None:
            errors[name] = ["must name its time zone (Z or an offset such as +02:00)"]
    if not errors and not serializer.is_valid():
        errors = flat_errors(serializer.errors)  # {"kwargs.x": [...]}: one level, as the schema says
    if errors:
        raise BadRequest("; ".join(f"{name}: {' '.join(map(str, why))}" for name, why in errors.items()),
                         errors=errors)
    return {name: value for name, value in serializer.validated_data.items() if name in data}

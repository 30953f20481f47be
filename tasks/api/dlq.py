"""Dead-letter API: list, detail, retry, bulk retry, discard. Thin: tasks.dlq works.

Viewing needs tasks.view_deadletter, retrying and discarding tasks.change_deadletter."""

from __future__ import annotations

import re
from dataclasses import asdict

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.response import Response
from rest_framework.views import APIView

from tasks import dlq
from tasks.api.serializers import PRIORITY_NAMES, WORKER_TYPE_NAMES, validated
from tasks.models import DeadLetter
from tasks.permissions import DeadLetterPermission
from tasks.validation import MAX_KEY_LENGTH
from vokaflow.schema import ErrorSerializer, drf_string_pattern


class DeadLetterSerializer(serializers.ModelSerializer):
    class Meta:
        model = DeadLetter
        exclude = ["id", "traceback"]


class DeadLetterDetailSerializer(serializers.ModelSerializer):
    class Meta:
        model = DeadLetter
        exclude = ["id"]


class FilterSerializer(serializers.Serializer):
    task = serializers.CharField(required=False)
    worker_type = serializers.ChoiceField(WORKER_TYPE_NAMES, required=False)
    priority = serializers.ChoiceField(PRIORITY_NAMES, required=False)
    status = serializers.ChoiceField(DeadLetter.Status.values, required=False)
    since = serializers.DateTimeField(required=False)
    until = serializers.DateTimeField(required=False)
    q = serializers.CharField(required=False, help_text="Text to find in the error.")


class RetrySerializer(serializers.Serializer):
    """The same names, one enum each, as a submission (tasks/api/serializers.py)."""

    priority = serializers.ChoiceField(PRIORITY_NAMES, required=False)
    worker_type = serializers.ChoiceField(WORKER_TYPE_NAMES, required=False)
    partition_key = serializers.CharField(required=False, max_length=MAX_KEY_LENGTH, trim_whitespace=False,
                                          allow_blank=True)


class RetriedSerializer(serializers.Serializer):
    task_id = serializers.CharField(help_text="The new task.")
    retried_from = serializers.CharField()
    status = serializers.CharField()


class BulkRetriedSerializer(serializers.Serializer):
    matched = serializers.IntegerField()
    retried = serializers.IntegerField()
    failed = serializers.IntegerField()


class DeadLetterPageSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = DeadLetterSerializer(many=True)


# The filters as query parameters, typed (enums, date-times) exactly as FilterSerializer checks them.
FILTER_PARAMETERS = [OpenApiParameter(name, OpenApiTypes.DATETIME if name in ("since", "until") else str,
                                      enum=getattr(field, "choices", None) and list(field.choices),
                                      pattern=drf_string_pattern(field),
                                      required=False, description=field.help_text or "")
                     for name, field in FilterSerializer().fields.items()]
PAGE_PARAMETERS = [
    OpenApiParameter("page", {"type": "integer", "minimum": 1}, required=False,
                     description="1 and up; 404 past the last page"),
    OpenApiParameter("page_size", {"type": "integer", "minimum": 1}, required=False,
                     description="1 to 500 (default 50; more is 500)"),
]
_POSITIVE = re.compile(r"[0-9]+")


class DeadLetterPagination(PageNumberPagination):
    """DRF's page numbers, except that a `page` or `page_size` that is not a whole number of 1 or
    more is a 400 naming it (DRF takes a bad page_size for the default, and a bad page for a 404)."""

    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500

    def get_page_size(self, request):
        size = _positive(request, self.page_size_query_param, f"a whole number from 1 to {self.max_page_size}")
        return self.page_size if size is None else min(size, self.max_page_size)

    def get_page_number(self, request, paginator):
        if request.query_params.get(self.page_query_param) in self.last_page_strings:
            return paginator.num_pages
        return _positive(request, self.page_query_param, "a whole number of 1 or more, or 'last'") or 1


def _positive(request, name: str, expected: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    if not _POSITIVE.fullmatch(raw) or int(raw) < 1:
        raise ValidationError({name: [f"must be {expected}"]})
    return int(raw)


class DLQView(APIView):
    permission_classes = [DeadLetterPermission]


class DeadLetterListView(DLQView):
    """Dead letters, newest first, filtered by task, worker_type, priority, status, since, until, q."""

    @extend_schema(parameters=FILTER_PARAMETERS + PAGE_PARAMETERS, operation_id="dlq_list",
                   responses={200: DeadLetterPageSerializer, 404: ErrorSerializer})
    def get(self, request):
        filters = validated(FilterSerializer, request.query_params)
        paginator = DeadLetterPagination()
        page = paginator.paginate_queryset(DeadLetter.objects.matching(**filters).newest_first(), request, view=self)
        return paginator.get_paginated_response(DeadLetterSerializer(page, many=True).data)


class DeadLetterDetailView(DLQView):
    """One dead letter with its traceback (GET), or discard it, kept for audit (DELETE)."""

    @extend_schema(responses={200: DeadLetterDetailSerializer})
    def get(self, request, task_id):
        return Response(DeadLetterDetailSerializer(dlq.dead_letter_get(task_id=task_id)).data)

    @extend_schema(responses={200: DeadLetterDetailSerializer})
    def delete(self, request, task_id):
        dlq.dead_letter_get(task_id=task_id)
        return Response(DeadLetterDetailSerializer(dlq.dead_letter_discard(task_id=task_id)).data)


class DeadLetterRetryView(DLQView):
    """Enqueue the task again with its original routing (or the overrides in the body): 202."""

    @extend_schema(request=RetrySerializer, responses={202: RetriedSerializer, 409: ErrorSerializer})
    def post(self, request, task_id):
        overrides = validated(RetrySerializer, request.data)
        letter = dlq.dead_letter_retry(task_id=task_id, **overrides)
        return Response({"task_id": letter.retried_task_id, "retried_from": letter.task_id,
                         "status": letter.status}, status=202)


class DeadLetterBulkRetryView(DLQView):
    """Retry every dead letter matching the filters (query string or body; status defaults to dead)."""

    @extend_schema(parameters=FILTER_PARAMETERS, request=FilterSerializer, responses={202: BulkRetriedSerializer},
                   operation_id="dlq_retry_matching")
    def post(self, request):
        filters = {**validated(FilterSerializer, request.query_params), **validated(FilterSerializer, request.data)}
        return Response(asdict(dlq.dead_letter_retry_many(**filters)), status=202)

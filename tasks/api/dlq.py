"""Dead-letter API (staff only): list, detail, retry, bulk retry, discard. Thin: tasks.dlq works."""

from __future__ import annotations

from dataclasses import asdict

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.pagination import PageNumberPagination
from rest_framework.permissions import IsAdminUser
from rest_framework.response import Response
from rest_framework.views import APIView

from tasks import dlq
from tasks.api.serializers import json_object, validated
from tasks.models import DeadLetter
from vokaflow.core.priorities import Priority
from vokaflow.core.workers import WorkerType


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
    worker_type = serializers.ChoiceField([w.value for w in WorkerType], required=False)
    priority = serializers.ChoiceField([p.name for p in Priority], required=False)
    status = serializers.ChoiceField(DeadLetter.Status.values, required=False)
    since = serializers.DateTimeField(required=False)
    until = serializers.DateTimeField(required=False)
    q = serializers.CharField(required=False, help_text="Text to find in the error.")


class RetrySerializer(serializers.Serializer):
    priority = serializers.ChoiceField([p.name for p in Priority], required=False)
    worker_type = serializers.ChoiceField([w.value for w in WorkerType], required=False)
    partition_key = serializers.CharField(required=False, max_length=200)


FILTER_PARAMETERS = [OpenApiParameter(name, str, required=False) for name in FilterSerializer().fields]


class DeadLetterPagination(PageNumberPagination):
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500


class DLQView(APIView):
    permission_classes = [IsAdminUser]


class DeadLetterListView(DLQView):
    """Dead letters, newest first, filtered by task, worker_type, priority, status, since, until, q."""

    @extend_schema(parameters=FILTER_PARAMETERS, responses={200: DeadLetterSerializer(many=True)})
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

    @extend_schema(request=RetrySerializer, responses={202: dict, 409: dict})
    def post(self, request, task_id):
        overrides = validated(RetrySerializer, request.data)
        letter = dlq.dead_letter_retry(task_id=task_id, **overrides)
        return Response({"task_id": letter.retried_task_id, "retried_from": letter.task_id,
                         "status": letter.status}, status=202)


class DeadLetterBulkRetryView(DLQView):
    """Retry every dead letter matching the filters (query string or body; status defaults to dead)."""

    @extend_schema(parameters=FILTER_PARAMETERS, request=FilterSerializer, responses={202: dict})
    def post(self, request):
        filters = validated(FilterSerializer, {**request.query_params.dict(), **json_object(request.data)})
        return Response(asdict(dlq.dead_letter_retry_many(**filters)), status=202)

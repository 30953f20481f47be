"""Queues API (staff only): list non-empty queues, pause and resume a level, purge a queue.
Thin: workers.queues does the work."""

from __future__ import annotations

from dataclasses import asdict

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.permissions import IsAdminUser
from rest_framework.response import Response
from rest_framework.views import APIView

from tasks.api.serializers import validated
from vokaflow.core.priorities import Priority
from vokaflow.core.workers import WorkerType
from workers import queues


class LevelSerializer(serializers.Serializer):
    worker_type = serializers.ChoiceField([w.value for w in WorkerType])
    priority = serializers.ChoiceField([p.name for p in Priority])


class LevelStateSerializer(LevelSerializer):
    paused = serializers.BooleanField()


class QueueSerializer(serializers.Serializer):
    name = serializers.CharField()
    worker_type = serializers.CharField()
    priority = serializers.CharField()
    partition = serializers.IntegerField()
    depth = serializers.IntegerField()
    oldest_age_seconds = serializers.FloatField(allow_null=True, help_text="Age of the next task a worker takes.")
    paused = serializers.BooleanField()
    oldest_wait_seconds = serializers.FloatField(
        allow_null=True, help_text="How long the next task has been ready to run: since it was enqueued, came due "
                                   "(countdown, eta) or was let out by a fleet-wide limit. Autoscaling scales on it.")


class QueueListSerializer(serializers.Serializer):
    queues = QueueSerializer(many=True, help_text="Every non-empty queue, highest priority first.")
    paused_levels = LevelSerializer(many=True)


class PurgedSerializer(serializers.Serializer):
    purged = serializers.IntegerField(help_text="Tasks deleted from the queue.")


class QueuesView(APIView):
    permission_classes = [IsAdminUser]


class QueueListView(QueuesView):
    """Every non-empty queue with its depth and oldest age, and the paused levels."""

    @extend_schema(responses={200: QueueListSerializer})
    def get(self, request):
        return Response({"queues": [asdict(q) for q in queues.non_empty_queues()],
                         "paused_levels": queues.paused_levels()})


class QueuePauseView(QueuesView):
    """Stop workers consuming a (worker type, priority) level; its tasks stay queued."""

    @extend_schema(request=LevelSerializer, responses={200: LevelStateSerializer})
    def post(self, request):
        return Response(queues.pause_level(**validated(LevelSerializer, request.data)))


class QueueResumeView(QueuesView):
    """Workers consume a paused level again."""

    @extend_schema(request=LevelSerializer, responses={200: LevelStateSerializer})
    def post(self, request):
        return Response(queues.resume_level(**validated(LevelSerializer, request.data)))


class QueuePurgeView(QueuesView):
    """Delete every task waiting in one queue."""

    @extend_schema(responses={200: PurgedSerializer})
    def delete(self, request, name):
        return Response({"purged": queues.purge_queue(name)})  # UnknownQueue is a 404

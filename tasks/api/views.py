"""Task API: submit, batch submit, state, revoke, catalog. Thin: tasks.submit does the work."""

from dataclasses import asdict

from django.urls import reverse
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from tasks import catalog
from tasks.api.serializers import (
    BatchSubmissionSerializer,
    CatalogEntrySerializer,
    SubmissionSerializer,
    TaskBatchSerializer,
    TaskStatusSerializer,
    TaskSubmitSerializer,
)
from tasks.ownership import owner_id
from tasks.state import revoke_task, task_status
from tasks.submit import enqueue, prepare_payload, submit_payloads
from vokaflow.schema import ErrorSerializer


def _submission_bodies(request, submissions) -> list[dict]:
    # One reverse() for the whole batch: the URL differs only by the id.
    template = request.build_absolute_uri(reverse("task-detail", kwargs={"task_id": "ID"}) + "/")
    prefix, suffix = template.rsplit("ID", 1)
    return [{**s.public(), "status_url": f"{prefix}{s.task_id}{suffix}"} for s in submissions]


class TaskSubmitView(APIView):
    """Submit one task by name; answers 202 with the queue it went to."""

    @extend_schema(request=TaskSubmitSerializer, responses={202: SubmissionSerializer})
    def post(self, request):
        submission = enqueue([prepare_payload(request.data)], owner=owner_id(request.user))[0]
        return Response(_submission_bodies(request, [submission])[0], status=202)


class TaskBatchView(APIView):
    """Submit up to 1,000 tasks; all are validated before any is enqueued."""

    @extend_schema(request=TaskBatchSerializer, responses={202: BatchSubmissionSerializer})
    def post(self, request):
        submissions = submit_payloads(request.data.get("tasks") if isinstance(request.data, dict) else None,
                                      owner=owner_id(request.user))
        return Response({"count": len(submissions),
                         "tasks": _submission_bodies(request, submissions)}, status=202)


class TaskDetailView(APIView):
    """State of one task (GET) or revoke it while it has not finished (DELETE)."""

    @extend_schema(responses={200: TaskStatusSerializer})
    def get(self, request, task_id):
        return Response(task_status(task_id, user=request.user))

    @extend_schema(responses={
        200: OpenApiResponse(TaskStatusSerializer, "Revoked: it had not started, or it ran in a prefork "
                             "worker and was terminated. `state` is REVOKED."),
        202: OpenApiResponse(TaskStatusSerializer, "Running in a thread pool: asked to stop; `stopping` is "
                             "true and `state` STARTED until it stops, then REVOKED."),
        404: OpenApiResponse(ErrorSerializer, "No task with this id."),
        409: OpenApiResponse(ErrorSerializer, "Already finished (SUCCESS, FAILURE, REVOKED, DEAD): "
                             "its state is left as it is."),
    })
    def delete(self, request, task_id):
        status = revoke_task(task_id, user=request.user)
        return Response(status, status=202 if status["stopping"] else 200)


class CatalogView(APIView):
    """The submittable tasks with their defaults and argument hints."""

    @extend_schema(responses={200: CatalogEntrySerializer(many=True)})
    def get(self, request):
        return Response([asdict(entry) for entry in catalog.catalog()])

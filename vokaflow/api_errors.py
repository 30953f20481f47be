"""One JSON shape for every API error: {"detail": ..., "errors": {field: [reasons]}}."""

from django.core.exceptions import RequestDataTooBig
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from tasks.state import TaskAlreadyFinished, TaskNotFound
from tasks.submit import BrokerUnavailable, SubmissionError


def exception_handler(exc, context):
    if isinstance(exc, SubmissionError):
        field = exc.field if exc.index is None else f"tasks[{exc.index}].{exc.field}"
        body = {"detail": f"{field}: {exc.message}; nothing was enqueued", "errors": {field: [exc.message]}}
        body.update(exc.extra)
        return Response(body, status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, BrokerUnavailable):
        return Response({"detail": f"{exc}. Nothing was enqueued; retry when Redis is back."},
                        status=status.HTTP_503_SERVICE_UNAVAILABLE, headers={"Retry-After": "5"})
    if isinstance(exc, TaskNotFound):
        return Response({"detail": f"no task with id {exc}"}, status=status.HTTP_404_NOT_FOUND)
    if isinstance(exc, TaskAlreadyFinished):
        return Response({"detail": str(exc)}, status=status.HTTP_409_CONFLICT)
    if isinstance(exc, RequestDataTooBig):
        return Response({"detail": "request body too large"}, status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(response.data, dict) and "detail" not in response.data:
        response.data = {"detail": "invalid request", "errors": response.data}
    return response

"""One JSON shape for every API error: {"detail": ..., "errors": {field: [reasons]}}.

Every VokaFlow error carries its own status (vokaflow.core.errors.VokaFlowError); this is the
one place that turns it, and DRF's own errors, into a response.
"""

from django.core.exceptions import RequestDataTooBig
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from vokaflow.core.errors import VokaFlowError


def exception_handler(exc, context):
    if isinstance(exc, VokaFlowError):
        return Response(exc.body(), status=exc.status, headers=exc.headers)
    if isinstance(exc, RequestDataTooBig):
        return Response({"detail": "request body too large"}, status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
    response = drf_exception_handler(exc, context)
    if response is not None and isinstance(response.data, dict) and "detail" not in response.data:
        response.data = {"detail": "invalid request", "errors": response.data}
    return response

"""Refuses an oversized body before anything reads it."""

from django.conf import settings
from django.http import JsonResponse


class RequestSizeLimitMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        limit = settings.VOKAFLOW_MAX_BODY_BYTES
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > limit:
            return JsonResponse({"detail": f"request body of {length} bytes is over the limit of {limit} bytes; "
                                           "split the batch"}, status=413)
        return self.get_response(request)

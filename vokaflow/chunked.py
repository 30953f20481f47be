"""Request bodies sent with `Transfer-Encoding: chunked` (no Content-Length).

Django reads exactly CONTENT_LENGTH bytes of a request body, so a chunked body reached the
views empty ("task: required"). A server that de-chunks the input and says so with
`wsgi.input_terminated` (gunicorn does) lets us read it here, bounded by the body limit, and
hand Django an ordinary body with its length; any other server gets a 411 JSON answer.
"""

from __future__ import annotations

import io
import json

from django.conf import settings


class ChunkedBodyMiddleware:
    """WSGI middleware around the Django application (vokaflow.wsgi)."""

    def __init__(self, application):
        self.application = application

    def __call__(self, environ, start_response):
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if chunked and not environ.get("CONTENT_LENGTH"):
            if not environ.get("wsgi.input_terminated"):
                return _json(start_response, "411 Length Required",
                             "send the request body with a Content-Length header (this server cannot "
                             "read a chunked body)")
            # One byte over the limit is enough for the size check to answer 413.
            body = environ["wsgi.input"].read(settings.VOKAFLOW_MAX_BODY_BYTES + 1)
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
        return self.application(environ, start_response)


def _json(start_response, status: str, detail: str):
    body = json.dumps({"detail": detail}).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]

"""One JSON shape for every API error: {"detail": ..., "errors": {field: [reasons]}}.

Every VokaFlow error carries its own status (vokaflow.core.errors.VokaFlowError); this is the
one place that turns it, and DRF's own errors, into a response.
"""

from django.core.exceptions import DisallowedHost, RequestDataTooBig
from django.http import JsonResponse
from django.views import defaults
from django.views.decorators.csrf import csrf_exempt
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from vokaflow.core.errors import VokaFlowError

API_PREFIXES = ("/api/", "/metrics")


def exception_handler(exc, context):
    if isinstance(exc, VokaFlowError):
        return Response(_safe_body(exc.body()), status=exc.status, headers=exc.headers)
    if isinstance(exc, RequestDataTooBig):
        return Response({"detail": "request body too large"}, status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
    response = drf_exception_handler(exc, context)
    if response is not None and not (isinstance(response.data, dict) and "detail" in response.data):
        errors = flat_errors(response.data if isinstance(response.data, dict) else {"body": response.data})
        response.data = {"detail": "; ".join(f"{field}: {' '.join(reasons)}" for field, reasons in errors.items()),
                         "errors": errors}
    if response is not None and isinstance(response.data, dict):
        response.data = _safe_body(response.data)
    return response


def safe_text(text: str) -> str:
    """`text` with every character that is not printable (NUL and the other control characters,
    lone surrogates, line separators) written as its escape, as repr() does (\\x00, \\u2028).
    Error messages quote what the caller sent; this keeps them readable, valid JSON text of
    the schema's `detail` pattern (no NUL), and free of terminal escapes."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _safe_body(body: dict) -> dict:
    """The error body with `detail` and `errors` (field names and reasons) made safe_text."""
    body = dict(body)
    if isinstance(body.get("detail"), str):
        body["detail"] = safe_text(body["detail"])
    if isinstance(body.get("errors"), dict):
        body["errors"] = {safe_text(str(field)): [safe_text(str(reason)) for reason in reasons]
                          if isinstance(reasons, list) else reasons for field, reasons in body["errors"].items()}
    return body


def flat_errors(errors: dict, prefix: str = "") -> dict[str, list[str]]:
    """DRF's nested errors as {"lock.key": ["..."]}: one level, field → reasons, as documented."""
    flat: dict[str, list[str]] = {}
    for field, value in errors.items():
        name = f"{prefix}.{field}" if prefix else str(field)
        if isinstance(value, dict):
            flat.update(flat_errors(value, name))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for i, item in enumerate(value):
                flat.update(flat_errors(item, f"{name}[{i}]"))
        else:
            flat[name] = [str(v) for v in (value if isinstance(value, list) else [value])]
    return flat


@csrf_exempt  # a POST to a path that names nothing is a 404, not a CSRF failure
def api_not_found(request, exception=None, *args, **kwargs):
    """JSON 404 for every path under /api/ that names nothing (a catch-all route and handler404)."""
    return JsonResponse({"detail": safe_text(f"no such API endpoint or id: {request.path}")}, status=404)


def api_server_error(request, *args, **kwargs):
    """JSON 500 for the API (handler500); HTML pages keep Django's."""
    if request.path.startswith(API_PREFIXES):
        return JsonResponse({"detail": "internal server error; it has been logged"}, status=500)
    return defaults.server_error(request, *args, **kwargs)


def bad_request(request, exception, *args, **kwargs):
    """JSON 400 for the API (handler400: a Host header not in ALLOWED_HOSTS, or another request
    Django refuses before any view runs); HTML pages keep Django's."""
    if not request.path.startswith(API_PREFIXES):
        return defaults.bad_request(request, exception, *args, **kwargs)
    if isinstance(exception, DisallowedHost):
        return JsonResponse({"detail": "the Host header names no host this server answers for (ALLOWED_HOSTS)",
                             "errors": {"Host": ["not allowed"]}}, status=400)
    return JsonResponse({"detail": "bad request"}, status=400)


def not_found(request, exception, *args, **kwargs):
    if request.path.startswith(API_PREFIXES):
        return api_not_found(request)
    return defaults.page_not_found(request, exception, *args, **kwargs)

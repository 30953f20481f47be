"""The OpenAPI schema as the contract: every error an operation can answer, in one shape.

drf-spectacular documents what a view declares; this AutoSchema adds the answers every view
shares (401/403 without the right credentials, 429 throttled, 503 Redis or the database down,
400/413/415 for a bad body, 404 for an unknown id) with the one error body vokaflow.api_errors
writes, and closes request objects whose validation refuses unknown fields.

It overrides two of drf-spectacular's underscore methods (`_map_basic_serializer`,
`_get_response_bodies`); tests/test_contracts.py fails loudly if they change.
"""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework_simplejwt.views import TokenViewBase


class ErrorSerializer(serializers.Serializer):
    """Every error answer: `detail`, and `errors` by field when fields were wrong (other facts,
    such as `allowed` for an unknown task or `holder` for a taken lock, may follow)."""

    detail = serializers.CharField()
    errors = serializers.DictField(child=serializers.ListField(child=serializers.CharField()), required=False,
                                   help_text="field (e.g. `tasks[3].priority`) → reasons")


ERRORS = {
    "400": "Bad input: `errors` names each field; nothing was enqueued.",
    "401": "No credentials, or they are not valid.",
    "403": "Authenticated, but not allowed to do this.",
    "404": "No such object (or not yours).",
    "409": "Conflicts with the object's state.",
    "413": "The request body is over VOKAFLOW_MAX_BODY_BYTES.",
    "415": "The body is not application/json.",
    "429": "Too many requests: wait for Retry-After seconds.",
    "503": "Redis or the database did not answer: retry after Retry-After seconds.",
}
RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait before retrying."}}


def drf_string_pattern(field: serializers.Field) -> str | None:
    """What a DRF CharField accepts, as a pattern: no NUL character, and unless blank is allowed,
    something left after trimming whitespace."""
    if not isinstance(field, serializers.CharField):
        return None
    if field.allow_blank:
        return "^[^\\x00]*$"
    return "^[^\\x00]*[^\\s\\x00][^\\x00]*$" if field.trim_whitespace else "^[^\\x00]+$"


class VokaFlowAutoSchema(AutoSchema):
    def _map_basic_serializer(self, serializer, direction):
        schema = super()._map_basic_serializer(serializer, direction)
        extra = getattr(serializer, "openapi_extra", None)
        if extra is not None:  # validated by tasks.validation: its own rules, stated by the serializer
            return {**schema, **extra}
        for name, field in serializer.fields.items():  # DRF validates: say what its CharField refuses
            prop = schema.get("properties", {}).get(name)
            pattern = drf_string_pattern(field)
            if pattern and prop and prop.get("type") == "string" and "pattern" not in prop and "format" not in prop:
                prop["pattern"] = pattern
        return schema

    def _get_response_bodies(self, direction="response"):
        responses = super()._get_response_bodies(direction)
        if direction != "response":
            return responses
        for code in self.error_codes():
            if code not in responses or "content" not in responses[code]:
                responses[code] = self._get_response_for_code(
                    OpenApiResponse(ErrorSerializer, description=ERRORS[code]), code)
            if code in ("429", "503"):
                responses[code].setdefault("headers", {}).update(RETRY_AFTER)
        return responses

    def error_codes(self) -> list[str]:
        """The error statuses this operation can answer, from what the view does."""
        view, codes = self.view, {"503"}
        has_body = self.method in ("POST", "PUT", "PATCH") and self.get_request_serializer() is not None
        has_query = any(getattr(p, "location", None) == OpenApiParameter.QUERY
                        for p in self.get_override_parameters())
        if has_body:
            codes |= {"400", "413", "415"}
        if has_query:
            codes.add("400")
        if "{" in self.path:
            codes.add("404")
        if view.get_authenticators() or isinstance(view, TokenViewBase):
            codes.add("401")  # a bad token is refused even where none is needed; so are bad passwords
        if not all(issubclass(p, AllowAny) for p in view.permission_classes):
            codes |= {"401", "403"}
        if view.get_throttles():
            codes.add("429")
        declared = self.get_response_serializers()
        if isinstance(declared, dict):
            codes |= {str(code) for code in declared if str(code) in ERRORS}
        return sorted(codes)


class MetricsTokenScheme(OpenApiAuthenticationExtension):
    target_class = "workers.api.views.MetricsTokenAuthentication"
    name = "metricsToken"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "VOKAFLOW_METRICS_TOKEN (Prometheus scrapes)"}

"""The one error base: every error VokaFlow raises for a caller carries its HTTP status and detail,
and vokaflow.api_errors maps it to a response in one place."""

from __future__ import annotations

from typing import Any


class VokaFlowError(Exception):
    """An error a caller can act on. `status` is the HTTP status the API answers with; `body()`
    is the JSON it answers (`detail`, plus `errors` by field and any extra facts)."""

    status: int = 500
    headers: dict[str, str] = {}

    def __init__(self, detail: str, **extra: Any):
        self.detail, self.extra = detail, extra
        super().__init__(detail)

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail, **self.extra}


class BadRequest(VokaFlowError):
    status = 400


class NotFound(VokaFlowError):
    status = 404


class Conflict(VokaFlowError):
    status = 409


class Unavailable(VokaFlowError):
    """A service VokaFlow depends on (Redis, the database) did not answer."""

    status = 503
    headers = {"Retry-After": "5"}


class TooManyRequests(VokaFlowError):
    """Over a limit: try again after `retry_after` seconds (sent as Retry-After and in the body)."""

    status = 429

    def __init__(self, detail: str, *, retry_after: int = 5, **extra: Any):
        super().__init__(detail, retry_after=retry_after, **extra)
        self.headers = {"Retry-After": str(retry_after)}

"""Failed logins limited per user name and per client address, checked before any password is hashed.

Hashing a password costs tens of milliseconds of CPU (PBKDF2, Django's default, by design), so a
few dozen clients sending wrong passwords kept every web thread busy and health took seconds.
Two Redis counters per failure (user name, address) expire with their window; a login attempt
first reads them (one round trip, well under a millisecond) and is answered 429 with
Retry-After while either is at its limit.

* `LoginLimitMiddleware` answers 429 on the login paths (VOKAFLOW_LOGIN_PATHS: the token
  endpoint and the login forms), before the view runs.
* `LoginLimitBackend`, first in AUTHENTICATION_BACKENDS, refuses (PermissionDenied, which
  stops django.contrib.auth.authenticate before the next backend hashes) on any other path that
  authenticates with a password.
* The `user_login_failed` signal counts each failure.

When Redis does not answer, logins are not limited (and a warning is logged): the rest of the
platform is down with it, and the admin must stay reachable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math

import redis
from django.conf import settings
from django.contrib.auth.signals import user_login_failed
from django.core.exceptions import PermissionDenied
from django.dispatch import receiver
from django.http import HttpRequest, JsonResponse

from vokaflow.core import keys
from vokaflow.core.errors import TooManyRequests
from vokaflow.redis import get_redis

logger = logging.getLogger(__name__)

# One failure: count it, starting the window with the first (atomic, so no counter lives forever).
_COUNT_FAILURE = """
for _, key in ipairs(KEYS) do
  if redis.call('INCR', key) == 1 then redis.call('PEXPIRE', key, ARGV[1]) end
end
"""

_CHECKED = "_vokaflow_login_checked"  # set on a request whose counters were already read


def client_address(request: HttpRequest | None) -> str | None:
    """The client's address: nginx's X-Real-IP behind the proxy (deploy/nginx.conf), else the peer."""
    if request is None:
        return None
    meta = request.META
    if settings.VOKAFLOW_BEHIND_PROXY and meta.get("HTTP_X_REAL_IP"):
        return meta["HTTP_X_REAL_IP"].strip()[:64]
    return meta.get("REMOTE_ADDR") or None


def _counter_keys(username: str | None, address: str | None) -> list[tuple[str, int]]:
    """(Redis key, limit) of each counter that applies; a limit of 0 turns that counter off."""
    found = []
    if username and settings.VOKAFLOW_LOGIN_LIMIT_PER_USER > 0:
        digest = hashlib.sha256(username.strip().lower().encode("utf-8", "replace")).hexdigest()[:32]
        found.append((keys.LOGIN_FAILURES_USER.format(digest), settings.VOKAFLOW_LOGIN_LIMIT_PER_USER))
    if address and settings.VOKAFLOW_LOGIN_LIMIT_PER_ADDRESS > 0:
        found.append((keys.LOGIN_FAILURES_ADDRESS.format(address), settings.VOKAFLOW_LOGIN_LIMIT_PER_ADDRESS))
    return found


def seconds_blocked(username: str | None, address: str | None) -> int | None:
    """Seconds until a login for this user name from this address may be tried; None: now."""
    counters = _counter_keys(username, address)
    if not counters:
        return None
    try:
        with get_redis().pipeline(transaction=False) as pipe:
            for key, _ in counters:
                pipe.get(key)
                pipe.pttl(key)
            replies = pipe.execute()
    except (redis.RedisError, OSError) as exc:
        logger.warning("login limit not checked, Redis did not answer: %s", exc)
        return None
    waits = [math.ceil(max(ttl, 1000) / 1000)
             for (_, limit), count, ttl in zip(counters, replies[::2], replies[1::2])
             if count is not None and int(count) >= limit]
    return max(waits) if waits else None


def record_failure(username: str | None, address: str | None) -> None:
    counters = _counter_keys(username, address)
    if not counters:
        return
    window_ms = int(settings.VOKAFLOW_LOGIN_WINDOW * 1000)
    try:
        get_redis().eval(_COUNT_FAILURE, len(counters), *(key for key, _ in counters), window_ms)
    except (redis.RedisError, OSError) as exc:
        logger.warning("failed login not counted, Redis did not answer: %s", exc)


def too_many(retry_after: int) -> TooManyRequests:
    return TooManyRequests(f"too many failed logins for this user name or from this address; "
                           f"try again in {retry_after} s", retry_after=retry_after)


@receiver(user_login_failed, dispatch_uid="vokaflow-login-limit")
def _count_failed_login(sender, credentials: dict, request: HttpRequest | None = None, **kwargs) -> None:
    username = credentials.get("username")
    record_failure(username if isinstance(username, str) else None, client_address(request))


class LoginLimitBackend:
    """Authenticates nobody: refuses, before the password backends hash anything, while a limit holds."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        if request is not None and getattr(request, _CHECKED, False):
            return None  # the middleware read the counters for this request a moment ago
        if seconds_blocked(username if isinstance(username, str) else None, client_address(request)):
            raise PermissionDenied("too many failed logins")
        return None

    def get_user(self, user_id):
        return None


def _login_paths() -> frozenset[str]:
    return frozenset(path.rstrip("/") for path in settings.VOKAFLOW_LOGIN_PATHS)


def _posted_username(request: HttpRequest) -> str | None:
    if request.content_type == "application/json":
        try:
            body = json.loads(request.body or b"{}")
        except ValueError:
            return None  # the view answers 400
        username = body.get("username") if isinstance(body, dict) else None
    else:
        username = request.POST.get("username")
    return username if isinstance(username, str) else None


class LoginLimitMiddleware:
    """429 with Retry-After for a login POST while its user name or address is over the limit."""

    def __init__(self, get_response):
        self.get_response = get_response
        self.paths = _login_paths()

    def __call__(self, request: HttpRequest):
        if request.method == "POST" and request.path_info.rstrip("/") in self.paths:
            wait = seconds_blocked(_posted_username(request), client_address(request))
            if wait:
                error = too_many(wait)
                return JsonResponse(error.body(), status=error.status, headers=error.headers)
            setattr(request, _CHECKED, True)
        return self.get_response(request)

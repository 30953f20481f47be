"""Failed logins limited per user name and per client address, checked before any password is hashed.

Hashing a password costs a lot of CPU on purpose (PBKDF2, Django's default), so a few dozen
clients sending wrong passwords kept every web thread busy and health took seconds. Each login
attempt first takes a place in two Redis counters (its user name, its address) that expire with
their window, in one atomic step, so that at most the limit of attempts per window ever reach the
hasher, however many arrive at once; an attempt over either limit is refused without hashing. A
successful attempt gives its place back, so only failures use up the limit.

* `LoginLimitMiddleware` guards the login paths (VOKAFLOW_LOGIN_PATHS: the token endpoint and
  the login forms): 429 with Retry-After, before the view runs. It also lets at most
  VOKAFLOW_LOGIN_CONCURRENCY logins per web process check a password at once (others: 429,
  Retry-After 1, not counted), so that attempts from many addresses and user names, which no
  counter catches, still leave the other threads (health among them) their share of the CPU.
* `LoginLimitBackend`, first in AUTHENTICATION_BACKENDS, guards every other caller of
  django.contrib.auth.authenticate: PermissionDenied stops authenticate before the next backend
  hashes (the caller sees an ordinary failed login).

When Redis does not answer, logins are not limited (a warning is logged): the rest of the
platform is down with it, and the admin must stay reachable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from typing import Any

import redis
from django.conf import settings
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.core.exceptions import PermissionDenied
from django.dispatch import receiver
from django.http import HttpRequest, JsonResponse

from vokaflow.core import keys
from vokaflow.core.errors import TooManyRequests
from vokaflow.redis import get_redis

logger = logging.getLogger(__name__)

# Take a place in each counter (the first starts the window); answers each count and its TTL.
_TAKE_PLACE = """
local replies = {}
for _, key in ipairs(KEYS) do
  local n = redis.call('INCR', key)
  if n == 1 then redis.call('PEXPIRE', key, ARGV[1]) end
  table.insert(replies, n)
  table.insert(replies, redis.call('PTTL', key))
end
return replies
"""
# Give a place back: only while the window that counted it lasts.
_GIVE_BACK = """
for _, key in ipairs(KEYS) do
  if tonumber(redis.call('GET', key) or '0') > 0 then redis.call('DECR', key) end
end
"""

# On a request: the (user name, address) whose places the middleware or the backend took, and
# whether authenticate() failed for it.
_MIDDLEWARE_PLACE = "_vokaflow_login_place"
_BACKEND_PLACE = "_vokaflow_login_backend_place"
_FAILED = "_vokaflow_login_failed"


def client_address(request: Any) -> str | None:
    """The client's address: nginx's X-Real-IP behind the proxy (deploy/nginx.conf), else the peer."""
    if request is None:
        return None
    meta = request.META
    if settings.VOKAFLOW_BEHIND_PROXY and meta.get("HTTP_X_REAL_IP"):
        return meta["HTTP_X_REAL_IP"].strip()[:64]
    return meta.get("REMOTE_ADDR") or None


def _counters(username: str | None, address: str | None) -> list[tuple[str, int]]:
    """(Redis key, limit) of each counter that applies; a limit of 0 turns that counter off."""
    found = []
    if username and settings.VOKAFLOW_LOGIN_LIMIT_PER_USER > 0:
        digest = hashlib.sha256(username.strip().lower().encode("utf-8", "replace")).hexdigest()[:32]
        found.append((keys.LOGIN_FAILURES_USER.format(digest), settings.VOKAFLOW_LOGIN_LIMIT_PER_USER))
    if address and settings.VOKAFLOW_LOGIN_LIMIT_PER_ADDRESS > 0:
        found.append((keys.LOGIN_FAILURES_ADDRESS.format(address), settings.VOKAFLOW_LOGIN_LIMIT_PER_ADDRESS))
    return found


# Counters this process saw over their limit, and until when (monotonic seconds): while an attack
# lasts, its attempts are refused without a call to Redis, which is the broker too. (Deleting the
# Redis keys therefore lifts a block only when the window ends.)
_over_limit: dict[str, float] = {}
_OVER_LIMIT_ENTRIES = 10_000


def take_place(username: str | None, address: str | None) -> int | None:
    """Count one login attempt; returns the seconds to wait when it is over a limit (None: go on)."""
    counters = _counters(username, address)
    if not counters:
        return None
    known = _known_wait([key for key, _ in counters])
    if known:
        return known
    window_ms = int(settings.VOKAFLOW_LOGIN_WINDOW * 1000)
    try:
        replies = get_redis().eval(_TAKE_PLACE, len(counters), *(key for key, _ in counters), window_ms)
    except (redis.RedisError, OSError) as exc:
        logger.warning("login limit not checked, Redis did not answer: %s", exc)
        return None
    waits = []
    for (key, limit), count, ttl in zip(counters, replies[::2], replies[1::2]):
        if int(count) > limit:
            waits.append(math.ceil(max(int(ttl), 1000) / 1000))
            _remember_over_limit(key, max(int(ttl), 0) / 1000)
    return max(waits) if waits else None


def _known_wait(counter_keys: list[str]) -> int | None:
    now = time.monotonic()
    waits = [until - now for key in counter_keys if (until := _over_limit.get(key, 0.0)) > now]
    return math.ceil(max(waits)) if waits else None


def _remember_over_limit(key: str, seconds: float) -> None:
    if len(_over_limit) >= _OVER_LIMIT_ENTRIES:  # many addresses: drop what has expired, or everything
        now = time.monotonic()
        for stale in [k for k, until in list(_over_limit.items()) if until <= now]:
            _over_limit.pop(stale, None)
        if len(_over_limit) >= _OVER_LIMIT_ENTRIES:
            _over_limit.clear()
    _over_limit[key] = time.monotonic() + seconds


def forget_over_limit() -> None:
    """Drop what this process remembers (the Redis counters stay)."""
    _over_limit.clear()


def give_back(username: str | None, address: str | None) -> None:
    """The attempt succeeded (or never reached a password check): it does not count."""
    counters = _counters(username, address)
    if not counters:
        return
    try:
        get_redis().eval(_GIVE_BACK, len(counters), *(key for key, _ in counters))
    except (redis.RedisError, OSError) as exc:
        logger.warning("login attempt not given back, Redis did not answer: %s", exc)


def too_many(retry_after: int) -> TooManyRequests:
    return TooManyRequests(f"too many failed logins for this user name or from this address; "
                           f"try again in {retry_after} s", retry_after=retry_after)


def _http_request(request: Any) -> Any:
    return getattr(request, "_request", request)  # DRF wraps Django's request


@receiver(user_login_failed, dispatch_uid="vokaflow-login-limit-failed")
def _mark_failed(sender, credentials: dict, request: Any = None, **kwargs) -> None:
    if request is not None:
        setattr(_http_request(request), _FAILED, True)


@receiver(user_logged_in, dispatch_uid="vokaflow-login-limit-logged-in")
def _give_back_on_login(sender, request: Any = None, user: Any = None, **kwargs) -> None:
    """A session login outside the login paths gives its place back (the middleware does it on them)."""
    http_request = _http_request(request)
    place = getattr(http_request, _BACKEND_PLACE, None) if http_request is not None else None
    if place:
        give_back(*place)
        setattr(http_request, _BACKEND_PLACE, None)


class LoginLimitBackend:
    """Authenticates nobody: takes the attempt's place, and refuses before the password backends hash
    anything when the attempt is over a limit."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        http_request = _http_request(request)
        if http_request is not None and getattr(http_request, _MIDDLEWARE_PLACE, None):
            return None  # the middleware took this request's place a moment ago
        name = username if isinstance(username, str) else None
        address = client_address(http_request)
        if take_place(name, address):
            raise PermissionDenied("too many failed logins")
        if http_request is not None:
            setattr(http_request, _BACKEND_PLACE, (name, address))
        return None

    # No get_user(): sessions are never this backend's (and Django's test client, which picks the
    # first backend that has one for force_login, picks the model backend).


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
    """On the login paths: 429 with Retry-After for an attempt over a limit, before the view runs;
    the place of an attempt that did not fail is given back."""

    def __init__(self, get_response):
        self.get_response = get_response
        self.paths = frozenset(path.rstrip("/") for path in settings.VOKAFLOW_LOGIN_PATHS)
        self.checking = threading.BoundedSemaphore(max(1, settings.VOKAFLOW_LOGIN_CONCURRENCY))

    def __call__(self, request: HttpRequest):
        if request.method != "POST" or request.path_info.rstrip("/") not in self.paths:
            return self.get_response(request)
        if not self.checking.acquire(blocking=False):
            return _refusal(TooManyRequests("other logins are being checked; try again in 1 s", retry_after=1))
        try:
            return self._limited(request)
        finally:
            self.checking.release()

    def _limited(self, request: HttpRequest):
        place = (_posted_username(request), client_address(request))
        wait = take_place(*place)
        if wait:
            return _refusal(too_many(wait))
        setattr(request, _MIDDLEWARE_PLACE, place)
        response = self.get_response(request)
        if not getattr(request, _FAILED, False):
            give_back(*place)
        return response


def _refusal(error: TooManyRequests) -> JsonResponse:
    return JsonResponse(error.body(), status=error.status, headers=error.headers)

"""Lock API: acquire, extend, release and inspect vokaflow.locks over HTTP.

Inspecting needs tasks.view_locks, acquiring, extending and releasing tasks.use_locks.

An acquire that waits for a taken lock holds one of the web server's threads while it waits
(gunicorn runs 4 per process). At most VOKAFLOW_LOCK_WAITERS of them wait at once in one web
process; another acquire that would wait is answered 429 with Retry-After at once, so waiting
acquires can never take every thread (health, and everything else, keeps the rest). A client
asks again after Retry-After with the wait it has left; the ones that do wait are woken by the
release message and get the lock within milliseconds of its release.
"""

from __future__ import annotations

import threading

from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from tasks.api.serializers import json_object, validated
from tasks.permissions import LockPermission
from vokaflow import locks
from vokaflow.core.errors import TooManyRequests
from vokaflow.redis import get_redis
from vokaflow.schema import ErrorSerializer

MAX_WAIT_SECONDS = 30  # a web worker slot is not a place to wait for long
WAITERS_RETRY_AFTER = 1  # seconds: a waiting acquire answered 429 asks again this soon


class AcquireSerializer(serializers.Serializer):
    owner = serializers.CharField(max_length=200, required=False, help_text="Who holds it; default: the user name.")
    timeout = serializers.FloatField(min_value=0.001, max_value=86400, help_text="TTL in seconds.")
    wait = serializers.FloatField(
        min_value=0, max_value=MAX_WAIT_SECONDS, default=0,
        help_text="Seconds to wait for the lock if it is taken. When this server has as many acquires waiting "
                  "as it lets wait (VOKAFLOW_LOCK_WAITERS per web process), 429 with Retry-After instead: ask "
                  "again after it, with the wait that is left.")


class ExtendSerializer(serializers.Serializer):
    token = serializers.CharField(max_length=64)
    timeout = serializers.FloatField(min_value=0.001, max_value=86400)


class ReleasedSerializer(serializers.Serializer):
    key = serializers.CharField()
    released = serializers.BooleanField()


class HolderSerializer(serializers.Serializer):
    key = serializers.CharField()
    held = serializers.BooleanField()
    owner = serializers.CharField(required=False)
    acquired_at = serializers.FloatField(required=False)
    expires_at = serializers.FloatField(required=False)
    fencing_token = serializers.IntegerField(required=False)


class LeaseSerializer(serializers.Serializer):
    key = serializers.CharField()
    token = serializers.CharField()
    fencing_token = serializers.IntegerField()
    owner = serializers.CharField()
    acquired_at = serializers.FloatField()
    expires_at = serializers.FloatField()


class LockView(APIView):
    permission_classes = [LockPermission]


class _Waiters:
    """How many acquires of this web process wait for a lock now (each holds a thread meanwhile)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.waiting = 0

    def enter(self, limit: int) -> bool:
        with self._lock:
            if self.waiting >= limit:
                return False
            self.waiting += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.waiting -= 1


waiters = _Waiters()


class LockAcquireView(LockView):
    """Acquire a lock: 200 with its token and fencing token, 409 with the holder when it is taken
    (after `wait` seconds, if asked to wait). A waiting acquire beyond what this server lets wait
    at once: 429 with Retry-After and the holder; ask again then, with the wait that is left."""

    @extend_schema(request=AcquireSerializer, responses={
        200: LeaseSerializer, 409: ErrorSerializer,
        429: OpenApiResponse(ErrorSerializer, description=(
            "The lock is taken and this server already has VOKAFLOW_LOCK_WAITERS acquires waiting (per web "
            "process), or too many requests: ask again after Retry-After seconds, with the wait that is left."))})
    def post(self, request, key):
        data = validated(AcquireSerializer, request.data)
        owner, client = data.get("owner") or request.user.get_username(), get_redis()
        lease, holder, _ = locks.try_acquire(key, data["timeout"], owner=owner, client=client)
        if lease is None and data["wait"] > 0:
            if not waiters.enter(settings.VOKAFLOW_LOCK_WAITERS):
                raise TooManyRequests(f"lock {key!r} is taken and this server already has as many acquires waiting "
                                      f"as it lets wait; ask again in {WAITERS_RETRY_AFTER} s with the wait that "
                                      "is left", retry_after=WAITERS_RETRY_AFTER, key=key, holder=holder)
            try:
                lease = locks.acquire(key, data["timeout"], wait=data["wait"], owner=owner, client=client)
            finally:
                waiters.leave()
        if lease is None:
            raise locks.LockNotAcquired(key, holder)
        return Response(vars(lease))


class LockExtendView(LockView):
    """Extend a lock held with `token`: 200, or 409 when the token no longer holds it."""

    @extend_schema(request=ExtendSerializer, responses={200: LeaseSerializer, 409: ErrorSerializer})
    def post(self, request, key):
        data = validated(ExtendSerializer, request.data)
        lease = locks.extend_by_token(key, data["token"], data["timeout"], client=get_redis())
        return Response(vars(lease))


class LockReleaseView(LockView):
    """Release a lock: token in the body or ?token=. 200 released, 409 held by another, 404 free."""

    @extend_schema(parameters=[OpenApiParameter("token", str, required=True, allow_blank=False,
                                                   description='the lease token (or in a JSON body {"token": ...})')],
                   responses={200: ReleasedSerializer, 404: ErrorSerializer, 409: ErrorSerializer})
    def delete(self, request, key):
        token = json_object(request.data).get("token") or request.query_params.get("token")
        if not isinstance(token, str) or not token:
            raise ValidationError({"token": ["required: a string, in the body or as ?token="]})
        locks.release_by_token(key, str(token), client=get_redis())
        return Response({"key": key, "released": True})


class LockDetailView(LockView):
    """Who holds a lock and until when (epoch seconds); `held` is false when it is free."""

    @extend_schema(responses={200: HolderSerializer})
    def get(self, request, key):
        holder = locks.holder(key, client=get_redis())
        return Response({"key": key, "held": holder is not None, **(holder or {})})

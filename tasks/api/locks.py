"""Lock API: acquire, extend, release and inspect vokaflow.locks over HTTP.

Inspecting needs tasks.view_locks, acquiring, extending and releasing tasks.use_locks."""

from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from tasks.api.serializers import json_object, validated
from tasks.permissions import LockPermission
from vokaflow import locks
from vokaflow.redis import get_redis
from vokaflow.schema import ErrorSerializer

MAX_WAIT_SECONDS = 30  # a web worker slot is not a place to wait for long


class AcquireSerializer(serializers.Serializer):
    owner = serializers.CharField(max_length=200, required=False, help_text="Who holds it; default: the user name.")
    timeout = serializers.FloatField(min_value=0.001, max_value=86400, help_text="TTL in seconds.")
    wait = serializers.FloatField(min_value=0, max_value=MAX_WAIT_SECONDS, default=0,
                                  help_text="Seconds to wait for the lock.")


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


class LockAcquireView(LockView):
    """Acquire a lock: 200 with its token and fencing token, 409 with the holder when it is taken."""

    @extend_schema(request=AcquireSerializer, responses={200: LeaseSerializer, 409: ErrorSerializer})
    def post(self, request, key):
        data = validated(AcquireSerializer, request.data)
        lease = locks.acquire(key, data["timeout"], wait=data["wait"],
                              owner=data.get("owner") or request.user.get_username(), client=get_redis())
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

"""Limit API: list, read, create or replace, reset. Thin: tasks.limits works.

Staff with tasks.view_limits (or change) read; tasks.change_limits changes."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from tasks import limits
from tasks.api.serializers import CLOSED, given_fields
from tasks.permissions import LimitPermission


class LimitKeySerializer(serializers.Serializer):
    key = serializers.CharField()
    running = serializers.IntegerField()
    waiting = serializers.IntegerField()


class LimitSerializer(serializers.Serializer):
    name = serializers.CharField()
    rate = serializers.CharField(allow_null=True, help_text="Starts per second, minute or hour: 20/s, 100/m, 5/h.")
    concurrency = serializers.IntegerField(allow_null=True, help_text="Tasks running at once, fleet-wide.")
    per = serializers.CharField(allow_null=True, help_text="The argument whose values each get the limit.")
    source = serializers.ChoiceField(["code", "api"], help_text="api: set over the API, wins over the code.")
    tasks = serializers.ListField(child=serializers.CharField(), help_text="The tasks that use it.")
    running = serializers.IntegerField(help_text="Holding a place now (summed over keys).")
    waiting = serializers.IntegerField(help_text="Waiting for it in Redis (summed over keys).")


class LimitDetailSerializer(LimitSerializer):
    top_keys = LimitKeySerializer(many=True, help_text="Up to 20 keys, most waiting first.")


class LimitChangeSerializer(serializers.Serializer):
    openapi_extra = {**CLOSED, "anyOf": [{"required": ["rate"]}, {"required": ["concurrency"]}]}

    rate = serializers.RegexField(r"^\s*\d+(\.\d+)?\s*/\s*[smh]\s*$", required=False, allow_null=True,
                                  max_length=40, help_text="20/s, 100/m, 5/h.")
    concurrency = serializers.IntegerField(required=False, allow_null=True, min_value=1,
                                           max_value=limits.MAX_CONCURRENCY)
    per = serializers.RegexField(r"^[A-Za-z_][A-Za-z0-9_]{0,99}$", required=False, allow_null=True,
                                 help_text="Split it per value of this argument.")


class LimitListView(APIView):
    """Every limit, from the code and the API, with its figures."""

    permission_classes = [LimitPermission]

    @extend_schema(responses={200: LimitSerializer(many=True)}, operation_id="limits_list")
    def get(self, request):
        return Response([status.public() for status in limits.limit_list()])


class LimitDetailView(APIView):
    """One limit with its most waiting keys (GET); create or replace it (PUT); back to the code's
    definition (DELETE: 200 with it, or 204 when only the API had it)."""

    permission_classes = [LimitPermission]

    @extend_schema(responses={200: LimitDetailSerializer})
    def get(self, request, name):
        return Response(limits.limit_get(name=name).public(keys_too=True))

    @extend_schema(request=LimitChangeSerializer, responses={200: LimitDetailSerializer})
    def put(self, request, name):
        data = given_fields(LimitChangeSerializer, request.data)
        return Response(limits.limit_set(name=name, **data).public(keys_too=True))

    @extend_schema(responses={200: LimitDetailSerializer, 204: None})
    def delete(self, request, name):
        status = limits.limit_reset(name=name)
        return Response(status.public(keys_too=True)) if status else Response(status=204)

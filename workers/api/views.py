"""Fleet endpoints: health (open), workers status and metrics (JSON), Prometheus text."""

from hmac import compare_digest

from django.conf import settings
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from rest_framework import serializers
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from workers import status
from workers.health import health
from workers.metrics import fleet_registry


class HealthSerializer(serializers.Serializer):
    status = serializers.ChoiceField(["ok", "failing"])
    checks = serializers.DictField(child=serializers.DictField(), help_text="database, broker, workers: ok, error")


class HealthView(APIView):
    """200 when the database, the broker and at least one worker answer; 503 with the failing checks."""

    permission_classes = [AllowAny]
    authentication_classes: list[type] = []
    throttle_classes: list[type] = []

    @extend_schema(responses={200: HealthSerializer, 503: HealthSerializer})
    def get(self, request):
        report = health()
        return Response(report, status=200 if report["status"] == "ok" else 503)


def for_user(report: dict, user) -> dict:
    """Staff see where things run (Redis URL and version, hosts, worker names, pids); others do not."""
    return report if user.is_staff or user.is_superuser else status.redacted(report)


class WorkersStatusView(APIView):
    """Live workers per type (from heartbeats), Redis, partitions and this host's resources."""

    @extend_schema(responses={200: dict})
    def get(self, request):
        return Response(for_user(status.workers_status(), request.user))


class MetricsView(APIView):
    """Throughput, pending tasks by priority and queue, task outcomes, dead letters."""

    @extend_schema(responses={200: dict})
    def get(self, request):
        return Response(for_user(status.fleet_metrics(), request.user))


class MetricsScraper:
    """The principal of a request that presented VOKAFLOW_METRICS_TOKEN."""

    is_authenticated = True
    is_staff = False
    username = "metrics-scraper"


class MetricsTokenAuthentication(BaseAuthentication):
    """Prometheus scrapes with `Authorization: Bearer <VOKAFLOW_METRICS_TOKEN>` (no expiring JWT)."""

    def authenticate(self, request):
        token = settings.VOKAFLOW_METRICS_TOKEN
        if token and compare_digest(get_authorization_header(request), f"Bearer {token}".encode()):
            return MetricsScraper(), None
        return None  # let JWT or the session have a go

    def authenticate_header(self, request):
        return 'Bearer realm="vokaflow"'  # makes a missing token a 401, not a 403


class PrometheusView(APIView):
    """The same figures in Prometheus text format (metrics token, JWT or session)."""

    authentication_classes = [MetricsTokenAuthentication, *api_settings.DEFAULT_AUTHENTICATION_CLASSES]
    throttle_classes: list[type] = []

    @extend_schema(responses={(200, "text/plain"): OpenApiResponse(
        OpenApiTypes.STR, description="Prometheus text exposition format")})
    def get(self, request):
        return HttpResponse(generate_latest(fleet_registry()), content_type=CONTENT_TYPE_LATEST)

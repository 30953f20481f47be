"""Fleet endpoints."""

from drf_spectacular.utils import extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from workers.health import health


class HealthView(APIView):
    """200 when the database and the broker answer, 503 with the failing checks otherwise."""

    permission_classes = [AllowAny]
    authentication_classes = []
    throttle_classes = []

    @extend_schema(responses={200: dict, 503: dict})
    def get(self, request):
        report = health()
        return Response(report, status=200 if report["status"] == "ok" else 503)

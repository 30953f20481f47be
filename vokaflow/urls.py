from django.contrib import admin
from django.urls import include, path, re_path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView
from rest_framework_simplejwt.views import TokenObtainPairView, TokenRefreshView

from vokaflow.api_errors import api_not_found
from workers.api import queues
from workers.api.views import HealthView, MetricsView, PrometheusView, WorkersStatusView

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="console:overview"), name="home"),
    path("console/", include("console.urls")),
    path("admin/", admin.site.urls),
    re_path(r"^api/auth/token/?$", TokenObtainPairView.as_view(), name="token-obtain"),
    re_path(r"^api/auth/token/refresh/?$", TokenRefreshView.as_view(), name="token-refresh"),
    re_path(r"^api/health/?$", HealthView.as_view(), name="health"),
    re_path(r"^api/high-scale-tasks/workers/status/?$", WorkersStatusView.as_view(), name="workers-status"),
    re_path(r"^api/high-scale-tasks/metrics/?$", MetricsView.as_view(), name="fleet-metrics"),
    re_path(r"^api/high-scale-tasks/queues/?$", queues.QueueListView.as_view(), name="queue-list"),
    re_path(r"^api/high-scale-tasks/queues/pause/?$", queues.QueuePauseView.as_view(), name="queue-pause"),
    re_path(r"^api/high-scale-tasks/queues/resume/?$", queues.QueueResumeView.as_view(), name="queue-resume"),
    re_path(r"^api/high-scale-tasks/queues/(?P<name>[A-Za-z0-9_.:-]{1,200})/?$", queues.QueuePurgeView.as_view(),
            name="queue-purge"),
    path("api/high-scale-tasks/", include("tasks.api.urls")),
    path("metrics", PrometheusView.as_view(), name="prometheus"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema", template_name="api_docs/redoc.html"),
         name="api-redoc"),
    path("api-auth/", include("rest_framework.urls")),
    re_path(r"^api/", api_not_found, name="api-not-found"),  # last: any other /api/ path is a JSON 404
]
handler400 = "vokaflow.api_errors.bad_request"
handler404 = "vokaflow.api_errors.not_found"
handler500 = "vokaflow.api_errors.api_server_error"

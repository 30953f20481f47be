from django.urls import path, re_path

from console import views

app_name = "console"
TASK_ID = r"(?P<task_id>[A-Za-z0-9_.:-]{1,200})"

urlpatterns = [
    path("", views.overview, name="overview"),
    path("queues/", views.queue_list, name="queues"),
    re_path(r"^queues/(?P<action>pause|resume)/$", views.queue_level, name="queue-level"),
    re_path(r"^queues/(?P<name>[A-Za-z0-9_.:-]{1,200})/purge/$", views.queue_purge, name="queue-purge"),
    path("running/", views.running, name="running"),
    path("scheduled/", views.scheduled, name="scheduled"),
    path("schedules/", views.schedule_list, name="schedules"),
    re_path(r"^schedules/(?P<schedule_id>[0-9]{1,18})/(?P<action>enable|disable|run)/$", views.schedule_action,
            name="schedule-action"),
    path("limits/", views.limit_list, name="limits"),
    re_path(r"^limits/(?P<name>[A-Za-z0-9_.:-]{1,200})/(?P<action>change|reset)/$", views.limit_action,
            name="limit-action"),
    path("tasks/", views.task_lookup, name="lookup"),
    re_path(rf"^tasks/{TASK_ID}/$", views.task_detail, name="task"),
    re_path(rf"^tasks/{TASK_ID}/revoke/$", views.task_revoke, name="task-revoke"),
    re_path(rf"^tasks/{TASK_ID}/retry/$", views.task_retry, name="task-retry"),
    path("submit/", views.submit, name="submit"),
]

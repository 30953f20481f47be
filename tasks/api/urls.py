from django.urls import re_path

from tasks.api import dlq, limits, locks, schedules, views

# Every path answers with or without its trailing slash.
urlpatterns = [
    re_path(r"^tasks/?$", views.TaskSubmitView.as_view(), name="task-submit"),
    re_path(r"^tasks/batch/?$", views.TaskBatchView.as_view(), name="task-batch"),
    re_path(r"^tasks/catalog/?$", views.CatalogView.as_view(), name="task-catalog"),
    re_path(r"^tasks/(?P<task_id>[A-Za-z0-9_.:-]{1,200})/?$", views.TaskDetailView.as_view(), name="task-detail"),
    re_path(r"^dlq/?$", dlq.DeadLetterListView.as_view(), name="dlq-list"),
    re_path(r"^dlq/retry/?$", dlq.DeadLetterBulkRetryView.as_view(), name="dlq-bulk-retry"),
    re_path(r"^dlq/(?P<task_id>[A-Za-z0-9_.:-]{1,200})/retry/?$", dlq.DeadLetterRetryView.as_view(), name="dlq-retry"),
    re_path(r"^dlq/(?P<task_id>[A-Za-z0-9_.:-]{1,200})/?$", dlq.DeadLetterDetailView.as_view(), name="dlq-detail"),
    re_path(r"^schedules/?$", schedules.ScheduleListView.as_view(), name="schedule-list"),
    re_path(r"^schedules/(?P<schedule_id>[0-9]{1,18})/?$", schedules.ScheduleDetailView.as_view(),
            name="schedule-detail"),
    re_path(r"^schedules/(?P<schedule_id>[0-9]{1,18})/run/?$", schedules.ScheduleRunView.as_view(),
            name="schedule-run"),
    re_path(r"^limits/?$", limits.LimitListView.as_view(), name="limit-list"),
    re_path(r"^limits/(?P<name>[A-Za-z0-9_.:-]{1,200})/?$", limits.LimitDetailView.as_view(), name="limit-detail"),
    re_path(r"^lock/(?P<key>[A-Za-z0-9_.:-]{1,200})/acquire/?$", locks.LockAcquireView.as_view(), name="lock-acquire"),
    re_path(r"^lock/(?P<key>[A-Za-z0-9_.:-]{1,200})/extend/?$", locks.LockExtendView.as_view(), name="lock-extend"),
    re_path(r"^lock/(?P<key>[A-Za-z0-9_.:-]{1,200})/release/?$", locks.LockReleaseView.as_view(), name="lock-release"),
    re_path(r"^lock/(?P<key>[A-Za-z0-9_.:-]{1,200})/?$", locks.LockDetailView.as_view(), name="lock-detail"),
]

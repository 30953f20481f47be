from django.urls import re_path

from tasks.api import views

# Every path answers with or without its trailing slash.
urlpatterns = [
    re_path(r"^tasks/?$", views.TaskSubmitView.as_view(), name="task-submit"),
    re_path(r"^tasks/batch/?$", views.TaskBatchView.as_view(), name="task-batch"),
    re_path(r"^tasks/catalog/?$", views.CatalogView.as_view(), name="task-catalog"),
    re_path(r"^tasks/(?P<task_id>[A-Za-z0-9_.:-]{1,200})/?$", views.TaskDetailView.as_view(), name="task-detail"),
]

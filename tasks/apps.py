from django.apps import AppConfig


class TasksConfig(AppConfig):
    name = "tasks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # Registers the built-in tasks with the Celery app in web and worker processes alike.
        from tasks import builtin, periodic  # noqa: F401

from celery import signals
from django.apps import AppConfig
from django.db.models.signals import post_delete, post_migrate


class TasksConfig(AppConfig):
    name = "tasks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # Creates the Celery app and registers the built-in tasks with it, in web and worker
        # processes alike (the Django convention of importing the app in the project package's
        # __init__ would make `import vokaflow.locks` create it too).
        from django.conf import settings

        import vokaflow.celery  # noqa: F401
        from tasks import builtin, periodic  # noqa: F401
        from vokaflow import transport

        transport.INLINE_BYTES = settings.VOKAFLOW_INLINE_BODY_BYTES
        from tasks.messages import stamp_enqueue_time

        signals.before_task_publish.connect(stamp_enqueue_time, weak=False)
        post_migrate.connect(_sync_code_schedules, sender=self)
        post_delete.connect(_schedule_gone, sender="tasks.Schedule")


def _sync_code_schedules(sender, **kwargs):
    """The platform's own schedules exist as soon as the database does (tasks.schedules)."""
    from tasks.schedules.services import schedule_sync_code

    schedule_sync_code()



def _schedule_gone(sender, instance, **kwargs):
    """A schedule deleted by any path (a user's deletion takes theirs along) leaves the beats at once."""
    from tasks.schedules.services import announce

    announce(instance.pk)

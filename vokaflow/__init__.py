"""VokaFlow: a Django service that runs Celery tasks by priority and worker type."""

from .celery import app as celery_app

__all__ = ("celery_app",)

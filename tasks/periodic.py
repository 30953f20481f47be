"""Periodic maintenance tasks, run by Celery beat (see beat_schedule in vokaflow.celery)."""

from tasks.base import platform_task
from vokaflow.core.priorities import Priority


@platform_task("vokaflow.dlq_flush", priority=Priority.HIGH, max_retries=0)
def dlq_flush():
    """Moves dead letters that waited in Redis (database was down) into the table."""
    from tasks.dlq import dead_letter_flush_pending

    return dead_letter_flush_pending()


@platform_task("vokaflow.dlq_prune", priority=Priority.MAINTENANCE, max_retries=0)
def dlq_prune():
    """Keeps the newest VOKAFLOW_DLQ_RETENTION dead letters per worker type."""
    from tasks.dlq import dead_letter_prune

    return dead_letter_prune()

"""DeadLetter: a task that failed for good, kept for operators to inspect, retry or discard."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class DeadLetterQuerySet(models.QuerySet):
    def matching(self, *, task: str | None = None, worker_type: str | None = None, priority: str | None = None,
                 status: str | None = None, since=None, until=None, q: str | None = None,
                 task_ids: list[str] | None = None) -> DeadLetterQuerySet:
        """The filters of the API and the admin; None means no filter."""
        qs = self
        if task_ids is not None:
            qs = qs.filter(task_id__in=task_ids)
        if task:
            qs = qs.filter(task_name=task)
        if worker_type:
            qs = qs.filter(worker_type=worker_type)
        if priority:
            qs = qs.filter(priority=priority)
        if status:
            qs = qs.filter(status=status)
        if since:
            qs = qs.filter(dlq_timestamp__gte=since)
        if until:
            qs = qs.filter(dlq_timestamp__lt=until)
        if q:
            qs = qs.filter(Q(error__icontains=q) | Q(exception_type__icontains=q))
        return qs

    def newest_first(self) -> DeadLetterQuerySet:
        return self.order_by("-dlq_timestamp", "-id")


class DeadLetter(models.Model):
    class Status(models.TextChoices):
        DEAD = "dead"
        RETRIED = "retried"
        RESOLVED = "resolved"
        DISCARDED = "discarded"

    class Reason(models.TextChoices):
        RETRIES_EXHAUSTED = "retries_exhausted"
        NOT_RETRIED = "not_retried"
        TIME_LIMIT = "time_limit"
        POISON = "poison"

    task_id = models.CharField(max_length=255, unique=True)
    task_name = models.CharField(max_length=255)
    args = models.JSONField(default=list)
    kwargs = models.JSONField(default=dict)
    worker_type = models.CharField(max_length=32)
    priority = models.CharField(max_length=16)
    partition = models.PositiveSmallIntegerField(null=True)
    queue = models.CharField(max_length=100, blank=True)
    reason = models.CharField(max_length=32, choices=Reason.choices)
    exception_type = models.CharField(max_length=255, blank=True)
    error = models.TextField(blank=True)
    traceback = models.TextField(blank=True)
    total_retries = models.PositiveIntegerField(default=0)
    first_submitted_at = models.DateTimeField(null=True)
    dlq_timestamp = models.DateTimeField()
    hostname = models.CharField(max_length=255, blank=True)
    worker = models.CharField(max_length=255, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.DEAD)
    retried_task_id = models.CharField(max_length=255, blank=True, help_text="The task a retry produced.")
    retried_from = models.CharField(max_length=255, blank=True,
                                    help_text="The dead letter whose retry this task was.")
    # The user who submitted the task: a retry's task is theirs again (they see it, as before).
    # No database constraint: a worker may record a dead letter of a user deleted meanwhile.
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                              db_constraint=False, related_name="+",
                              help_text="The user who submitted the task; empty: the system (Python API).")
    # The schedule whose occurrence this task was (tasks.schedules); no constraint, as for owner.
    schedule = models.ForeignKey("Schedule", null=True, blank=True, on_delete=models.SET_NULL, db_constraint=False,
                                 related_name="+", help_text="The schedule whose occurrence the task was.")
    updated_at = models.DateTimeField(auto_now=True)

    objects = DeadLetterQuerySet.as_manager()

    class Meta:
        ordering = ["-dlq_timestamp", "-id"]
        indexes = [
            models.Index(fields=["-dlq_timestamp", "-id"], name="dlq_newest_idx"),
            models.Index(fields=["status", "-dlq_timestamp"], name="dlq_status_idx"),
            models.Index(fields=["worker_type", "-dlq_timestamp"], name="dlq_type_idx"),
            models.Index(fields=["task_name", "-dlq_timestamp"], name="dlq_task_idx"),
            models.Index(fields=["priority", "-dlq_timestamp"], name="dlq_priority_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.task_name}[{self.task_id}] {self.status}"

    @property
    def error_summary(self) -> str:
        first = (self.error or "").splitlines()[0] if self.error else ""
        return first[:120] + ("…" if len(first) > 120 else "")


class Limit(models.Model):
    """No table (limits live in Redis, tasks.limits): this model carries the limit API's permissions."""

    class Meta:
        managed = False
        default_permissions = ()
        permissions = [
            ("view_limits", "Can see the fleet-wide limits and their figures"),
            ("change_limits", "Can change or reset a fleet-wide limit"),
        ]


class Lock(models.Model):
    """No table (locks live in Redis, vokaflow.locks): this model carries the lock API's permissions."""

    class Meta:
        managed = False
        default_permissions = ()
        permissions = [
            ("view_locks", "Can see who holds a distributed lock"),
            ("use_locks", "Can acquire, extend and release distributed locks"),
        ]


class Schedule(models.Model):
    """A recurring task: every `every` seconds from an anchor, or by `cron` in `timezone`.

    Beats (tasks.schedules.beat) enqueue each occurrence exactly once; what they did lives in
    Redis (tasks.schedules.runs), so a beat needs no database to keep running."""

    class Overlap(models.TextChoices):
        ALLOW = "allow"
        SKIP = "skip"  # while the previous occurrence's task has not finished

    class Missed(models.TextChoices):
        RUN_ONCE = "run_once"  # occurrences missed while no beat ran: one run stands for them all
        SKIP = "skip"

    class Source(models.TextChoices):
        CODE = "code"  # declared by the platform (read-only)
        API = "api"

    name = models.CharField(max_length=200, unique=True)
    task = models.CharField(max_length=200)
    args = models.JSONField(default=list, blank=True)
    kwargs = models.JSONField(default=dict, blank=True)
    priority = models.CharField(max_length=16, blank=True, help_text="Empty: the task's default.")
    worker_type = models.CharField(max_length=32, blank=True, help_text="Empty: the task's default.")
    partition_key = models.CharField(max_length=200, null=True, blank=True)
    # A deleted user's schedules go with them: run as the system, they would escape the user's quota.
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE,
                              db_constraint=False, related_name="+",
                              help_text="Who made it: its tasks are theirs. Empty: the system.")
    every = models.PositiveIntegerField(null=True, blank=True, help_text="Seconds between occurrences.")
    cron = models.CharField(max_length=200, blank=True, help_text="Five fields: minute hour day month weekday.")
    timezone = models.CharField(max_length=64, default="UTC")
    start_at = models.DateTimeField(null=True, blank=True)
    end_at = models.DateTimeField(null=True, blank=True)
    enabled = models.BooleanField(default=True)
    overlap = models.CharField(max_length=8, choices=Overlap.choices, default=Overlap.ALLOW)
    missed = models.CharField(max_length=8, choices=Missed.choices, default=Missed.RUN_ONCE)
    source = models.CharField(max_length=8, choices=Source.choices, default=Source.API, editable=False)
    # Occurrences due before this instant never run: set when made, enabled again or re-timed.
    active_since = models.DateTimeField(editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        indexes = [models.Index(fields=["updated_at"], name="schedule_updated_idx")]

    def __str__(self) -> str:
        return self.name

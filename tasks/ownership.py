"""Who may see a task: its owner (the user who submitted it) and staff.

A task submitted through the Python API has no owner (the system): only staff see it. Callers
that are not a request (the Python API, beat, workers) pass no user and see every task.
"""

from __future__ import annotations

from typing import Any

from tasks.records import Submission


def owner_id(user: Any) -> int | None:
    """The id stored as a submission's owner: the authenticated user's, else the system's (None)."""
    return user.pk if user is not None and getattr(user, "is_authenticated", False) else None


def sees_every_task(user: Any) -> bool:
    return user is None or bool(getattr(user, "is_staff", False) or getattr(user, "is_superuser", False))


def may_see(user: Any, record: Submission | None) -> bool:
    """True when `user` may read or revoke the task of `record` (None: no record, staff only)."""
    if sees_every_task(user):
        return True
    return record is not None and record.owner is not None and record.owner == owner_id(user)

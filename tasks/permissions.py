"""Who may use the dead-letter and lock APIs: Django's model permissions (superusers have all).

Reading needs the view permission (or the change one, as in Django's admin); anything that
changes state needs the change permission. Anonymous requests are 401, authenticated users
without the permission 403.
"""

from __future__ import annotations

from rest_framework.permissions import SAFE_METHODS, BasePermission

VIEW_DEAD_LETTERS = "tasks.view_deadletter"
CHANGE_DEAD_LETTERS = "tasks.change_deadletter"  # retry and discard, in the API and the admin
VIEW_LOCKS = "tasks.view_locks"
USE_LOCKS = "tasks.use_locks"  # acquire, extend, release
VIEW_LIMITS = "tasks.view_limits"
CHANGE_LIMITS = "tasks.change_limits"  # PUT and DELETE limits/{name}


class ReadOrChangePermission(BasePermission):
    """GET/HEAD/OPTIONS need `view_perm` or `change_perm`; every other method needs `change_perm`."""

    view_perm: str
    change_perm: str

    def has_permission(self, request, view) -> bool:
        user = request.user
        if not (user and user.is_authenticated):
            return False
        if request.method in SAFE_METHODS:
            return user.has_perm(self.view_perm) or user.has_perm(self.change_perm)
        return user.has_perm(self.change_perm)


class DeadLetterPermission(ReadOrChangePermission):
    view_perm, change_perm = VIEW_DEAD_LETTERS, CHANGE_DEAD_LETTERS


class LockPermission(ReadOrChangePermission):
    view_perm, change_perm = VIEW_LOCKS, USE_LOCKS


class LimitPermission(ReadOrChangePermission):
    """Staff only, with Django's permissions (superusers have them)."""

    view_perm, change_perm = VIEW_LIMITS, CHANGE_LIMITS

    def has_permission(self, request, view) -> bool:
        return bool(getattr(request.user, "is_staff", False)) and super().has_permission(request, view)

"""Arguments a task declares bounds for (`platform_task(bounds={...})`), checked at submission."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

from celery import Task


def check_arguments(task: Task, args: list | tuple, kwargs: dict, error: Callable[..., Exception]) -> None:
    """Raise error(field, message) when the arguments do not fit the task's signature, or a bounded
    argument is not a number within its range. Tasks without bounds are not inspected."""
    bounds = getattr(task, "argument_bounds", None)
    if not bounds:
        return
    signature = inspect.signature(task.run)
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise error("args" if args else "kwargs", f"do not match {task.name}{signature}: {exc}") from None
    positional = list(signature.parameters)[:len(args)]
    for name, (low, high) in bounds.items():
        if name not in bound.arguments:
            continue  # the default applies
        value = bound.arguments[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not low <= value <= high:
            raise error("args" if name in positional else "kwargs",
                        f"argument {name!r} must be a number from {low:g} to {high:g}, got {value!r}")

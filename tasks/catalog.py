"""The submittable-task allow-list: only these run by name from outside."""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from celery import Task

from vokaflow.celery import app


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    description: str
    worker_type: str
    priority: str
    max_retries: int | None
    soft_time_limit: float | None
    time_limit: float | None
    arguments: list[dict]


class UnknownTask(LookupError):
    def __init__(self, name):
        self.name = name
        super().__init__(f"unknown task {name!r}; submittable tasks: {', '.join(submittable_names())}")


def submittable_tasks() -> list[Task]:
    return sorted((t for t in app.tasks.values() if getattr(t, "submittable", False)),
                  key=lambda t: t.name)


def submittable_names() -> list[str]:
    return [t.name for t in submittable_tasks()]


def resolve(name: str) -> Task:
    """The task registered under `name`, if it is on the allow-list; UnknownTask otherwise."""
    task = app.tasks.get(name) if isinstance(name, str) else None
    if task is None or not getattr(task, "submittable", False):
        raise UnknownTask(name)
    return task


def catalog() -> list[CatalogEntry]:
    return [_entry(t) for t in submittable_tasks()]


def _entry(task: Task) -> CatalogEntry:
    return CatalogEntry(
        name=task.name, description=task.description,
        worker_type=task.worker_type.value, priority=task.default_priority.name,
        max_retries=task.max_retries, soft_time_limit=task.soft_time_limit,
        time_limit=task.time_limit, arguments=_argument_hints(task.run, getattr(task, "argument_bounds", {})),
    )


def _argument_hints(fun, bounds: dict) -> list[dict]:
    hints = []
    for param in inspect.signature(fun).parameters.values():
        if param.name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        hint = {"name": param.name, "required": param.default is param.empty}
        if param.annotation is not param.empty:
            hint["type"] = getattr(param.annotation, "__name__", str(param.annotation))
        if param.default is not param.empty:
            hint["default"] = param.default
        if param.name in bounds:
            hint["min"], hint["max"] = bounds[param.name]
        hints.append(hint)
    return hints

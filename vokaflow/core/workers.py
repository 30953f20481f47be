"""Worker types and their pools: which pool and how many slots each type runs with."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum


class WorkerType(StrEnum):
    CPU_INTENSIVE = "CPU_INTENSIVE"
    IO_INTENSIVE = "IO_INTENSIVE"
    MEMORY_INTENSIVE = "MEMORY_INTENSIVE"
    NETWORK_INTENSIVE = "NETWORK_INTENSIVE"
    GENERAL_PURPOSE = "GENERAL_PURPOSE"

    @property
    def short(self) -> str:
        """The short name used in queue names, worker names and commands (cpu, io, ...)."""
        return _SHORT[self]

    @classmethod
    def parse(cls, value: str | WorkerType, *, strict: bool = False) -> WorkerType:
        """Accept the full name or the short one, any case; raise ValueError naming the choices.
        `strict` (the HTTP API): the exact upper-case name only, as the schema's enum says."""
        if isinstance(value, WorkerType):
            return value
        if strict:
            if isinstance(value, str) and value in cls.__members__:
                return cls[value]
        elif isinstance(value, str):
            key = value.strip().upper()
            if key in cls.__members__:
                return cls[key]
            for member, short in _SHORT.items():
                if short == value.strip().lower():
                    return member
        choices = ", ".join(f"{m.value} ({m.short})" for m in cls)
        raise ValueError(f"unknown worker type {value!r}; choose one of {choices}")


_SHORT = {
    WorkerType.CPU_INTENSIVE: "cpu",
    WorkerType.IO_INTENSIVE: "io",
    WorkerType.MEMORY_INTENSIVE: "memory",
    WorkerType.NETWORK_INTENSIVE: "network",
    WorkerType.GENERAL_PURPOSE: "general",
}

DEFAULT_WORKER_TYPE = WorkerType.GENERAL_PURPOSE


@dataclass(frozen=True)
class WorkerProfile:
    worker_type: WorkerType
    pool: str  # a Celery pool name: "prefork", "threads" or "solo" (one process a slot, see workers.host)
    concurrency: int


# CPU-bound work needs processes to escape the GIL; everything that mostly waits runs in
# threads, which start fast, share one broker connection and cost little memory.
_POOLS = {
    WorkerType.CPU_INTENSIVE: ("prefork", lambda n: max(1, n // 2)),
    WorkerType.IO_INTENSIVE: ("threads", lambda n: n),
    WorkerType.MEMORY_INTENSIVE: ("threads", lambda n: max(1, n // 4)),
    WorkerType.NETWORK_INTENSIVE: ("threads", lambda n: n),
    WorkerType.GENERAL_PURPOSE: ("threads", lambda n: max(2, n // 2)),
}


def concurrency_env_var(worker_type: WorkerType) -> str:
    return f"VOKAFLOW_CONCURRENCY_{worker_type.short.upper()}"


def pool_env_var(worker_type: WorkerType) -> str:
    return f"VOKAFLOW_POOL_{worker_type.short.upper()}"


POOLS = ("threads", "prefork", "solo")


def worker_profile(worker_type: WorkerType | str, cpu_count: int | None = None,
                   environ: Mapping[str, str] | None = None) -> WorkerProfile:
    """Pool and concurrency for a type on this host; VOKAFLOW_CONCURRENCY_<TYPE> overrides."""
    worker_type = WorkerType.parse(worker_type)
    environ = os.environ if environ is None else environ
    n = cpu_count or os.cpu_count() or 1
    pool, default = _POOLS[worker_type]
    chosen = environ.get(pool_env_var(worker_type), "").strip().lower()
    if chosen:
        if chosen not in POOLS:
            raise ValueError(f"{pool_env_var(worker_type)}={chosen!r}: choose one of {', '.join(POOLS)}")
        pool = chosen
    override = environ.get(concurrency_env_var(worker_type), "").strip()
    if override:
        try:
            concurrency = int(override)
        except ValueError:
            raise ValueError(f"{concurrency_env_var(worker_type)}={override!r} is not a whole number") from None
        if concurrency < 1:
            raise ValueError(f"{concurrency_env_var(worker_type)} must be at least 1, got {concurrency}")
    else:
        concurrency = default(n)
    return WorkerProfile(worker_type, pool, concurrency)


def worker_argv(worker_type: WorkerType | str, partitions: str | None = None, *,
                loglevel: str = "INFO", extra: list[str] | None = None, banner: bool = True) -> list[str]:
    """The plain `celery worker` command line for one type on this host; `banner=False` adds
    Celery's --quiet (no startup banner, which lists all 64 queues)."""
    profile = worker_profile(worker_type)
    short = profile.worker_type.short
    argv = ["celery", "-A", "vokaflow", *([] if banner else ["--quiet"]), "worker", "--type", short]
    if partitions:
        argv += ["--partitions", partitions]
    # A solo worker is one slot; the type's concurrency is its number of processes (workers.host).
    argv += ["-P", profile.pool, "-c", "1" if profile.pool == "solo" else str(profile.concurrency),
             "-n", f"{short}@%h", "-l", loglevel]
    return argv + list(extra or [])

"""The eight task priorities, highest first (lower value = more urgent)."""

from enum import IntEnum


class Priority(IntEnum):
    EMERGENCY = 0
    CRITICAL = 1
    HIGH = 2
    NORMAL = 3
    LOW = 4
    BACKGROUND = 5
    BATCH = 6
    MAINTENANCE = 7

    @classmethod
    def parse(cls, value: "str | int | Priority", *, strict: bool = False) -> "Priority":
        """Accept a name (any case), a value or a member; raise ValueError naming the choices.
        `strict` (the HTTP API): the exact upper-case name only, as the schema's enum says."""
        if isinstance(value, Priority):
            return value
        if strict:
            if isinstance(value, str) and value in cls.__members__:
                return cls[value]
        elif isinstance(value, str):
            try:
                return cls[value.strip().upper()]
            except KeyError:
                pass
        elif isinstance(value, int) and not isinstance(value, bool):
            try:
                return cls(value)
            except ValueError:
                pass
        raise ValueError(f"unknown priority {value!r}; choose one of {', '.join(cls.__members__)}")


DEFAULT_PRIORITY = Priority.NORMAL

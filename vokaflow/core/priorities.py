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
    def parse(cls, value: "str | int | Priority") -> "Priority":
        """Accept a name (any case), a value or a member; raise ValueError naming the choices."""
        if isinstance(value, Priority):
            return value
        if isinstance(value, str):
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

"""When a schedule's occurrences fall due: anchored intervals and five-field cron in a time zone.

Pure functions of their arguments (no clock is read here), so every beat computes the same due
times and the tests can move time as they like.

Cron is Vixie cron's five fields (minute hour day-of-month month day-of-week): `*`, numbers,
ranges `a-b`, steps `*/n` and `a-b/n`, lists `a,b`, month and day names (`jan`, `mon`), 0 or 7
for Sunday; when both day fields are restricted a day matching either fires. Local times follow
the schedule's IANA time zone, with two rules for daylight saving:
- a local time that does not exist (clocks jump over it) fires at the first valid instant after
  it, the moment the clocks jumped (so `30 2 * * *` on the spring-forward night fires at 03:00);
- a local time that happens twice (clocks go back) fires once, at its first occurrence.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

NAMES = {
    3: {n: i for i, n in enumerate(["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov",
                                     "dec"], start=1)},
    4: {n: i for i, n in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])},
}
BOUNDS = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
FIELD_NAMES = ["minute", "hour", "day of month", "month", "day of week"]
# How far ahead a cron is searched for its next firing: long enough for 29 February of a leap
# year (at most 8 years apart, 2096 → 2104); a cron that does not fire within it never fires.
HORIZON_DAYS = 366 * 9


class RecurrenceError(ValueError):
    """A cron expression or time zone that cannot be used; the message says why."""


# Names the system's zone files hold that are no IANA zone of their own: the host's local time
# ("localtime") differs between hosts, and every beat must compute the same due times.
NOT_ZONES = {"localtime", "posixrules", "Factory"}


def zone(name: str) -> ZoneInfo:
    if not isinstance(name, str) or name in NOT_ZONES or name.startswith(("posix/", "right/")):
        raise RecurrenceError(f"unknown time zone {name!r}: use an IANA name such as 'UTC' or 'Europe/Paris'")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError, OSError):
        raise RecurrenceError(f"unknown time zone {name!r}: use an IANA name such as 'UTC' or 'Europe/Paris'") from None


@dataclass(frozen=True)
class Cron:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool  # day of month was `*`
    any_weekday: bool  # day of week was `*`

    def day_matches(self, day: date) -> bool:
        if day.month not in self.months:
            return False
        by_day, by_weekday = day.day in self.days, (day.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return by_day and by_weekday
        return by_day or by_weekday


def parse_cron(text: str) -> Cron:
    """Parse five fields; RecurrenceError names the field that is wrong."""
    if not isinstance(text, str):
        raise RecurrenceError("must be a string of five fields")
    parts = text.split()
    if len(parts) != 5:
        raise RecurrenceError(f"five fields (minute hour day-of-month month day-of-week), got {len(parts)}")
    sets = [_field(part, i) for i, part in enumerate(parts)]
    weekdays = frozenset(d % 7 for d in sets[4])
    # As Vixie cron: a day field that starts with `*` (`*`, `*/2`) does not restrict the day, so the
    # other day field alone decides.
    return Cron(frozenset(sets[0]), frozenset(sets[1]), frozenset(sets[2]), frozenset(sets[3]), weekdays,
                any_day=parts[2].startswith("*"), any_weekday=parts[4].startswith("*"))


def _field(part: str, index: int) -> set[int]:
    low, high = BOUNDS[index]
    names = NAMES.get(index, {})
    where = FIELD_NAMES[index]

    def number(token: str) -> int:
        plain = token.isascii() and token.isdigit()  # "²" and "١" are digits to str.isdigit, not to cron
        value = names.get(token.lower()) if token.isascii() and token.isalpha() else (int(token) if plain else None)
        if value is None or not low <= value <= high:
            raise RecurrenceError(f"{where}: {token!r} is not a value from {low} to {high}")
        return value

    values: set[int] = set()
    for item in part.split(","):
        spec, _, step_text = item.partition("/")
        if _ and not (step_text.isascii() and step_text.isdigit() and int(step_text) >= 1):
            raise RecurrenceError(f"{where}: step {step_text!r} must be a whole number of 1 or more")
        step = int(step_text) if _ else 1
        if spec == "*":
            first, last = low, high
        elif "-" in spec:
            a, _, b = spec.partition("-")
            first, last = number(a), number(b)
            if first > last:
                raise RecurrenceError(f"{where}: range {spec!r} runs backwards")
        else:
            first = number(spec)
            last = high if _ else first
        values.update(range(first, last + 1, step))
    if index == 4 and 7 in values:
        values.add(0)
    return values


def local_instant(naive: datetime, tz: ZoneInfo) -> datetime:
    """The UTC instant of a local wall-clock time, by the two daylight-saving rules above."""
    first = naive.replace(tzinfo=tz, fold=0)
    instant = first.astimezone(UTC)
    if instant.astimezone(tz).replace(tzinfo=None) == naive:
        return instant  # exists (fold=0 is its first occurrence when it happens twice)
    # In a gap: fold=0 reads it with the offset before the jump, fold=1 with the one after; the
    # jump itself lies between the two readings.
    early = naive.replace(tzinfo=tz, fold=1).astimezone(UTC)
    late = instant
    early, late = min(early, late), max(early, late)
    while late - early > timedelta(seconds=1):
        middle = early + (late - early) / 2
        if middle.astimezone(tz).utcoffset() == early.astimezone(tz).utcoffset():
            early = middle
        else:
            late = middle
    return late.replace(microsecond=0)


# Where the clocks went back within this long before `after`, local wall-clock times up to this
# much earlier than `after`'s own can still be instants after it; elsewhere none can.
SLACK = timedelta(hours=3)


def next_cron(cron: Cron, tz: ZoneInfo, after: datetime) -> datetime | None:
    """The first firing strictly after `after` (aware), as a UTC instant; None if it never fires."""
    local = after.astimezone(tz)
    floor = local.replace(tzinfo=None)
    if (after - SLACK).astimezone(tz).utcoffset() != local.utcoffset():
        floor -= SLACK
    hours, minutes = sorted(cron.hours), sorted(cron.minutes)
    for offset in range(HORIZON_DAYS):
        try:
            day = floor.date() + timedelta(days=offset)
        except OverflowError:
            return None
        if not cron.day_matches(day):
            continue
        for hour in hours:
            if offset == 0 and hour < floor.hour:
                continue
            for minute in minutes:
                naive = datetime.combine(day, time(hour, minute))
                if naive < floor:
                    continue
                try:
                    instant = local_instant(naive, tz)
                except OverflowError:  # past the calendar's end (year 9999)
                    return None
                if instant > after:
                    return instant
    return None


def next_every(every: int, anchor: datetime, after: datetime) -> datetime:
    """The first anchor + n × every (n ≥ 0) strictly after `after`."""
    if after < anchor:
        return anchor
    steps = int((after - anchor).total_seconds() // every) + 1
    return anchor + timedelta(seconds=steps * every)


def due_between(next_due, after: datetime, until: datetime, limit: int) -> list[datetime]:
    """Due times in (after, until], at most `limit` of them (the latest ones), by `next_due(after)`."""
    found: list[datetime] = []
    current = next_due(after)
    while current is not None and current <= until:
        found.append(current)
        if len(found) > limit:
            found.pop(0)
        current = next_due(current)
    return found


def utc(value: datetime) -> datetime:
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)

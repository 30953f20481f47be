"""Short human forms of durations and counts for the console."""

from __future__ import annotations

import time
from datetime import datetime

from django import template

register = template.Library()


@register.filter
def duration(seconds) -> str:
    """42 → "42s", 125 → "2m 5s", 7300 → "2h 1m", 200000 → "2d 7h"; None → "—"."""
    if seconds is None or seconds == "":
        return "—"
    seconds = max(0, int(float(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60}s"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600}h"


@register.filter
def ago(value) -> str:
    """Seconds since a datetime or an epoch, as a duration."""
    if value is None:
        return "—"
    epoch = value.timestamp() if isinstance(value, datetime) else float(value)
    return duration(time.time() - epoch)


@register.filter
def until(value) -> str:
    if value is None:
        return "—"
    return duration(value.timestamp() - time.time())


@register.filter
def count(value) -> str:
    """12345 → "12,345"; 0 → "·" is left to the template."""
    return f"{int(value):,}"

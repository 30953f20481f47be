"""Bar charts drawn server-side as inline SVG: no chart library, nothing fetched by the browser.
Built as one string (a template loop over a thousand numbers cost ~10× more, measured in
bench/console_pages.py)."""

from __future__ import annotations

from datetime import UTC, datetime

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT = 600, 120


def bars(history: list[dict], bucket: int) -> dict:
    """`history` (completed/failed per bucket of `bucket` seconds, oldest first) as one bar per
    bucket, in tasks per minute; each bar stacks failures (red) on completions."""
    per_minute = 60 / bucket
    rates = [(b["completed"] * per_minute, b["failed"] * per_minute, b["start"]) for b in history]
    top = max((c + f for c, f, _ in rates), default=0) or 1
    completed, failed = sum(b["completed"] for b in history), sum(b["failed"] for b in history)
    return {
        "svg": _svg(rates, top, f"{completed} done, {failed} failed"), "top": _rounded(top),
        "start": _clock(history[0]["start"]) if history else "",
        "end": _clock(history[-1]["start"] + bucket) if history else "",
        "completed": completed, "failed": failed,
    }


def _svg(rates: list[tuple[float, float, int]], top: float, label: str) -> SafeString:
    step = WIDTH / max(len(rates), 1)
    width = max(step - 1, 0.5)
    parts = [f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" preserveAspectRatio="none" role="img" '
             f'aria-label="{escape(label)}"><line x1="0" y1="{HEIGHT}" x2="{WIDTH}" y2="{HEIGHT}" class="rule"/>']
    for i, (done, fail, minute) in enumerate(rates):
        done_h, fail_h = done / top * HEIGHT, fail / top * HEIGHT
        x = i * step
        parts.append(f"<g><title>{_clock(minute)}: {done:.0f} done, {fail:.0f} failed per minute</title>")
        if done_h:
            parts.append(f'<rect class="done" x="{x:.1f}" y="{HEIGHT - done_h:.1f}" width="{width:.1f}" '
                         f'height="{done_h:.1f}"/>')
        if fail_h:
            parts.append(f'<rect class="fail" x="{x:.1f}" y="{HEIGHT - done_h - fail_h:.1f}" width="{width:.1f}" '
                         f'height="{fail_h:.1f}"/>')
        parts.append("</g>")
    parts.append("</svg>")
    return mark_safe("".join(parts))  # numbers and clock times only, the label escaped


def _clock(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%H:%M")


def _rounded(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"

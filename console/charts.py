"""Bar charts as plain numbers for an inline SVG (the template draws the rectangles): no chart
library, nothing fetched by the browser."""

from __future__ import annotations

from datetime import UTC, datetime

WIDTH, HEIGHT = 600, 120


def bars(history: list[dict], per: int = 1) -> dict:
    """`history` (per-minute completed/failed, oldest first) in bars of `per` minutes each, as
    tasks per minute; each bar stacks failures (red) on completions."""
    groups = [history[i:i + per] for i in range(0, len(history), per)]
    rates = [(sum(m["completed"] for m in g) / len(g), sum(m["failed"] for m in g) / len(g), g[0]["minute"])
             for g in groups if g]
    top = max((c + f for c, f, _ in rates), default=0) or 1
    step = WIDTH / max(len(rates), 1)
    drawn = []
    for i, (completed, failed, minute) in enumerate(rates):
        done_h = completed / top * HEIGHT
        fail_h = failed / top * HEIGHT
        drawn.append({
            "x": round(i * step, 2), "w": round(max(step - 1, 0.5), 2),
            "done_y": round(HEIGHT - done_h, 2), "done_h": round(done_h, 2),
            "fail_y": round(HEIGHT - done_h - fail_h, 2), "fail_h": round(fail_h, 2),
            "title": f"{_clock(minute)}: {completed:.0f} done, {failed:.0f} failed per minute",
        })
    return {
        "bars": drawn, "width": WIDTH, "height": HEIGHT, "top": _rounded(top),
        "start": _clock(history[0]["minute"]) if history else "",
        "end": _clock(history[-1]["minute"]) if history else "",
        "completed": sum(m["completed"] for m in history), "failed": sum(m["failed"] for m in history),
    }


def _clock(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%H:%M")


def _rounded(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"

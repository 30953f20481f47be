"""The long tables (hundreds of queues, running or scheduled tasks) rendered as one string.

Django's template engine resolved ~17,000 variables for 320 queue rows: 70 % of the page's time
(bench/console_pages.py, profiled). These functions write the same markup directly; every value is
escaped."""

from __future__ import annotations

import time

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from console.templatetags.console_format import duration


def queue_rows(queues, queues_base: str) -> SafeString:
    rows = []
    for q in queues:
        name = escape(q.name)
        paused = ' class="paused"' if q.paused else ""
        tag = '<span class="tag">paused</span>' if q.paused else ""
        rows.append(
            f'<tr data-queue="{name}"{paused}><td><code>{name}</code></td><td>{q.worker_type}</td>'
            f'<td>{q.priority}</td><td class="num">{q.partition}</td><td class="num depth">{q.depth:,}</td>'
            f'<td class="num">{duration(q.oldest_age_seconds)}</td><td>{tag}</td>'
            f'<td class="actions"><a class="button small danger" href="{queues_base}{name}/purge/">Purge…</a>'
            '</td></tr>')
    return mark_safe("".join(rows))


def running_rows(tasks: list[dict], task_base: str, csrf_token: str) -> SafeString:
    rows = []
    for t in tasks:
        task_id = escape(t["id"])
        short = escape(t["id"][:13] + "…" if len(t["id"]) > 14 else t["id"])
        rows.append(
            f'<tr data-task="{task_id}"><td><a href="{task_base}{task_id}/"><code>{short}</code></a></td>'
            f'<td>{escape(t["name"])}</td><td class="args"><code>{escape(t["args"])}</code></td>'
            f'<td><code>{escape(t["queue"] or "")}</code></td>'
            f'<td>{escape(t["worker"])} <small class="muted">{escape(t["pool"])}</small></td>'
            f'<td>{t["started_clock"]}</td><td class="num">{duration(t["running_for"])}</td>'
            f'<td class="actions"><form method="post" action="{task_base}{task_id}/revoke/">'
            f'<input type="hidden" name="csrfmiddlewaretoken" value="{escape(csrf_token)}">'
            f'<input type="hidden" name="next" value="{task_base}{task_id}/">'
            f'<button class="small danger">Stop</button></form></td></tr>')
    return mark_safe("".join(rows))


def scheduled_rows(tasks, task_base: str) -> SafeString:
    now = time.time()
    rows = []
    for t in tasks:
        task_id = escape(t.task_id)
        short = escape(t.task_id[:13] + "…" if len(t.task_id) > 14 else t.task_id)
        rows.append(
            f'<tr data-task="{task_id}"><td><a href="{task_base}{task_id}/"><code>{short}</code></a></td>'
            f'<td>{escape(t.name)}</td><td class="args"><code>{escape(t.args)}</code></td>'
            f'<td><code>{escape(t.queue)}</code></td><td>{t.eta:%Y-%m-%d %H:%M:%S}</td>'
            f'<td class="num">{duration(t.eta.timestamp() - now)}</td><td class="num">{int(t.retries)}</td></tr>')
    return mark_safe("".join(rows))

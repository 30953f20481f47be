"""The submit form: generated from the catalog's argument hints, validated by tasks.submit."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from typing import Any

from django import forms

from tasks import catalog
from vokaflow.core.priorities import Priority
from vokaflow.core.workers import WorkerType

ARGUMENT_PREFIX = "arg_"
_PARSERS: dict[str, Callable[[str], Any]] = {
    "int": int, "float": float, "str": str, "bool": lambda v: v.lower() in ("1", "true", "yes", "on")}


class SubmitForm(forms.Form):
    """Task, its arguments, and routing. Priority and worker type are free fields checked by
    tasks.submit.prepare_payload, so the form says exactly what the API would."""

    task = forms.ChoiceField()
    priority = forms.CharField(required=False, widget=forms.Select)
    worker_type = forms.CharField(required=False, widget=forms.Select)
    partition_key = forms.CharField(required=False, help_text="Tasks with one key always share a partition.")
    countdown = forms.FloatField(required=False, help_text="Seconds to wait before it runs.")

    def __init__(self, *args, entries: list[catalog.CatalogEntry], entry: catalog.CatalogEntry, **kwargs):
        super().__init__(*args, **kwargs)
        self.entry = entry
        self.accepts_more = accepts_more_arguments(entry.name)
        self.fields["task"].choices = [(e.name, e.name) for e in entries]
        self.fields["task"].widget.attrs["data-choose"] = "1"  # console.js reloads the form for that task
        self.fields["priority"].widget.choices = [("", f"task default ({entry.priority})")] + \
            [(p.name, p.name) for p in Priority]
        self.fields["worker_type"].widget.choices = [("", f"task default ({entry.worker_type})")] + \
            [(w.value, w.value) for w in WorkerType]
        for hint in entry.arguments:
            kind = hint.get("type", "JSON")
            default = hint.get("default")
            self.fields[ARGUMENT_PREFIX + hint["name"]] = forms.CharField(
                label=hint["name"], required=hint["required"],
                help_text=f"{kind}" + ("" if hint["required"] else f", default {json.dumps(default)}"),
                widget=forms.TextInput(attrs={"placeholder": "" if hint["required"] else json.dumps(default)}))
        if self.accepts_more:
            self.fields["args"] = forms.CharField(required=False, label="more args",
                                                  help_text='JSON list, e.g. ["a", 2]')
            self.fields["kwargs"] = forms.CharField(required=False, label="more kwargs",
                                                    help_text='JSON object, e.g. {"key": "value"}')

    def payload(self) -> dict:
        """The API request body this form stands for (after is_valid())."""
        data = self.cleaned_data
        kwargs: dict = {}
        args: list = []
        for hint in self.entry.arguments:
            raw = data.get(ARGUMENT_PREFIX + hint["name"])
            if raw not in (None, ""):
                kwargs[hint["name"]] = self._argument(hint, raw)
        if self.accepts_more:
            args = self._json(data.get("args"), "args", list) or []
            kwargs.update(self._json(data.get("kwargs"), "kwargs", dict) or {})
        payload = {"task": data["task"], "args": args, "kwargs": kwargs}
        for name in ("priority", "worker_type", "partition_key", "countdown"):
            if data.get(name) not in (None, ""):
                payload[name] = data[name]
        return payload

    def _argument(self, hint: dict, raw: str):
        parse = _PARSERS.get(hint.get("type", ""))
        try:
            return parse(raw) if parse else json.loads(raw)
        except ValueError:
            if parse is None:
                return raw  # not JSON: the text itself
            message = f"not a valid {hint['type']}: {raw!r}"
            raise forms.ValidationError({ARGUMENT_PREFIX + hint["name"]: message}) from None

    def _json(self, raw: str | None, field: str, kind: type):
        if not raw:
            return None
        try:
            value = json.loads(raw)
        except ValueError as exc:
            raise forms.ValidationError({field: f"not JSON: {exc}"}) from None
        if not isinstance(value, kind):
            raise forms.ValidationError({field: f"must be a JSON {'list' if kind is list else 'object'}"})
        return value

    def field_for(self, submission_field: str) -> str | None:
        """The form field a tasks.submit error names, or None for a form-wide error."""
        if submission_field in self.fields:
            return submission_field
        return None


def accepts_more_arguments(name: str) -> bool:
    """Whether the task takes *args or **kwargs beyond its named arguments (vokaflow.echo does)."""
    parameters = inspect.signature(catalog.resolve(name).run).parameters.values()
    return any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters)

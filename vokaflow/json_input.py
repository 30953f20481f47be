"""JSON a caller sent: bounded depth, valid Unicode, at parse time and at submission.

Python's json module reads a document nested 900 levels deep and a lone surrogate escape
("\\ud800") without complaint; what fails later is whatever touches the value next (Redis
encoding a key, rendering a response, the admin page of a dead letter: RecursionError,
UnicodeEncodeError). So such input is refused where it enters, with a 400 naming the field.
"""

from __future__ import annotations

import io
import json
import re
from typing import Any

from django.conf import settings
from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser

from vokaflow.core.errors import BadRequest

# A lone surrogate can only come from a \\uD800-\\uDFFF escape: UTF-8 cannot encode one, and
# Python's decoder refuses those bytes. The regex is the cheap test; the walk finds the field.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class InvalidJSON(BadRequest):
    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}", errors={field: [message]})


def max_depth() -> int:
    return settings.VOKAFLOW_MAX_JSON_DEPTH


def valid_unicode(text: str) -> bool:
    """False when `text` holds a lone surrogate (it cannot be encoded as UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def json_problem(value, limit: int, check_text: bool = True) -> tuple[list, str] | None:
    """The path and reason of the first container nested deeper than `limit` or string (or
    key) that is not valid Unicode; None when there is none. Iterative: no recursion limit."""
    stack: list[tuple[Any, int, list]] = [(value, 1, [])]
    while stack:
        node, depth, path = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > limit:
                return path, f"nested deeper than {limit} levels"
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for key, child in items:
                if check_text and isinstance(key, str) and not valid_unicode(key):
                    return path + [key], "a key is not valid Unicode (it holds a lone surrogate)"
                stack.append((child, depth + 1, path + [key]))
        elif check_text and isinstance(node, str) and not valid_unicode(node):
            return path, "not valid Unicode (it holds a lone surrogate such as \\ud800)"
    return None


def field_name(path: list) -> str:
    """The field a path is in: `args`, `lock`, or in a batch `tasks[3].args`."""
    name = ""
    for part in path:
        if isinstance(part, int):
            name += f"[{part}]"
            continue
        name += f".{part}" if name else str(part)
        if name != "tasks":  # a batch names its entry, then the entry's field
            break
    return name or "body"


def value_problem(value, encoded: str) -> str | None:
    """Why `value` (whose ASCII JSON is `encoded`) is nested too deep or not valid Unicode, or
    None. The walk runs only when the encoded text shows it may be needed."""
    limit = max_depth()
    deep = encoded.count("[") + encoded.count("{") > limit
    text = "\\ud" in encoded or "\\uD" in encoded
    if not (deep or text):
        return None
    problem = json_problem(value, limit, check_text=text)
    return problem[1] if problem else None


# A JSON string or one bracket; strings are skipped whole so brackets inside them do not count.
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')
_TOO_DEEP = "\u0000too-deep"


def _too_deep_path(raw: bytes, limit: int) -> list | None:
    """Where a body that Python's parser could not read (RecursionError) first goes too deep:
    the body is cut at the first opener past `limit`, a marker put in its place and the open
    brackets closed, so the (now shallow) document parses and the marker's path is the field."""
    openers: list[bytes] = []
    for match in _TOKEN.finditer(raw):
        token = match.group()
        if token in (b"[", b"{"):
            if len(openers) == limit:
                closing = b"".join(b"]" if o == b"[" else b"}" for o in reversed(openers))
                shallow = raw[:match.start()] + json.dumps(_TOO_DEEP).encode() + closing
                try:
                    return _find(json.loads(shallow), _TOO_DEEP)
                except ValueError:
                    return None
            openers.append(token)
        elif token in (b"]", b"}") and openers:
            openers.pop()
    return None


def _find(value, marker) -> list | None:
    stack: list[tuple[Any, list]] = [(value, [])]
    while stack:
        node, path = stack.pop()
        if node == marker:
            return path
        if isinstance(node, (dict, list)):
            stack.extend((child, path + [key]) for key, child in
                         (node.items() if isinstance(node, dict) else enumerate(node)))
    return None


class BoundedJSONParser(JSONParser):
    """DRF's JSON parser, refusing bodies nested deeper than VOKAFLOW_MAX_JSON_DEPTH and
    strings that are not valid Unicode, with a 400 naming the field."""

    def parse(self, stream, media_type=None, parser_context=None):
        raw = stream.read()
        try:
            data = super().parse(io.BytesIO(raw), media_type, parser_context)
        except RecursionError:
            path = _too_deep_path(raw, max_depth())
            if path is None:
                raise ParseError(f"JSON parse error - nested deeper than {max_depth()} levels") from None
            raise InvalidJSON(field_name(path), f"nested deeper than {max_depth()} levels") from None
        limit = max_depth()
        # Counting brackets is C-speed; a body with fewer openers than the limit cannot be too deep.
        deep = raw.count(b"[") + raw.count(b"{") > limit
        text = _SURROGATE_ESCAPE.search(raw) is not None
        if deep or text:
            problem = json_problem(data, limit, check_text=text)
            if problem:
                raise InvalidJSON(field_name(problem[0]), problem[1])
        return data

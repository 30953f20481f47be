"""Every URL of the project, walked anonymously: only the pages the README calls open answer."""

from __future__ import annotations

import itertools
import re

import pytest
from django.contrib.admindocs.views import simplify_regex
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, resolve
from django.urls.exceptions import Resolver404

pytestmark = pytest.mark.django_db

# The README's list: health, the API schema and its docs, and the ways in (token, login forms).
OPEN = {"health", "schema", "api-docs", "api-redoc", "token-obtain", "token-refresh",
        "admin:login", "admin:logout", "rest_framework:login", "rest_framework:logout",
        "home"}  # "/" only redirects to the console, which asks for the login
# Not pages: the JSON 404 of an unknown API path answers 404 to everyone.
NOT_FOUND_ANSWERS = {"api-not-found"}
# Values tried for each path parameter until the path resolves back to its own pattern.
SAMPLE_VALUES = ["1", "tasks", "auth", "deadletter", "some-key", "pause", "run", "reset"]
HTTP_METHODS = ("get", "post", "put", "patch", "delete")


def every_pattern(patterns=None, prefix: str = "", namespace: str = ""):
    """(full regex, qualified name, pattern) for every leaf URL pattern."""
    for entry in get_resolver().url_patterns if patterns is None else patterns:
        if isinstance(entry, URLResolver):
            inner = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
            yield from every_pattern(entry.url_patterns, prefix + entry.pattern.regex.pattern, inner)
        elif isinstance(entry, URLPattern):
            yield prefix + entry.pattern.regex.pattern, f"{namespace}{entry.name}" if entry.name else None, entry


def sample_path(regex: str, pattern: URLPattern) -> str:
    """A concrete path that resolves to `pattern`."""
    template = simplify_regex(regex).replace("\\", "")
    names = re.findall(r"<(\w+)>", template)
    for values in itertools.product(SAMPLE_VALUES, repeat=len(names)):
        path = template
        for name, value in zip(names, values):
            path = path.replace(f"<{name}>", value, 1)
        try:
            if resolve(path).func == pattern.callback:
                return path
        except Resolver404:
            continue
    raise AssertionError(f"no sample path for {regex}: add a value to SAMPLE_VALUES")


def methods_of(pattern: URLPattern) -> list[str]:
    view_class = getattr(pattern.callback, "cls", None) or getattr(pattern.callback, "view_class", None)
    if view_class is None:
        return ["get", "post"]
    return [m for m in HTTP_METHODS if hasattr(view_class, m)]


def refused(response, name: str | None) -> bool:
    if name in NOT_FOUND_ANSWERS:
        return response.status_code == 404
    if response.status_code in (401, 403):
        return True
    return response.status_code == 302 and "login" in response["Location"]


def test_every_page_but_the_open_ones_refuses_an_anonymous_visitor(redis_client):
    client, checked, wrongly_open = Client(), 0, []
    for regex, name, pattern in every_pattern():
        if name in OPEN:
            continue
        path = sample_path(regex, pattern)
        for method in methods_of(pattern):
            response = getattr(client, method)(path, content_type="application/json")
            checked += 1
            if not refused(response, name):
                wrongly_open.append(f"{method.upper()} {path} ({name}): {response.status_code}")
    assert not wrongly_open, wrongly_open
    assert checked > 40  # the walk found the API, the admin and the metrics


def test_the_open_pages_answer_without_credentials(redis_client):
    client = Client()
    assert client.get("/api/health/").status_code in (200, 503)
    assert client.get("/api/schema/", HTTP_ACCEPT="application/json").status_code == 200
    assert client.get("/api/docs/").status_code == 200
    assert client.get("/api/redoc/").status_code == 200
    assert client.get("/admin/login/").status_code == 200
    assert client.get("/api-auth/login/").status_code == 200
    assert client.get("/", follow=True).redirect_chain[-1][0].startswith("/admin/login/")
    assert client.post("/api/auth/token/", {"username": "nobody", "password": "x"},
                       content_type="application/json").status_code == 401


def test_the_open_list_names_only_pages_that_exist():
    names = {name for _, name, _ in every_pattern()}
    assert OPEN <= names, OPEN - names

"""Failed logins are limited per user name and per client address, before any password is hashed."""

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.contrib.auth import authenticate
from django.http import HttpResponse
from django.test import Client, RequestFactory

from tests.conftest import wait_for
from tests.hashers import CountingPBKDF2Hasher
from vokaflow import login_limit

pytestmark = pytest.mark.django_db
TOKEN = "/api/auth/token/"


@pytest.fixture(autouse=True)
def counting_hasher(settings):
    settings.PASSWORD_HASHERS = ["tests.hashers.CountingPBKDF2Hasher"]
    settings.VOKAFLOW_LOGIN_LIMIT_PER_USER = 10
    settings.VOKAFLOW_LOGIN_LIMIT_PER_ADDRESS = 10
    settings.VOKAFLOW_LOGIN_WINDOW = 60
    login_limit.forget_over_limit()
    yield
    login_limit.forget_over_limit()  # the next tests log in as alice from 127.0.0.1


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", password="alice-password")


def token(username: str, password: str, address: str = "10.0.0.1"):
    return Client(REMOTE_ADDR=address).post(TOKEN, {"username": username, "password": password},
                                            content_type="application/json")


def test_the_eleventh_wrong_password_is_429_with_retry_after_and_nothing_is_hashed(alice, redis_client):
    for _ in range(10):
        assert token("alice", "wrong").status_code == 401
    hashed = CountingPBKDF2Hasher.calls
    assert hashed >= 10  # each wrong password so far was hashed
    refused = token("alice", "wrong")
    assert refused.status_code == 429
    assert 1 <= int(refused["Retry-After"]) <= 60
    assert "too many failed logins" in refused.json()["detail"]
    assert refused.json()["retry_after"] == int(refused["Retry-After"])
    # Within the window even the right password is refused, and no attempt hashes anything.
    assert token("alice", "alice-password").status_code == 429
    for _ in range(20):
        assert token("alice", "wrong").status_code == 429
    assert CountingPBKDF2Hasher.calls == hashed


def test_the_limit_per_address_covers_many_user_names(alice, redis_client):
    for i in range(10):
        assert token(f"user-{i}", "guess", address="10.0.0.2").status_code == 401
    assert token("someone-else", "guess", address="10.0.0.2").status_code == 429
    assert token("alice", "alice-password", address="10.0.0.2").status_code == 429
    # Another address and user name are not affected.
    assert token("alice", "alice-password", address="10.0.0.3").status_code == 200


def test_the_limit_per_user_name_covers_many_addresses(alice, redis_client):
    for i in range(10):
        assert token("alice", "wrong", address=f"10.1.0.{i}").status_code == 401
    assert token("alice", "alice-password", address="10.1.0.99").status_code == 429
    assert token("ALICE ", "wrong", address="10.1.0.98").status_code == 429  # case and spaces do not help
    assert token("bob", "wrong", address="10.1.0.97").status_code == 401


def test_successful_logins_do_not_count(alice, redis_client):
    for _ in range(15):
        assert token("alice", "alice-password").status_code == 200
    for _ in range(9):
        assert token("alice", "wrong").status_code == 401
    assert token("alice", "alice-password").status_code == 200
    assert token("alice", "wrong").status_code == 401  # the 10th failure
    assert token("alice", "alice-password").status_code == 429


def test_attempts_arriving_at_once_never_pass_the_limit(redis_client):
    # Each attempt takes its place atomically: 32 at once still let exactly 10 through to the hasher.
    with ThreadPoolExecutor(32) as pool:
        waits = list(pool.map(lambda _: login_limit.take_place("mallory", "10.9.0.1"), range(32)))
    assert waits.count(None) == 10 and all(1 <= w <= 60 for w in waits if w is not None)


def test_the_admin_login_form_counts_and_is_refused_with_429(alice, redis_client, settings):
    settings.VOKAFLOW_LOGIN_LIMIT_PER_USER = 3
    client = Client(REMOTE_ADDR="10.2.0.1")
    for _ in range(3):
        page = client.post("/admin/login/", {"username": "alice", "password": "wrong"})
        assert page.status_code == 200 and b"Please enter the correct" in page.content
    hashed = CountingPBKDF2Hasher.calls
    refused = client.post("/admin/login/", {"username": "alice", "password": "alice-password"})
    assert refused.status_code == 429 and int(refused["Retry-After"]) >= 1
    # The token endpoint shares the counters.
    assert token("alice", "alice-password", address="10.2.0.2").status_code == 429
    assert CountingPBKDF2Hasher.calls == hashed


def test_any_other_password_login_counts_and_is_refused_before_hashing(alice, redis_client):
    def elsewhere(password: str):
        request = RequestFactory().post("/console/elsewhere/", REMOTE_ADDR="10.3.0.1")
        return authenticate(request, username="alice", password=password)

    assert elsewhere("alice-password") is not None
    for _ in range(10):
        assert elsewhere("wrong") is None
    hashed = CountingPBKDF2Hasher.calls
    assert elsewhere("alice-password") is None
    assert CountingPBKDF2Hasher.calls == hashed
    assert token("alice", "alice-password", address="10.3.0.2").status_code == 429


def test_the_limits_are_settings_and_the_window_ends(alice, redis_client, settings):
    settings.VOKAFLOW_LOGIN_LIMIT_PER_USER = 2
    settings.VOKAFLOW_LOGIN_WINDOW = 1
    assert token("alice", "wrong").status_code == 401
    assert token("alice", "wrong").status_code == 401
    assert token("alice", "wrong").status_code == 429
    wait_for(lambda: token("alice", "alice-password").status_code == 200, 5, 0.2, "the window to end")


def test_a_limit_of_zero_turns_it_off(alice, redis_client, settings):
    settings.VOKAFLOW_LOGIN_LIMIT_PER_USER = 0
    settings.VOKAFLOW_LOGIN_LIMIT_PER_ADDRESS = 0
    for _ in range(12):
        assert token("alice", "wrong").status_code == 401
    assert not list(redis_client.scan_iter(match="vokaflow:login-failures:*"))


def test_one_password_check_at_a_time_per_process_the_others_are_told_to_retry(redis_client, settings):
    settings.VOKAFLOW_LOGIN_CONCURRENCY = 1
    checking, finish = threading.Event(), threading.Event()

    def slow_view(request):
        checking.set()
        finish.wait(10)
        return HttpResponse(status=401)

    middleware = login_limit.LoginLimitMiddleware(slow_view)
    factory = RequestFactory()

    def attempt(address: str):
        return middleware(factory.post(TOKEN, {"username": "carol", "password": "x"},
                                       content_type="application/json", REMOTE_ADDR=address))

    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(attempt, "10.4.0.1")
        assert checking.wait(10)
        busy = attempt("10.4.0.2")
        assert busy.status_code == 429 and busy["Retry-After"] == "1"
        finish.set()
        assert first.result(10).status_code == 401
    assert not redis_client.exists("vokaflow:login-failures:addr:10.4.0.2")  # a busy refusal does not count
    assert attempt("10.4.0.2").status_code == 401


def test_a_staff_user_still_logs_in_to_the_admin_with_a_session(django_user_model, redis_client):
    django_user_model.objects.create_user("ops", password="ops-password", is_staff=True)
    client = Client(REMOTE_ADDR="10.5.0.1")
    response = client.post("/admin/login/?next=/admin/", {"username": "ops", "password": "ops-password"})
    assert response.status_code == 302 and response["Location"] == "/admin/"
    assert client.get("/admin/").status_code == 200

"""The REDIS_URL forms the platform accepts, parsed without connecting."""

import pytest

from vokaflow.celery import _transport_for, result_backend_url
from vokaflow.redis_connect import client_from_url, redacted_url


def test_plain_and_tls_urls_keep_host_port_db_and_password():
    client = client_from_url("redis://:s3cret@cache.internal:6380/4")
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["password"]) == ("cache.internal", 6380, 4, "s3cret")
    assert kwargs["socket_connect_timeout"] == 2.0  # never a hang on an unreachable Redis
    tls = client_from_url("rediss://cache.internal:6380/0")
    assert tls.connection_pool.connection_class.__name__ == "SSLConnection"


def test_a_sentinel_url_lists_every_sentinel_and_finds_the_primary_by_name():
    client = client_from_url("sentinel://:pw@10.0.0.1:26379;sentinel://10.0.0.2:26380/2", sentinel_master="main")
    pool = client.connection_pool
    assert pool.service_name == "main" and pool.connection_kwargs["db"] == 2
    assert pool.connection_kwargs["password"] == "pw"
    sentinels = [(s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
                 for s in pool.sentinel_manager.sentinels]
    assert sentinels == [("10.0.0.1", 26379), ("10.0.0.2", 26380)]


def test_a_sentinel_url_without_the_primarys_name_says_what_to_set():
    with pytest.raises(ValueError, match="VOKAFLOW_REDIS_SENTINEL_MASTER"):
        client_from_url("sentinel://10.0.0.1:26379/0")


def test_celery_uses_our_transport_directly_and_through_sentinel():
    assert _transport_for("redis://h:6379/0") == "vokaflow.transport:Transport"
    assert _transport_for("rediss://h:6379/0") == "vokaflow.transport:Transport"
    assert _transport_for("sentinel://h:26379/0") == "vokaflow.transport:SentinelTransport"
    assert result_backend_url("redis://h:6379/0").startswith("tasks.backends:SubmitOnlyRedisBackend+redis://")
    assert result_backend_url("sentinel://h:26379/0") == "tasks.backends:BoundedSentinelBackend+sentinel://h:26379/0"


def test_passwords_never_reach_messages():
    assert redacted_url("redis://:s3cret@h:6379/0") == "redis://***@h:6379/0"
    assert "pw" not in redacted_url("sentinel://:pw@a:26379;sentinel://:pw@b:26379/0")

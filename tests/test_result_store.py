"""The result backend never overwrites a stored final state (vokaflow.result_store), in real Redis."""

import json
import uuid

import pytest

from tests.conftest import wait_for
from vokaflow.celery import app
from vokaflow.result_store import store_unless_final


def state(task_id: str) -> str:
    return app.backend.get_task_meta(task_id)["status"]


def test_a_running_task_moves_through_started_to_success(redis_client):
    app.backend.store_result("t-ok", None, "STARTED")
    app.backend.store_result("t-ok", 42, "SUCCESS")
    assert app.backend.get_task_meta("t-ok")["result"] == 42


def test_a_late_success_does_not_undo_a_revoke(redis_client):
    app.backend.store_result("t-rev", None, "STARTED")
    app.backend.mark_as_revoked("t-rev", reason="revoked through the API")
    app.backend.store_result("t-rev", 42, "SUCCESS")
    app.backend.store_result("t-rev", None, "STARTED")
    assert state("t-rev") == "REVOKED"


@pytest.mark.parametrize("final", ["SUCCESS", "FAILURE"])
def test_a_late_revoke_does_not_undo_a_finished_task(redis_client, final):
    if final == "SUCCESS":
        app.backend.store_result("t-done", 7, "SUCCESS")
    else:
        app.backend.mark_as_failure("t-done", RuntimeError("boom"))
    app.backend.mark_as_revoked("t-done", reason="too late")
    app.backend.store_result("t-done", None, "STARTED")
    assert state("t-done") == final


def test_the_rule_keeps_the_ttl_and_publishes_like_celery(redis_client):
    key = f"vokaflow:test:meta:{uuid.uuid4()}"  # channels are shared by every Redis database
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(key)
    wait_for(lambda: pubsub.get_message(timeout=0.1) is None and pubsub.subscribed, 5, message="the subscription")
    assert store_unless_final(redis_client, key, json.dumps({"status": "STARTED"}), 60)
    assert 0 < redis_client.ttl(key) <= 60
    message = wait_for(lambda: pubsub.get_message(timeout=0.1), 5, message="the published meta")
    assert json.loads(message["data"])["status"] == "STARTED"
    assert store_unless_final(redis_client, key, json.dumps({"status": "REVOKED"}), 60)
    assert not store_unless_final(redis_client, key, json.dumps({"status": "SUCCESS"}), 60)
    assert json.loads(redis_client.get(key))["status"] == "REVOKED"
    pubsub.close()


def test_a_value_that_is_not_a_task_meta_is_overwritten(redis_client):
    redis_client.set("vokaflow:test:meta", "not json")
    assert store_unless_final(redis_client, "vokaflow:test:meta", json.dumps({"status": "SUCCESS"}), 0)
    assert redis_client.ttl("vokaflow:test:meta") == -1


def test_a_large_meta_keeps_the_rule_without_a_script(redis_client):
    # Over SCRIPT_VALUE_LIMIT the write is an optimistic transaction (no Lua hashes the value),
    # the same rule: written over a STARTED, never over a final state.
    from vokaflow import result_store

    big = json.dumps({"status": "SUCCESS", "result": "r" * (result_store.SCRIPT_VALUE_LIMIT + 1)})
    key = "celery-task-meta-large"
    redis_client.set(key, json.dumps({"status": "STARTED"}))
    redis_client.config_resetstat()
    assert result_store.store_unless_final(redis_client, key, big, 60) is True
    assert redis_client.get(key) == big.encode() and 0 < redis_client.ttl(key) <= 60
    assert "cmdstat_evalsha" not in redis_client.info("commandstats")
    assert result_store.store_unless_final(redis_client, key, json.dumps({"status": "STARTED"}), 60) is False
    assert redis_client.get(key) == big.encode()

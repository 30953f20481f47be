"""Private Celery and kombu internals VokaFlow overrides or reads: fail loudly when they change.

Each check names the internal and where VokaFlow relies on it. If one fails after an upgrade,
read the new code of that internal before touching the check.
"""

import inspect

import pytest
from celery.app import trace
from celery.backends.redis import RedisBackend
from celery.worker import request as celery_request
from celery.worker import strategy
from celery.worker.consumer import consumer as celery_consumer
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

from tests.conftest import wait_for
from vokaflow import hotpath, transport


def params(func) -> list[str]:
    return list(inspect.signature(func).parameters)


def source(func) -> str:
    return inspect.getsource(func)


# --- kombu: vokaflow/transport.py -----------------------------------------------------------

@pytest.mark.parametrize(("name", "expected"), [
    ("_brpop_start", ["self", "timeout"]),
    ("_brpop_read", ["self", "options"]),
    ("_put", ["self", "queue", "message", "kwargs"]),
    ("_do_restore_message", ["self", "payload", "exchange", "routing_key", "pipe", "leftmost"]),
    ("close", ["self"]),
    ("conn_or_acquire", ["self", "client"]),
    ("_flush_brpop_reauth", ["self"]),
])
def test_kombu_redis_channel_methods_we_override_or_call(name, expected):
    assert params(getattr(kombu_redis.Channel, name)) == expected


def test_kombu_redis_channel_state_we_read():
    # The poll bookkeeping our fetch keeps exactly as kombu's BRPOP does.
    assert kombu_redis.Channel._in_poll is False and kombu_redis.Channel._brpop_sent_at is None
    assert "self._queue_cycle = cycle_by_name(self.queue_order_strategy)()" in source(kombu_redis.Channel.__init__)
    assert "priority_steps" in kombu_redis.Channel.from_transport_options
    assert set(kombu_redis.Channel.from_transport_options) <= set(transport.Channel.from_transport_options)
    assert set(kombu_redis.SentinelChannel.from_transport_options) <= \
        set(transport.SentinelChannel.from_transport_options)
    # close() reads a reply still in flight before it disconnects; ours does the same first.
    assert "self._brpop_read()" in source(kombu_redis.Channel.close)


def test_kombu_polls_through_brpop_start_and_read():
    assert "channel._brpop_start()" in source(kombu_redis.MultiChannelPoller._register_BRPOP)
    assert "'BRPOP': self._brpop_read" in source(kombu_redis.Channel.__init__)
    assert "can_consume()" in source(kombu_redis.MultiChannelPoller.on_poll_start)


def test_kombu_qos_methods_we_override():
    assert params(kombu_redis.QoS.append) == ["self", "message", "delivery_tag"]
    assert params(kombu_redis.QoS.ack) == ["self", "delivery_tag"]
    assert params(kombu_redis.QoS.restore_unacked_once) == ["self", "stderr"]
    assert params(virtual.QoS.append) == ["self", "message", "delivery_tag"]
    assert params(virtual.QoS.ack) == ["self", "delivery_tag"]
    # The in-memory part of an ack: what a deferred ack does at once.
    assert "self._quick_ack(delivery_tag)" in source(virtual.QoS.ack)
    # Our ZADD/HSET record matches kombu's: [payload, exchange, routing key] under the tag.
    assert "dumps([message._raw, EX, RK])" in source(kombu_redis.QoS.append)
    assert "self._remove_from_indices(delivery_tag).execute()" in source(kombu_redis.QoS.ack)


def test_kombu_delivers_through_the_connection():
    assert params(virtual.Transport._deliver) == ["self", "message", "queue"]


# --- Celery: vokaflow/hotpath.py, vokaflow/celery.py -------------------------------------------

def test_celery_request_acknowledge_and_start_time():
    assert params(celery_request.Request.acknowledge) == ["self"]
    assert celery_request.Request.time_start is None
    # time_start is wall-clock seconds, set when the pool accepts the task.
    assert "self.time_start = time() - (monotonic() - time_accepted)" in source(celery_request.Request.on_accepted)
    # The per-task Request class Celery builds acknowledges through acknowledge() (acks late).
    assert "self.acknowledge()" in source(celery_request.create_request_cls)


def test_celery_task_request_class_is_pluggable():
    from tasks.base import PlatformTask

    assert PlatformTask.Request == "vokaflow.hotpath:Request"
    assert "task.Request" in source(strategy.default)


def test_celery_acks_run_on_the_event_loop():
    # Our deferred acks are kept without locks: every ack reaches kombu through the hub.
    assert "call_soon_ack" in source(celery_consumer.Consumer.create_task_handler)


def test_celery_result_backend_internals_we_override():
    from celery.backends.base import BaseKeyValueStoreBackend

    assert params(BaseKeyValueStoreBackend._store_result) == \
        ["self", "task_id", "result", "state", "traceback", "request", "kwargs"]
    assert "_get_task_meta_for(task_id)" in source(BaseKeyValueStoreBackend._store_result)
    assert params(BaseKeyValueStoreBackend._get_result_meta)[:5] == ["self", "result", "state", "traceback", "request"]
    assert "failure_expires" in source(RedisBackend.__init__)
    assert RedisBackend._MAX_STR_VALUE_SIZE > 0
    # Celery stores with SETEX then PUBLISH on the task's key: our script does the same.
    assert "pipe.setex(key, expires, value)" in source(RedisBackend._set)
    assert "pipe.publish(key, value)" in source(RedisBackend._set)


def test_celery_per_task_log_lines_are_the_messages_we_filter():
    from vokaflow.celery import PER_TASK_LINES

    assert PER_TASK_LINES == {strategy.logger.name: trace.LOG_RECEIVED, trace.logger.name: trace.LOG_SUCCESS}
    # Logged with the constant itself as the message (our filter compares identity).
    assert "info(_app_trace.LOG_RECEIVED, context" in source(strategy.default)
    assert "info(LOG_SUCCESS, {" in source(trace.build_tracer)


def test_override_markers_are_in_place():
    for method in (transport.QoS.append, transport.QoS.ack, transport.QoS.restore_unacked_once,
                   transport.ReliableFetch.close, hotpath.Request.acknowledge):
        assert getattr(method, "__override__", False), method


# --- live: a real worker uses our channel and our fetch -------------------------------------

def test_a_live_worker_fetches_with_our_script(start_worker, redis_client):
    from tasks.submit import submit_task
    from tests.conftest import wait_for_state
    from vokaflow.celery import app

    worker = start_worker("general")
    wait_for_state(submit_task("vokaflow.echo", args=[1]))
    stats = app.control.inspect([worker.name], timeout=5).stats()[worker.name]
    assert stats["broker"]["transport"] == "vokaflow.transport:Transport"
    assert redis_client.script_exists(transport._FETCH_SHA) == [True]
    # Idle, it waits on its type's bell with XREAD, which only our channel sends.
    db = str(redis_client.connection_pool.connection_kwargs.get("db", 0))
    wait_for(lambda: any(c.get("cmd") == "xread" and c.get("db") == db for c in redis_client.client_list()),
             10, 0.05, "the idle worker to wait on its bell")

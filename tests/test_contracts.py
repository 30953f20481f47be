"""Private Celery/kombu details VokaFlow relies on: these fail loudly when an upgrade changes them."""

import inspect

from celery.worker import state as worker_state
from celery.worker.consumer.consumer import Consumer
from celery.worker.request import Request
from kombu.transport import redis as kombu_redis

from tasks.scheduled import UNACKED_KEY


def test_running_requests_are_celerys_active_requests_with_the_attributes_heartbeats_read():
    # workers.heartbeat.running_tasks reads these off each request a worker is running.
    assert hasattr(worker_state.active_requests, "__iter__") and hasattr(worker_state.active_requests, "add")
    assert {"argsrepr", "kwargsrepr", "delivery_info", "time_start"} <= set(dir(Request))
    init = inspect.getsource(Request.__init__)
    assert "self.id = " in init and "self.name = " in init


def test_held_eta_messages_wait_in_kombus_unacked_hash():
    # tasks.scheduled reads countdown/ETA tasks from there, as [message, exchange, routing key].
    assert kombu_redis.Channel.unacked_key == UNACKED_KEY
    source = inspect.getsource(kombu_redis.QoS.append)
    assert "dumps([message._raw, EX, RK])" in source  # vokaflow.transport's fetch script writes the same


def test_pausing_uses_celerys_queue_remote_control():
    # workers.queues pauses with cancel_consumer / add_consumer, which deselect and select_add the
    # queue in app.amqp.queues (the heartbeat and a restarted consumer read that list).
    assert "queues.deselect(queue)" in inspect.getsource(Consumer.cancel_task_queue)
    assert "select_add" in inspect.getsource(Consumer.add_task_queue)
    # workers.heartbeat.Heartbeat.follow_paused_levels queues the same calls from its thread.
    assert "_pending_operations.append" in inspect.getsource(Consumer.call_soon)

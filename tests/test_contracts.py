"""Private Celery, kombu and billiard behaviour VokaFlow relies on: these fail loudly when an upgrade changes it."""

import inspect

from billiard import common as billiard_common
from celery import states
from celery.app import autoretry
from celery.backends.base import KeyValueStoreBackend
from celery.backends.redis import RedisBackend, SentinelBackend
from celery.concurrency.thread import TaskPool as ThreadPool
from celery.worker import state as worker_state
from celery.worker.consumer.consumer import Consumer
from celery.worker.request import Request
from kombu.transport import redis as kombu_redis

from tasks.backends import BoundedSentinelBackend, SubmitOnlyRedisBackend
from vokaflow.celery import app
from vokaflow.core import keys
from vokaflow.result_store import FINAL_STATES, STORE_UNLESS_FINAL


def test_task_metas_are_written_through_set_with_state():
    # tasks.backends.KeepFinalStates overrides _set_with_state(key, value, state).
    assert "self._set_with_state(self.get_key_for_task(task_id)" in inspect.getsource(
        KeyValueStoreBackend._store_result)
    assert list(inspect.signature(RedisBackend._set_with_state).parameters) == ["self", "key", "value", "state"]
    from vokaflow.celery import app

    for attribute in ("failure_expires", "expires", "_MAX_STR_VALUE_SIZE", "ensure", "client"):
        assert hasattr(app.backend, attribute), attribute


def test_the_final_states_the_lua_script_names_are_celerys_ready_states():
    assert FINAL_STATES == set(states.READY_STATES) == {"SUCCESS", "FAILURE", "REVOKED"}
    assert all(f"'{s}'" in STORE_UNLESS_FINAL for s in FINAL_STATES)


def test_a_terminated_job_is_recorded_revoked_and_acknowledged():
    # tasks.state.revoke_task relies on Request.terminate announcing the revoke (mark_as_revoked
    # and acknowledge) instead of the failure path (which would dead-letter or requeue).
    terminate = inspect.getsource(Request.terminate)
    assert "pool.terminate_job(self.worker_pid, signal)" in terminate and "_announce_revoked" in terminate
    announce = inspect.getsource(Request._announce_revoked)
    assert "mark_as_revoked" in announce and "self.acknowledge()" in announce
    assert "isinstance(exc, Terminated)" in inspect.getsource(Request.on_failure)


def test_sigterm_in_a_prefork_child_raises_system_exit_so_finally_blocks_run():
    assert "SIGTERM" in billiard_common.TERMSIGS_DEFAULT
    assert billiard_common.reset_signals.__defaults__[0] is billiard_common._shutdown_cleanup
    assert "sys.exit(" in inspect.getsource(billiard_common._shutdown_cleanup)


def test_a_thread_pool_cannot_terminate_a_job():
    # Why thread-pool types are asked to stop (tasks.cancellation) rather than terminated.
    assert ThreadPool.terminate_job is ThreadPool.__mro__[1].terminate_job
    assert "NotImplementedError" in inspect.getsource(ThreadPool.terminate_job)


def test_autoretry_leaves_dont_autoretry_for_alone():
    # PlatformTask.dont_autoretry_for = (TaskCancelled,): a stop is never retried.
    assert "dont_autoretry_for" in inspect.getsource(autoretry.add_autoretry_behaviour)


def test_our_transport_shows_its_uri_as_redis_for_flower():
    # vokaflow.celery adds our transports to kombu.connection.resolve_aliases; Flower's Broker
    # picks its client from the URI's scheme.
    from flower.utils.broker import Broker, Redis
    from kombu import Connection

    from vokaflow.celery import app

    with app.connection() as conn:
        assert conn.transport_cls == "vokaflow.transport:Transport"
        uri = conn.as_uri(include_password=True)
    assert uri.startswith("redis://"), uri
    assert isinstance(Broker(uri, broker_options={"priority_steps": [0]}), Redis)
    # A clone (kombu's pools, Celery's producers) still resolves our transport, not kombu's.
    assert "_info(resolve=False)" in inspect.getsource(Connection.clone)


def test_running_requests_are_celerys_active_requests_with_the_attributes_heartbeats_read():
    # workers.heartbeat.running_tasks reads these off each request a worker is running.
    assert hasattr(worker_state.active_requests, "__iter__") and hasattr(worker_state.active_requests, "add")
    assert {"argsrepr", "kwargsrepr", "delivery_info", "time_start"} <= set(dir(Request))
    init = inspect.getsource(Request.__init__)
    assert "self.id = " in init and "self.name = " in init


def test_held_eta_messages_wait_in_kombus_unacked_hash():
    # tasks.scheduled reads countdown/ETA tasks from there, as [message, exchange, routing key].
    assert kombu_redis.Channel.unacked_key == keys.UNACKED
    source = inspect.getsource(kombu_redis.QoS.append)
    assert "dumps([message._raw, EX, RK])" in source  # vokaflow.transport's fetch script writes the same


def test_pausing_uses_celerys_queue_remote_control():
    # workers.queues pauses with cancel_consumer / add_consumer, which deselect and select_add the
    # queue in app.amqp.queues (the heartbeat and a restarted consumer read that list).
    assert "queues.deselect(queue)" in inspect.getsource(Consumer.cancel_task_queue)
    assert "select_add" in inspect.getsource(Consumer.add_task_queue)


def test_result_backends_store_through_the_hooks_tasks_backends_overrides():
    # tasks.backends: _get_result_meta builds the stored dict (args/kwargs are dropped from it),
    # _store_result passes the encoded dict to _set_with_state (where its size is bounded).
    meta_params = inspect.signature(KeyValueStoreBackend._get_result_meta).parameters
    assert list(meta_params)[:5] == ["self", "result", "state", "traceback", "request"]
    store = inspect.getsource(KeyValueStoreBackend._store_result)
    assert "self._get_result_meta(" in store and "self._set_with_state(" in store
    assert list(inspect.signature(RedisBackend._set_with_state).parameters) == ["self", "key", "value", "state"]
    for backend in (SubmitOnlyRedisBackend, BoundedSentinelBackend):
        assert backend._set_with_state is not RedisBackend._set_with_state
    assert issubclass(BoundedSentinelBackend, SentinelBackend)


def test_the_extended_result_carries_the_arguments_we_drop():
    source = inspect.getsource(KeyValueStoreBackend._get_result_meta)
    assert "'args'" in source and "'kwargs'" in source
    assert app.conf.result_extended


def test_the_worker_state_the_time_limit_watchdog_reads():
    # workers.watchdog: the running requests, when each started, its limits and its task; and the
    # worker's own limits, which the pool step reads when it creates the pool.
    from celery.worker import components, state
    from celery.worker.request import Request

    assert hasattr(state.active_requests, "__iter__") and hasattr(state.active_requests, "add")
    assert "time_start" in Request.__slots__ or hasattr(Request, "time_start")
    assert "time_limits" in Request.__slots__ or hasattr(Request, "time_limits")
    assert "self.time_start = " in inspect.getsource(Request.on_accepted)
    source = inspect.getsource(components.Pool.create)
    assert "timeout=w.time_limit" in source and "soft_timeout=w.soft_time_limit" in source

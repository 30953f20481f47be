"""Private Celery, kombu, billiard and drf-spectacular behaviour VokaFlow relies on: each check fails loudly
when an upgrade changes it."""

import inspect
import json

import pytest
from billiard import common as billiard_common
from celery import states
from celery.app import autoretry, trace
from celery.backends.base import KeyValueStoreBackend
from celery.backends.redis import RedisBackend, SentinelBackend
from celery.concurrency.thread import TaskPool as ThreadPool
from celery.worker import request as celery_request
from celery.worker import state as worker_state
from celery.worker import strategy
from celery.worker.consumer import consumer as celery_consumer
from celery.worker.consumer.consumer import Consumer
from celery.worker.request import Request
from drf_spectacular.openapi import AutoSchema
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

from tasks.backends import BoundedSentinelBackend, SubmitOnlyRedisBackend
from tests.conftest import wait_for
from vokaflow import hotpath, transport
from vokaflow.celery import app
from vokaflow.core import keys
from vokaflow.result_store import FINAL_STATES, STORE_UNLESS_FINAL


def test_task_metas_are_written_through_set_with_state():
    # tasks.backends.PlatformResults overrides _set_with_state(key, value, state).
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
    # workers.heartbeat.Heartbeat.follow_paused_levels queues the same calls from its thread.
    assert "_pending_operations.append" in inspect.getsource(Consumer.call_soon)


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


def test_drf_spectacular_still_has_the_methods_our_schema_overrides():
    # vokaflow.schema.VokaFlowAutoSchema overrides these underscore methods and calls
    # _get_response_for_code; a rename would silently drop the error answers from the schema.
    for name in ("_map_basic_serializer", "_get_response_bodies", "_get_response_for_code"):
        assert callable(getattr(AutoSchema, name, None)), f"drf-spectacular AutoSchema.{name} is gone"


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
    # A clean stop hands back through restore_unacked → restore_by_tag → _do_restore_message, whose
    # push ours repeats without the redelivered mark when handing back.
    assert params(kombu_redis.QoS.restore_unacked) == ["self", "client"]
    assert "self.restore_by_tag(tag, client=client)" in source(kombu_redis.QoS.restore_unacked)
    assert "self.restore_unacked()" in source(virtual.QoS.restore_unacked_once)
    assert "_do_restore_message(M, EX, RK, pipe, leftmost)" in source(kombu_redis.QoS.restore_by_tag)
    restore = source(kombu_redis.Channel._do_restore_message)
    assert "['redelivered'] = True" in restore
    assert "self._q_for_pri(queue, pri), dumps(payload)" in restore
    assert "self._get_message_priority(payload, reverse=False)" in restore
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


def test_prefork_children_can_hand_a_result_back_through_the_tracer():
    # vokaflow.hotpath: a child's tracer returns trace_ok_t; its retstr goes to the parent as the
    # success value, which the on_success Celery defines in the class it derives from ours receives.
    from celery.concurrency import prefork

    assert trace.trace_ok_t._fields == ("retval", "info", "runtime", "retstr")
    assert "tasks[task].__trace__(" in source(trace.fast_trace_task)
    assert "return (1, R, T) if I else (0, Rstr, T)" in source(trace.fast_trace_task)
    assert "return (1, R, T) if I else (0, Rstr, T)" in source(trace.trace_task_ret)
    init = source(prefork.process_initializer)
    assert init.index("task.__trace__ = build_tracer(") < init.index("signals.worker_process_init.send(")
    created = source(celery_request.create_request_cls)
    assert "class Request(base):" in created and "callback=self.on_success," in created
    assert "failed, retval, runtime = failed__retval__runtime" in created
    assert created.index("task_ready(self, successful=True)") < created.index("self.acknowledge()")
    pool = type("Pool", (), {"apply_async": None})()
    derived = celery_request.create_request_cls(hotpath.Request, app.tasks["vokaflow.noop"], pool, "h", None, app=app)
    assert derived.on_success.__wrapped__.__qualname__ == "create_request_cls.<locals>.Request.on_success"


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
    from workers.bootsteps import PER_TASK_LINES

    assert PER_TASK_LINES == {strategy.logger.name: trace.LOG_RECEIVED, trace.logger.name: trace.LOG_SUCCESS}
    # Logged with the constant itself as the message (our filter compares identity).
    assert "info(_app_trace.LOG_RECEIVED, context" in source(strategy.default)
    assert "info(LOG_SUCCESS, {" in source(trace.build_tracer)


def test_override_markers_are_in_place():
    for method in (transport.QoS.append, transport.QoS.ack, transport.QoS.restore_unacked_once,
                   transport.QoS.restore_unacked, transport.ReliableFetch._do_restore_message,
                   transport.ReliableFetch.close, hotpath.Request.acknowledge):
        assert getattr(method, "__override__", False), method


# --- live: a real worker uses our channel and our fetch -------------------------------------

def test_a_live_worker_fetches_with_our_script(start_worker, redis_client):
    from tasks.submit import submit_task
    from tests.conftest import wait_for_state

    start_worker("general")
    wait_for_state(submit_task("vokaflow.echo", args=[1]))
    # (The broker's name in stats reads "redis": vokaflow.celery gives our transport kombu's display
    # alias, for Flower. Its fetch script and its bell wait are what only our channel does.)
    assert redis_client.script_exists(transport._FETCH_SHA) == [True]
    # Idle, it waits on its type's bell with XREAD, which only our channel sends.
    db = str(redis_client.connection_pool.connection_kwargs.get("db", 0))
    wait_for(lambda: any(c.get("cmd") == "xread" and c.get("db") == db for c in redis_client.client_list()),
             10, 0.05, "the idle worker to wait on its bell")


# --- Celery: workers/host.py ------------------------------------------------------------------

def test_celery_titles_its_processes_through_the_setproctitle_module_it_imported():
    # workers.host replaces celery.platforms._setproctitle in each forked child with one that keeps
    # the child's short name (comm): every title Celery sets must go through that module attribute.
    from celery import platforms

    titles = []
    recorder = type("Recorder", (), {"setproctitle": staticmethod(titles.append)})()
    saved = platforms._setproctitle
    platforms._setproctitle = recorder
    try:
        platforms.set_mp_process_title("celeryd", info="-active- (-A vokaflow worker)", hostname="io@h")
        platforms.set_process_title("celery beat", info="-A vokaflow beat")
    finally:
        platforms._setproctitle = saved
    assert titles == ["[celeryd: io@h:MainProcess] -active- (-A vokaflow worker)", "[celery beat] -A vokaflow beat"]
    import setproctitle

    assert saved is setproctitle  # installed (requirements.txt): Celery titles its workers


# --- The hot path's private names, by what they do against the real Redis --------------------

QUEUE = "general.batch.p7"


@pytest.fixture
def consuming(redis_client):
    """A channel of our transport consuming QUEUE: (channel, publish(body), receive() → message)."""
    from kombu import Consumer, Exchange, Producer, Queue

    received = []
    with app.connection() as conn:
        channel = conn.channel()
        assert isinstance(channel, transport.Channel) and channel._reliable()
        consumer = Consumer(channel, queues=[Queue(QUEUE, Exchange(""), routing_key=QUEUE)], accept=["json"],
                            callbacks=[lambda body, message: received.append(message)])
        consumer.consume()
        producer = Producer(channel, exchange=Exchange(""), routing_key=QUEUE, serializer="json")

        def receive():
            received.clear()
            conn.drain_events(timeout=10)  # our fetch script takes it and records it unacknowledged
            assert len(received) == 1, received
            return received[0]
        try:
            yield channel, producer.publish, receive
        finally:
            channel.close()


def test_a_requeued_reject_acknowledges_in_memory_only_never_through_our_deferred_ack(consuming, redis_client):
    # kombu's QoS.reject puts the message back (restore_by_tag, which removes its record) and then
    # acknowledges through the base class (virtual.QoS.ack), never self.ack. If it reached our
    # deferred ack, the tag's removal would ride a later fetch: by then the requeued message may be
    # another worker's, recorded under the same tag, and that record would be deleted.
    assert "super().ack(delivery_tag)" in source(kombu_redis.QoS.reject)
    channel, publish, receive = consuming
    publish({"n": 1})
    message = receive()
    tag = message.delivery_tag
    assert redis_client.hexists(keys.UNACKED, tag)
    message.reject(requeue=True)
    assert list(channel._acks) == []  # nothing deferred
    assert not redis_client.hexists(keys.UNACKED, tag) and redis_client.zscore("unacked_index", tag) is None
    assert redis_client.llen(QUEUE) == 1
    again = receive()
    assert again.delivery_tag == tag and redis_client.hexists(keys.UNACKED, tag)  # the same tag, recorded again
    again.ack()
    assert list(channel._acks) == [tag]  # an ack, by contrast, waits for the next fetch


def test_unacked_index_scores_are_delivery_times_compared_with_the_visibility_timeout(consuming, redis_client):
    # kombu's QoS.append scores a delivery with time() and restore_visible brings back what was
    # delivered longer than visibility_timeout ago; the fetch script scores with the same clock.
    import time

    assert "{delivery_tag: time()}" in source(kombu_redis.QoS.append)
    assert "ceil = time() - self.visibility_timeout" in source(kombu_redis.QoS.restore_visible)
    channel, publish, receive = consuming
    before = time.time()
    publish({"n": 2})
    tag = receive().delivery_tag
    score = redis_client.zscore("unacked_index", tag)
    assert before - 1 <= score <= time.time() + 1  # epoch seconds of the delivery (rounded up)
    qos = channel.qos
    qos.restore_visible(start=0, num=100, interval=1)  # delivered just now: not visible yet
    assert redis_client.hexists(keys.UNACKED, tag) and redis_client.llen(QUEUE) == 0
    redis_client.zadd("unacked_index", {tag: time.time() - qos.visibility_timeout - 5})
    qos.restore_visible(start=0, num=100, interval=1)  # delivered before the visibility timeout: back
    assert not redis_client.hexists(keys.UNACKED, tag) and redis_client.llen(QUEUE) == 1


def test_a_clean_stop_hands_back_through_the_anonymous_exchange_to_the_routing_keys_queue(consuming, redis_client):
    # Celery publishes with the anonymous exchange '' (vokaflow.celery); kombu's _lookup routes it
    # to the queue its routing key names, which our hand-back (_do_restore_message) relies on.
    with app.connection() as conn:
        assert conn.default_channel._lookup("", QUEUE) == [QUEUE]
    assert params(virtual.Channel._lookup) == ["self", "exchange", "routing_key", "default"]
    channel, publish, receive = consuming
    publish({"n": 3})
    message = receive()
    assert message.delivery_info["exchange"] == "" and message.delivery_info["routing_key"] == QUEUE
    channel.qos.restore_unacked()
    assert not redis_client.hexists(keys.UNACKED, message.delivery_tag)
    (raw,) = redis_client.lrange(QUEUE, 0, -1)
    assert '"redelivered": true' not in raw.decode()  # handed back as it came, not a redelivery


def test_a_bad_payload_or_a_failing_bell_does_not_stop_a_clean_stops_hand_back(consuming, redis_client, caplog):
    # Each held message is handed back in its own transaction; the bells ring once afterwards,
    # best effort. One record that is not a message, and a bell that Redis refuses, cost nothing
    # to the others (both used to raise out of the hand-back, leaving the rest to the visibility
    # timeout, as redeliveries).
    channel, publish, receive = consuming
    publish({"n": 4})
    first = receive()
    publish({"n": 5})
    second = receive()
    redis_client.hset(keys.UNACKED, first.delivery_tag, '{"not json')
    redis_client.delete(transport.bell_key(QUEUE))
    redis_client.set(transport.bell_key(QUEUE), "not a stream")  # XADD answers WRONGTYPE
    channel.qos.restore_unacked()
    assert redis_client.hlen(keys.UNACKED) == 0
    (raw,) = redis_client.lrange(QUEUE, 0, -1)
    assert json.loads(raw)["properties"]["delivery_tag"] == second.delivery_tag
    assert "could not hand back unreadable message" in caplog.text and "could not ring the bells" in caplog.text


def test_a_channel_lists_its_consumed_queues_and_keeps_them_in_our_cycle(redis_client):
    # ReliableFetch reads channel.active_queues (a list, in consume order) and _queue_cycle.items,
    # which kombu keeps up to date through update() on every consume and cancel.
    from kombu import Consumer, Exchange, Queue
    from kombu.utils.scheduling import cycle_by_name, round_robin_cycle

    from vokaflow.core.queues import PriorityFairCycle

    assert cycle_by_name(app.conf.broker_transport_options["queue_order_strategy"]) is PriorityFairCycle
    assert issubclass(PriorityFairCycle, round_robin_cycle)
    queues = ["general.low.p1", "general.high.p0", "general.low.p0"]
    with app.connection() as conn:
        channel = conn.channel()
        try:
            consumers = [Consumer(channel, queues=[Queue(q, Exchange(""), routing_key=q)], accept=["json"])
                         for q in queues]
            for consumer in consumers:
                consumer.consume()
            assert channel.active_queues == queues
            cycle = channel._queue_cycle
            assert type(cycle) is PriorityFairCycle
            assert cycle.items == ["general.high.p0", "general.low.p1", "general.low.p0"]
            consumers[1].cancel()
            assert channel.active_queues == ["general.low.p1", "general.low.p0"] == cycle.items
        finally:
            channel.close()


def test_the_round_robin_cycle_our_queue_cycle_derives_from():
    # PriorityFairCycle overrides update() and rotate(); it keeps round_robin_cycle's list `items`
    # (which the fetch reads) and its consume(n), which kombu's own BRPOP calls; kombu rotates the
    # queue a message came from after each delivery.
    from kombu.utils.scheduling import round_robin_cycle

    from vokaflow.core.queues import PriorityFairCycle

    assert round_robin_cycle().items == [] and round_robin_cycle().items is not round_robin_cycle().items
    cycle = PriorityFairCycle()
    items = cycle.items
    cycle.update(["io.low.p0", "io.high.p1", "io.low.p1", "io.high.p0"])
    assert cycle.items is items == ["io.high.p1", "io.high.p0", "io.low.p0", "io.low.p1"]  # in place
    assert cycle.consume(2) == ["io.high.p1", "io.high.p0"]
    cycle.rotate("io.high.p1")  # to the back of its own level, not of the list
    assert items == ["io.high.p0", "io.high.p1", "io.low.p0", "io.low.p1"]
    assert "self._queue_cycle.consume(len(self.active_queues))" in source(kombu_redis.Channel._brpop_start)
    assert "self._queue_cycle.rotate(dest)" in source(kombu_redis.Channel._brpop_read)


def test_redis_py_sends_a_packed_command_and_parses_its_reply_as_the_fetch_does(redis_client):
    # ReliableFetch writes its prebuilt EVALSHA/XREAD command on the channel client's connection
    # (which kombu's poller sets) and reads the reply with parse_response.
    import redis
    from django.conf import settings
    from redis.exceptions import NoScriptError

    assert "client.connection = client.connection_pool.get_connection(" in source(
        kombu_redis.MultiChannelPoller._client_registered)
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.connection = client.connection_pool.get_connection()
    try:
        sha = client.script_load("return {'message', KEYS[1], ARGV[1]}")
        b = transport._bulk
        client.connection.send_packed_command([b"".join([b"*5\r\n", b(b"EVALSHA"), b(sha), b(b"1"), b(b"k"),
                                                         b(b"v")])])
        assert client.parse_response(client.connection, "EVALSHA") == [b"message", b"k", b"v"]
        client.connection.send_packed_command([b"".join([b"*3\r\n", b(b"EVALSHA"), b(b"0" * 40), b(b"0")])])
        with pytest.raises(NoScriptError):  # a restarted Redis: the fetch sends the script itself next
            client.parse_response(client.connection, "EVALSHA")
        client.connection.send_packed_command([b"".join([b"*6\r\n", b(b"XREAD"), b(b"BLOCK"), b(b"1"),
                                                         b(b"STREAMS"), b(b"vokaflow:bell:contract"), b(b"$")])])
        assert client.parse_response(client.connection, "XREAD") in (None, [], {})  # nothing rang
        assert client.ping()  # the connection is in step again
    finally:
        client.connection_pool.release(client.connection)
        client.close()


def test_merge_revoked_adds_the_ids_a_starting_worker_loads(redis_client):
    # workers.bootsteps.LoadRevoked passes tasks.state.revoked_task_ids() (a list of ids).
    import uuid

    from celery.worker import request as worker_request
    from celery.worker.state import merge_revoked

    assert params(merge_revoked) == ["task_ids"]
    assert worker_request.revoked_tasks is worker_state.revoked  # what a Request checks before it runs
    ids = [f"contract-{uuid.uuid4()}" for _ in range(3)]
    try:
        merge_revoked(ids)
        merge_revoked([])  # nothing revoked: nothing to do
        assert all(task_id in worker_state.revoked for task_id in ids)
    finally:
        for task_id in ids:
            worker_state.revoked.discard(task_id)


def test_setup_queues_consumes_what_it_includes_less_what_it_excludes():
    # workers.bootsteps.ConsumeWorkerTypeQueues: worker.setup_queues(queues, exclude=paused).
    from types import SimpleNamespace

    from celery import Celery
    from celery.worker import WorkController
    from kombu import Queue

    assert params(WorkController.setup_queues) == ["self", "include", "exclude"]
    probe = Celery("contract", set_as_current=False)
    probe.conf.task_queues = [Queue(q) for q in ("io.high.p0", "io.low.p0", "io.batch.p0", "cpu.high.p0")]
    WorkController.setup_queues(SimpleNamespace(app=probe, hostname="io@contract"),
                                ["io.high.p0", "io.low.p0", "io.batch.p0"], exclude=["io.low.p0"])
    assert list(probe.amqp.queues.consume_from) == ["io.high.p0", "io.batch.p0"]


def test_our_results_backend_does_not_subscribe_when_a_task_is_sent(redis_client):
    # Celery's send_task calls backend.on_task_call, where the Redis backend subscribes to the task's
    # result channel; SubmitOnlyRedisBackend makes it a no-op (tasks/backends.py).
    from celery import Celery

    assert "self.backend.on_task_call(P, task_id)" in source(Celery.send_task)
    assert params(RedisBackend.on_task_call) == ["self", "producer", "task_id"]
    assert "self.result_consumer.consume_from(task_id)" in source(RedisBackend.on_task_call)
    backend = app.backend
    assert isinstance(backend, SubmitOnlyRedisBackend)
    sent = app.send_task("vokaflow.noop", queue=QUEUE)
    key = backend.get_key_for_task(sent.id)
    assert key not in backend.result_consumer.subscribed_to
    try:  # Celery's own would have subscribed
        RedisBackend.on_task_call(backend, None, sent.id)
        assert key in backend.result_consumer.subscribed_to
    finally:
        backend.result_consumer.cancel_for(sent.id)


@pytest.mark.django_db(transaction=True)
def test_celery_db_reuse_max_keeps_the_workers_database_connections_open():
    # Celery's Django fix-up closes every database connection after every task unless
    # CELERY_DB_REUSE_MAX is set (vokaflow.celery sets it; workers.bootsteps drops only broken ones).
    from celery.fixups.django import DjangoWorkerFixup
    from django.db import connection

    fixup = DjangoWorkerFixup(app)
    assert fixup.db_reuse_max == app.conf.CELERY_DB_REUSE_MAX == 1 << 30
    connection.ensure_connection()
    fixup.close_database()  # what the fix-up runs after each task
    assert connection.connection is not None
    fixup.db_reuse_max = None  # Celery's default
    fixup.close_database()
    assert connection.connection is None


# -- the Redis Cluster transport (vokaflow.cluster_transport) and its Flower glue ------------------

def test_kombus_poller_fetches_through_get_and_on_poll_start_and_registers_brpop_per_client():
    # ClusterPoller runs its fetch rounds in get() and on_poll_start(); kombu registers a
    # channel's poll client (the bell's node) by (channel, client, 'BRPOP').
    poller = kombu_redis.MultiChannelPoller
    assert list(inspect.signature(poller.get).parameters) == ["self", "callback", "timeout"]
    assert "self._register_BRPOP(channel)" in inspect.getsource(poller.on_poll_start)
    assert "ident = channel, channel.client, 'BRPOP'" in inspect.getsource(poller._register_BRPOP)
    assert "channel._brpop_start()" in inspect.getsource(poller._register_BRPOP)
    source = inspect.getsource(kombu_redis.Transport.register_with_event_loop)
    assert "loop.on_tick.add(on_poll_start)" in source and "add_reader(fd, on_readable, fd)" in source


def test_kombus_bindings_of_expiring_queues_use_a_two_key_script_the_cluster_channel_avoids():
    source = inspect.getsource(kombu_redis.Channel._queue_bind)
    assert "if queue in self._expires:" in source and "self._script_binding_deadlines" in source
    assert "self.keyprefix_binding_permanent" in source
    for name in ("maybe_refresh_binding_expiry", "sweep_bindings", "_delete", "_purge", "_connparams",
                 "_create_client"):
        assert callable(getattr(kombu_redis.Channel, name)), name
    assert "pipe = pipe.delete(" in inspect.getsource(kombu_redis.Channel._delete)  # why _delete is rewritten


def test_redis_pys_cluster_client_api_the_fetch_rounds_use(cluster):
    from redis.cluster import ClusterPipeline

    client = cluster.client()
    node = client.get_node_from_key("cpu.high.p0{da79}")
    direct = client.get_redis_connection(node)
    connection = direct.connection_pool.get_connection()
    try:
        connection.send_packed_command(connection.pack_commands([("SET", "x{da79}", "1"), ("EXISTS", "x{da79}")]))
        assert [direct.parse_response(connection, "SET"), direct.parse_response(connection, "EXISTS")] == [True, 1]
    finally:
        direct.connection_pool.release(connection)
    client.nodes_manager.initialize()
    assert client.script_load("return 1") == client.script_load("return 1")  # on every primary
    # A cluster pipeline's delete() returns None (kombu chains it), its other commands the pipeline.
    with client.pipeline() as pipe:
        assert pipe.delete("x{da79}") is None and isinstance(pipe.llen("x{da79}"), ClusterPipeline)
        pipe.execute()


def test_flowers_broker_dispatches_on_the_scheme_and_reads_lengths_through_its_client():
    from flower.utils import broker as flower_broker

    from vokaflow.flower_broker import teach

    assert "scheme = urlparse(broker_url).scheme" in inspect.getsource(flower_broker.Broker.__new__)
    assert "self.redis.pipeline()" in inspect.getsource(flower_broker.RedisBase.queues)
    assert "self.priority_steps" in inspect.getsource(flower_broker.RedisBase.queues)
    teach()
    broker = flower_broker.Broker("rediscluster://127.0.0.1:7100/0", http_api=None,
                                  broker_options={"cluster_url": "rediscluster://127.0.0.1:7100/"})
    assert type(broker).__name__ == "ClusterBroker" and broker.priority_steps == [0]
    assert isinstance(flower_broker.Broker("redis://127.0.0.1:6379/0", broker_options={}), flower_broker.Redis)


def test_flower_reads_queue_lengths_on_the_cluster(cluster):
    import asyncio

    from flower.utils import broker as flower_broker

    from vokaflow.flower_broker import teach

    teach()
    client = cluster.client()
    client.rpush("cpu.high.p3{1ed4}", "a", "b")
    broker = flower_broker.Broker("rediscluster://127.0.0.1:7100/0", broker_options={"cluster_url": cluster.url})
    lengths = asyncio.run(broker.queues(["cpu.high.p3{1ed4}", "cpu.high.p0{da79}"]))
    assert lengths == [{"name": "cpu.high.p3{1ed4}", "messages": 2}, {"name": "cpu.high.p0{da79}", "messages": 0}]


def test_a_custom_beat_scheduler_is_built_and_ticked_as_celery_beat_does():
    # tasks.schedules.beat.ScheduleScheduler relies on beat.Scheduler's constructor calling
    # setup_schedule (unless lazy), Service.start calling tick() for the seconds to sleep, and the
    # `beat_scheduler` setting naming the class `celery beat` uses.
    import inspect

    from celery import beat

    assert "self.setup_schedule()" in inspect.getsource(beat.Scheduler.__init__)
    assert "self.scheduler.tick()" in inspect.getsource(beat.Service.start)
    from celery.apps.beat import Beat

    from tasks.schedules.beat import ScheduleScheduler
    from vokaflow.celery import app

    chosen = Beat(app=app, no_color=True).scheduler_cls
    scheduler = beat.Service(app, scheduler_cls=chosen).get_scheduler(lazy=True)
    assert isinstance(scheduler, ScheduleScheduler)


def test_redis_pools_keep_the_locks_a_prefork_child_replaces():
    # workers.bootsteps._fresh_redis_pool_locks: redis-py's pool resets itself in a forked child
    # under `_lock` (after `_fork_lock`); a child gives every inherited pool new ones.
    import inspect
    import threading

    from redis.connection import ConnectionPool

    pool = ConnectionPool()
    assert isinstance(pool._lock, type(threading.RLock())) and isinstance(pool._fork_lock, type(threading.RLock()))
    assert "self._lock" in inspect.getsource(ConnectionPool.reset)
    assert "_fork_lock" in inspect.getsource(ConnectionPool._checkpid)


def test_the_prefork_pool_internals_autoscaling_grows_and_shrinks_through():
    """workers.pools: billiard's pool grows by `grow` and `maintain_pool`, and shrink_idle ends a
    child the way billiard's own `shrink` does, reading which children hold a job."""
    import billiard.pool
    import billiard.process
    from celery.concurrency import asynpool

    shrink = inspect.getsource(billiard.pool.Pool.shrink)
    for name in ("self._processes -= 1", "self._putlock.shrink()", "worker.terminate_controlled()",
                 "self.on_shrink(1)", "self._iterinactive()"):
        assert name in shrink, name
    assert "job.worker_pids()" in inspect.getsource(billiard.pool.Pool._worker_active)
    assert "self._processes += 1" in inspect.getsource(billiard.pool.Pool.grow)
    assert hasattr(billiard.pool.Pool, "maintain_pool")
    assert hasattr(billiard.process.BaseProcess, "terminate_controlled")
    init = inspect.getsource(asynpool.AsynPool.__init__)
    for name in ("self._busy_workers", "self._active_writers", "self._active_writes", "self.outbound_buffer"):
        assert name in init, name
    assert "_write_to" in inspect.getsource(asynpool) and "_scheduled_for" in inspect.getsource(asynpool)
    from celery.concurrency.prefork import TaskPool as Prefork
    assert "return self._pool._processes" in inspect.getsource(Prefork.num_processes.fget)


def test_the_thread_pool_autoscaling_replaces_builds_on_celerys():
    """workers.pools.ThreadPool keeps Celery's thread pool but its executor: BasePool sets `limit`,
    on_apply submits apply_target and wraps the future in ApplyResult, on_stop shuts the executor down."""
    from celery.concurrency.base import BasePool

    assert "self.limit = limit" in inspect.getsource(BasePool.__init__)
    assert "self.executor.submit(apply_target" in inspect.getsource(ThreadPool.on_apply)
    assert "self.executor.shutdown(cancel_futures=True)" in inspect.getsource(ThreadPool.on_stop)
    from workers.pools import ThreadPool as Resizable

    pool = Resizable(limit=2)
    try:
        returned: list = []
        pool.on_apply(lambda word: word.upper(), args=("ran",), kwargs={}, callback=returned.append).wait(5)
        assert returned == ["RAN"]
        pool.resize(4)
        assert pool.limit == 4 and pool.num_processes == 4 and pool._get_info()["threads"] == 4
    finally:
        pool.on_stop()


def test_the_consumer_prefetch_autoscaling_moves():
    """workers.autoscale raises and lowers `Consumer.qos` and resets `initial_prefetch_count`, which
    Celery applies again after a reconnect; reserved requests are what it counts as slots in use."""
    from celery.worker.consumer import tasks as consumer_tasks

    for name in ("self.initial_prefetch_count", "self.prefetch_multiplier"):
        assert name in inspect.getsource(Consumer), name
    assert "c.qos = QoS(" in inspect.getsource(consumer_tasks) and "c.initial_prefetch_count" in \
        inspect.getsource(consumer_tasks)  # the Tasks step builds the QoS from it at every (re)start
    from kombu.common import QoS

    assert hasattr(QoS, "increment_eventually") and hasattr(QoS, "decrement_eventually")
    assert len(worker_state.reserved_requests) == 0 and hasattr(worker_state.reserved_requests, "add")


def test_celerys_cpu_budget_reads_affinity_and_the_cgroup_quota():
    import os

    from celery.utils.sysinfo import cpu_budget

    budget = cpu_budget(use_cgroup_quota=True)
    assert 1 <= budget.count <= len(os.sched_getaffinity(0))

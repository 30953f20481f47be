"""The Redis transport against a Redis of the test's own that stops while a consumer drains it."""

import base64
import json
import threading

import pytest
import redis
from kombu import Connection, Consumer, Producer, Queue

from tests.conftest import OwnRedis, wait_for
from vokaflow import transport

QUEUE = Queue("general.normal.p0", routing_key="general.normal.p0")
OPTIONS = {"priority_steps": [0]}  # as VokaFlow configures it: one Redis list per queue


def consume(url: str, received: list, stop: threading.Event, **options) -> threading.Thread:
    """A kombu consumer on our transport, in a thread, acking what it receives, until its
    connection fails or `stop` is set."""
    def handle(body, message):
        received.append(body["n"])
        message.ack()

    def run():
        try:
            with Connection(url, transport=transport.Transport, transport_options={**OPTIONS, **options}) as conn:
                with Consumer(conn, [QUEUE], callbacks=[handle], prefetch_count=4):
                    while not stop.is_set():
                        try:
                            conn.drain_events(timeout=0.5)
                        except TimeoutError:
                            pass
        except conn.connection_errors:
            pass  # Redis went away

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def publish(url: str, numbers) -> None:
    with Connection(url, transport=transport.Transport, transport_options=OPTIONS) as conn:
        producer = Producer(conn)
        for n in numbers:
            producer.publish({"n": n}, routing_key=QUEUE.name, declare=[QUEUE])


@pytest.mark.parametrize("round_", range(3))
def test_a_redis_stopped_mid_drain_keeps_every_message_queued_or_unacked(tmp_path, round_):
    # With kombu's BRPOP, each such stop loses the message Redis popped last: the pop reaches
    # the AOF, the reply never reaches the consumer.
    own = OwnRedis(tmp_path)
    client = own.start()
    url = f"redis://127.0.0.1:{own.port}/0"
    total = 3000
    try:
        publish(url, range(total))
        received: list[int] = []
        threads = [consume(url, received, threading.Event()) for _ in range(4)]
        wait_for(lambda: len(received) > 200 + 100 * round_, 30, 0.001, "the drain to be under way")
        own.stop()
        for thread in threads:
            thread.join(10)
        client = own.start()
        queued = [numbers(raw) for raw in client.lrange(QUEUE.name, 0, -1)]
        unacked = [numbers(transport.unacked_record(raw)[0]) for raw in client.hvals("unacked")]
        assert set(received) | set(queued) | set(unacked) == set(range(total))
    finally:
        own.stop()


def test_an_idle_consumer_wakes_for_a_message_published_after_it_started_waiting(tmp_path):
    own = OwnRedis(tmp_path)
    own.start()
    url = f"redis://127.0.0.1:{own.port}/0"
    received: list[int] = []
    stop = threading.Event()
    # A 30 s wait (kombu's polling_interval sets it): only the bell can deliver the message
    # within the test's 10 s.
    thread = consume(url, received, stop, polling_interval=30)
    try:
        publish(url, [])  # declares the queue
        for n in range(3):
            wait_for(lambda: own_waiting(own), 10, 0.01, "the consumer to wait on its bell")
            publish(url, [n])
            wait_for(lambda n=n: received == list(range(n + 1)), 10, 0.01, f"message {n} to arrive")
    finally:
        stop.set()
        own.stop()
        thread.join(10)


def own_waiting(own) -> bool:
    """Whether a client of `own` is blocked in XREAD on a bell."""
    clients = redis.Redis(port=own.port).client_list()
    return any(c.get("cmd") == "xread" and c.get("flags", "").find("b") >= 0 for c in clients)


def numbers(raw) -> int:
    envelope = json.loads(raw) if isinstance(raw, bytes | str) else raw
    return json.loads(base64.b64decode(envelope["body"]))["n"]

"""submit_task() against the real Redis: where messages land, idempotency, bad input, broker down."""

import json
import time

import pytest

from tasks.builtin import echo
from tasks.records import task_record
from tasks.submit import submit_task
from tasks.validation import SubmissionError
from tests.conftest import OUR_KEY_PATTERNS, run_python, worker_env

QUEUE_PATTERNS = OUR_KEY_PATTERNS[:5]


def queued(redis_client) -> dict[str, int]:
    """{queue: length} of every non-empty VokaFlow queue."""
    found = {}
    for pattern in QUEUE_PATTERNS:
        for key in redis_client.scan_iter(match=pattern):
            found[key.decode()] = redis_client.llen(key)
    return found


def message_in(redis_client, queue: str) -> dict:
    return json.loads(redis_client.lindex(queue, 0))


def test_a_task_lands_in_the_queue_of_its_type_priority_and_partition(redis_client):
    task_id = submit_task("vokaflow.sleep", args=[0.1], priority="HIGH", partition_key="customer-42")
    assert queued(redis_client) == {"io.high.p5": 1}
    message = message_in(redis_client, "io.high.p5")
    assert message["headers"]["id"] == task_id and message["headers"]["task"] == "vokaflow.sleep"
    assert message["content-type"] == "application/json"
    record = task_record(task_id)
    assert (record.queue, record.priority, record.worker_type, record.partition) == \
        ("io.high.p5", "HIGH", "IO_INTENSIVE", 5)


def test_task_defaults_apply_and_overrides_win(redis_client):
    submit_task("vokaflow.cpu", args=[10], partition_key="a")
    submit_task(echo, worker_type="NETWORK_INTENSIVE", priority="batch", partition_key="a")
    assert queued(redis_client) == {"cpu.normal.p3": 1, "network.batch.p3": 1}


def test_plain_delay_of_a_platform_task_is_routed_to_its_type(redis_client):
    result = echo.delay(1)
    queues = queued(redis_client)
    assert len(queues) == 1 and next(iter(queues)).startswith("general.normal.p")
    assert result.id


def test_an_idempotency_key_returns_the_first_task_and_enqueues_nothing_more(redis_client):
    first = submit_task("vokaflow.echo", args=[1], idempotency_key="order-7")
    again = submit_task("vokaflow.echo", args=[1], idempotency_key="order-7")
    assert again == first
    assert sum(queued(redis_client).values()) == 1
    assert 0 < redis_client.ttl("vokaflow:idem:system:order-7") <= 24 * 3600


def test_countdown_and_eta_are_carried_in_the_message(redis_client):
    task_id = submit_task("vokaflow.echo", countdown=0.5, partition_key="a")
    message = message_in(redis_client, "general.normal.p3")
    assert message["headers"]["id"] == task_id and message["headers"]["eta"]
    assert task_record(task_id).eta is not None


@pytest.mark.parametrize("kwargs, field", [
    ({"task_or_name": "os.system"}, "task"),
    ({"task_or_name": "vokaflow.echo", "priority": "URGENT"}, "priority"),
    ({"task_or_name": "vokaflow.echo", "worker_type": "gpu"}, "worker_type"),
    ({"task_or_name": "vokaflow.echo", "args": {"a": 1}}, "args"),
    ({"task_or_name": "vokaflow.echo", "kwargs": [1]}, "kwargs"),
    ({"task_or_name": "vokaflow.echo", "args": [object()]}, "args"),
    ({"task_or_name": "vokaflow.echo", "kwargs": {"x": {1, 2}}}, "kwargs"),
    ({"task_or_name": "vokaflow.echo", "countdown": -1}, "countdown"),
    ({"task_or_name": "vokaflow.echo", "eta": "next tuesday"}, "eta"),
    ({"task_or_name": "vokaflow.echo", "countdown": 1, "eta": "2030-01-01T00:00:00Z"}, "countdown"),
    ({"task_or_name": "vokaflow.echo", "idempotency_key": ""}, "idempotency_key"),
    ({"task_or_name": "vokaflow.echo", "lock": {"key": "a b", "timeout": 5}}, "lock.key"),
    ({"task_or_name": "vokaflow.echo", "lock": {"key": "a", "timeout": 0}}, "lock.timeout"),
    ({"task_or_name": "vokaflow.echo", "lock": "a"}, "lock"),
])
def test_bad_input_names_the_field_and_enqueues_nothing(redis_client, kwargs, field):
    with pytest.raises(SubmissionError) as raised:
        submit_task(**kwargs)
    assert raised.value.field == field
    assert queued(redis_client) == {}


def test_a_lock_travels_in_the_message_header(redis_client):
    submit_task("vokaflow.echo", lock={"key": "nightly", "timeout": 30}, partition_key="a")
    headers = message_in(redis_client, "general.normal.p3")["headers"]
    assert headers["vokaflow_lock"] == {"key": "nightly", "timeout": 30.0, "skip_if_locked": False}


def test_the_python_api_works_without_a_web_server(redis_client):
    result = run_python(
        "import django; django.setup()\n"
        "from tasks.submit import submit_task\n"
        "print(submit_task('vokaflow.echo', args=['hi'], priority='LOW', partition_key='k'))\n",
        env=worker_env(DJANGO_SETTINGS_MODULE="vokaflow.settings"))
    assert result.returncode == 0, result.stderr
    task_id = result.stdout.strip().splitlines()[-1]
    assert task_record(task_id).queue.startswith("general.low.p")
    assert sum(queued(redis_client).values()) == 1


def test_broker_down_raises_quickly_and_clearly():
    code = (
        "import time, django; django.setup()\n"
        "from tasks.submit import submit_task, BrokerUnavailable\n"
        "started = time.monotonic()\n"
        "try:\n"
        "    submit_task('vokaflow.echo')\n"
        "except BrokerUnavailable as exc:\n"
        "    print('unavailable', round(time.monotonic() - started, 1), exc)\n"
    )
    started = time.monotonic()
    result = run_python(code, env=worker_env(DJANGO_SETTINGS_MODULE="vokaflow.settings",
                                             REDIS_URL="redis://127.0.0.1:1/0"), timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("unavailable"), result.stdout
    assert "127.0.0.1:1" in result.stdout
    assert time.monotonic() - started < 30  # bounded: never a hang


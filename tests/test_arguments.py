"""Built-in tasks' arguments are bounded at submission: 400 naming the argument, nothing enqueued."""

import pytest

from tasks.submit import submit_task
from tasks.validation import SubmissionError
from tests.test_submit import queued

BASE = "/api/high-scale-tasks"


@pytest.mark.parametrize("task, args, kwargs, field, name", [
    ("vokaflow.sleep", [61], {}, "args", "seconds"),
    ("vokaflow.sleep", [], {"seconds": 90}, "kwargs", "seconds"),
    ("vokaflow.sleep", [-1], {}, "args", "seconds"),
    ("vokaflow.sleep", ["5"], {}, "args", "seconds"),
    ("vokaflow.sleep", [True], {}, "args", "seconds"),
    ("vokaflow.cpu", [10**8], {}, "args", "n"),
    ("vokaflow.flaky", [], {"failure_rate": 2}, "kwargs", "failure_rate"),
])
def test_an_argument_out_of_bounds_is_refused_by_name(redis_client, task, args, kwargs, field, name):
    with pytest.raises(SubmissionError) as raised:
        submit_task(task, args=args, kwargs=kwargs)
    assert raised.value.field == field and repr(name) in raised.value.message
    assert queued(redis_client) == {}


def test_arguments_that_do_not_fit_the_signature_are_refused(redis_client):
    with pytest.raises(SubmissionError, match="do not match vokaflow.sleep"):
        submit_task("vokaflow.sleep", args=[1, 2])
    with pytest.raises(SubmissionError, match="do not match"):
        submit_task("vokaflow.cpu", kwargs={"m": 1})
    assert queued(redis_client) == {}


def test_the_limits_themselves_are_accepted(redis_client):
    submit_task("vokaflow.sleep", args=[60])
    submit_task("vokaflow.cpu", kwargs={"n": 10**7})
    submit_task("vokaflow.sleep")  # the default
    assert sum(queued(redis_client).values()) == 3


def test_the_api_answers_400_naming_the_argument_and_the_catalog_shows_the_bounds(api, redis_client):
    response = api.post(f"{BASE}/tasks/", {"task": "vokaflow.sleep", "args": [90]}, format="json")
    assert response.status_code == 400
    assert "'seconds'" in response.json()["errors"]["args"][0] and "60" in response.json()["detail"]
    assert queued(redis_client) == {}
    entries = {e["name"]: e for e in api.get(f"{BASE}/tasks/catalog/").json()}
    (seconds,) = entries["vokaflow.sleep"]["arguments"]
    assert (seconds["name"], seconds["min"], seconds["max"]) == ("seconds", 0, 60)

"""Hand-built task messages carry what Celery's own builder puts in a protocol-2 message."""

import base64
import json
import time

from tasks.messages import task_message
from vokaflow.celery import app


def test_message_matches_celerys_protocol_2_layout():
    ours = json.loads(task_message(task_id="t-1", name="vokaflow.echo", args_json="[1]", kwargs_json='{"a": 2}',
                                   queue="general.high.p0", eta=None, origin="gen1@host"))
    theirs = app.amqp.as_task_v2("t-1", "vokaflow.echo", args=[1], kwargs={"a": 2})
    # Celery's headers, plus VokaFlow's own (they reach the task as attributes of self.request).
    assert {h for h in ours["headers"] if not h.startswith("vokaflow_")} == set(theirs.headers)
    assert abs(ours["headers"]["vokaflow_enqueued_at"] - time.time()) < 60
    assert {k: ours["headers"][k] for k in ("task", "id", "root_id", "retries", "eta")} == \
        {k: theirs.headers[k] for k in ("task", "id", "root_id", "retries", "eta")}
    args, kwargs, embed = json.loads(base64.b64decode(ours["body"]))
    assert (args, kwargs) == ([1], {"a": 2})
    assert embed == dict(zip(("callbacks", "errbacks", "chain", "chord"), [None] * 4))
    assert set(theirs.body[2]) == set(embed)
    assert ours["properties"]["delivery_info"] == {"exchange": "", "routing_key": "general.high.p0"}
    assert ours["content-type"] == "application/json" and ours["properties"]["body_encoding"] == "base64"

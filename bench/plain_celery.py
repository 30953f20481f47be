"""Plain Celery, configured like VokaFlow's workers (JSON, acks late, prefetch 1), for comparison.

    celery -A bench.plain_celery worker -P threads -c 2 -Q plain
"""

import os

from celery import Celery

app = Celery("plain", broker=os.environ["BENCH_REDIS_URL"], backend=os.environ["BENCH_REDIS_URL"])
app.conf.update(
    task_serializer="json", result_serializer="json", accept_content=["json"],
    task_acks_late=True, task_reject_on_worker_lost=True, worker_prefetch_multiplier=1,
    task_default_queue="plain", worker_hijack_root_logger=False,
    broker_transport_options={"visibility_timeout": int(os.environ.get("BENCH_VISIBILITY_TIMEOUT", 3600))},
)


@app.task(name="plain.noop")
def noop():
    return None


@app.task(name="plain.fail")
def fail():
    raise ValueError("failed on purpose")


@app.task(name="plain.echo")
def echo(*args, **kwargs):
    return {"args": list(args), "kwargs": kwargs}

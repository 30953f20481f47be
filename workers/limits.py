"""Every worker keeps its running tasks' limit places and lets waiting tasks out (tasks.limits).

About twice a second, with jitter: the leases of the concurrency places its running tasks hold
are renewed (so a place outlives its worker by VOKAFLOW_LIMIT_LEASE at most), and every limit
instance with waiting tasks lets out those that can start now. Several workers doing it at once
let out no task twice (one script per instance). Redis away: the next tick tries again.
"""

from __future__ import annotations

import random

from workers.polling import PollingStep
from workers.watchdog import _snapshot

INTERVAL = (0.4, 0.6)  # seconds between ticks, picked at random each time


class LimitPoller(PollingStep):
    thread_name = "vokaflow-limits"

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        self.app = worker.app

    def interval(self) -> float:
        return random.uniform(*INTERVAL)

    def tick(self) -> None:
        from celery.worker import state

        from tasks import limits
        from vokaflow.redis import get_redis

        r = get_redis()
        leases = []
        for request in _snapshot(state.active_requests):
            task = self.app.tasks.get(request.name)
            if task is not None and limits.task_limit_names(task):
                leases += [(instance, request.id) for instance in limits.instances_for(task, request.args,
                                                                                       request.kwargs)]
        if leases:
            limits.renew(r, leases)
        limits.let_out_all(r)

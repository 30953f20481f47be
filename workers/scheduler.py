"""Every worker moves due delayed tasks from `vokaflow:scheduled:<type>` to their queues.

About once a second, with jitter so a fleet's workers do not poll in step; the move is one Lua
script (tasks.scheduled.MOVE_DUE), so any number of workers may do it at once, like Sidekiq's
scheduled poller. With no worker running nothing moves, and nothing is lost: due tasks move as
soon as one starts.
"""

from __future__ import annotations

import logging
import random
import threading

from celery import bootsteps

logger = logging.getLogger(__name__)

INTERVAL = (0.75, 1.25)  # seconds between polls, picked at random each time


class ScheduledPoller(bootsteps.StartStopStep):
    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, worker):
        self._thread = threading.Thread(target=self._run, name="vokaflow-scheduled", daemon=True)
        self._thread.start()

    def stop(self, worker):
        self._stop.set()
        if self._thread:
            self._thread.join(2)

    def _run(self):
        from tasks.scheduled import move_due

        while not self._stop.wait(random.uniform(*INTERVAL)):
            try:
                moved = move_due()
                if moved:
                    logger.debug("moved %s due tasks to their queues", moved)
            except Exception as exc:  # Redis away: the tasks wait in their set until the next poll
                logger.warning("moving due tasks failed: %s", exc)

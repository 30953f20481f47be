"""A worker bootstep that does something small in a background thread, over and over."""

from __future__ import annotations

import logging
import threading

from celery import bootsteps

logger = logging.getLogger(__name__)


class PollingStep(bootsteps.StartStopStep):
    """Runs `tick()` every `interval()` seconds in a daemon thread while the worker runs; an error
    is logged and the next tick tries again (Redis may be away for a while)."""

    thread_name = "vokaflow-poller"

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def wanted(self, worker) -> bool:
        return True

    def interval(self) -> float:
        raise NotImplementedError

    def tick(self) -> None:
        raise NotImplementedError

    def start(self, worker):
        if self.wanted(worker):
            self._thread = threading.Thread(target=self._run, name=self.thread_name, daemon=True)
            self._thread.start()

    def stop(self, worker):
        self._stop.set()
        if self._thread:
            self._thread.join(2)

    def _run(self):
        while not self._stop.wait(self.interval()):
            try:
                self.tick()
            except Exception as exc:
                logger.warning("%s: %s", self.thread_name, exc)

"""Pools whose slots can change while the worker runs (workers.autoscale).

* Threads: Celery's thread pool runs a ThreadPoolExecutor, which can neither lose a thread nor,
  without its private `_max_workers`, gain one. `ThreadPool` is Celery's pool with an executor of
  our own: `resize(n)` starts threads, or asks n of them to leave; a leaving thread first finishes
  the task it runs and every task queued ahead of its notice (first in, first out), so nothing
  is dropped. Select it with `-P workers.pools:ThreadPool`; an autoscaled `-P threads` worker gets
  it by itself.
* Prefork: billiard's pool grows by itself (`grow`, then the pool's maintenance starts the
  processes). It shrinks only by ending idle children, and its own `shrink` counts a child as
  idle as soon as it has not yet *acknowledged* a job written to it; `shrink_idle` ends only
  children that have no job written, being written or acknowledged.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from typing import Any

from celery.concurrency.base import apply_target
from celery.concurrency.thread import ApplyResult
from celery.concurrency.thread import TaskPool as CeleryThreadPool
from typing_extensions import override

logger = logging.getLogger(__name__)

_LEAVE = object()  # a thread that takes this from the work queue ends


class ResizableExecutor:
    """The part of concurrent.futures.Executor Celery's thread pool uses, with a resize."""

    def __init__(self, threads: int):
        self._work: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads: set[threading.Thread] = set()
        self._size = 0
        self._serial = 0
        self._shutdown = False
        self.resize(threads)

    @property
    def size(self) -> int:
        """Threads that run or will run tasks (those asked to leave are not counted)."""
        return self._size

    @property
    def threads(self) -> int:
        """Threads alive now (leaving ones included until they have left)."""
        return len(self._threads)

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        self._work.put((future, fn, args))
        return future

    def resize(self, threads: int) -> None:
        with self._lock:
            if self._shutdown:
                return
            while self._size < threads:
                self._serial += 1
                thread = threading.Thread(target=self._run, name=f"vokaflow-slot-{self._serial}", daemon=True)
                self._threads.add(thread)
                self._size += 1
                thread.start()
            while self._size > threads:
                self._size -= 1
                self._work.put(_LEAVE)

    def _run(self) -> None:
        try:
            while True:
                item = self._work.get()
                if item is _LEAVE:
                    return
                future, fn, args = item
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    future.set_result(fn(*args))
                except BaseException as exc:  # handed to the future, as ThreadPoolExecutor does
                    future.set_exception(exc)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            threads = list(self._threads)
        if cancel_futures:
            while True:
                try:
                    item = self._work.get_nowait()
                except queue.Empty:
                    break
                if item is not _LEAVE:
                    item[0].cancel()
        for _ in threads:
            self._work.put(_LEAVE)
        if wait:
            for thread in threads:
                if thread is not threading.current_thread():
                    thread.join()


class ThreadPool(CeleryThreadPool):
    """Celery's thread pool on a ResizableExecutor (`-P workers.pools:ThreadPool`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super(CeleryThreadPool, self).__init__(*args, **kwargs)  # BasePool: sets self.limit
        self.executor = ResizableExecutor(self.limit)

    def resize(self, slots: int) -> None:
        self.limit = slots
        self.executor.resize(slots)

    @override
    def on_apply(self, target, args=None, kwargs=None, callback=None, accept_callback=None, **_):
        return ApplyResult(self.executor.submit(apply_target, target, args, kwargs, callback, accept_callback))

    @override
    def _get_info(self):
        info = super(CeleryThreadPool, self)._get_info()
        info.update({"max-concurrency": self.limit, "threads": self.executor.threads})
        return info


def grow_prefork(pool, n: int) -> None:
    """Add n child processes to a prefork TaskPool (billiard starts them at its next maintenance,
    which runs here at once)."""
    pool._pool.grow(n)
    pool._pool.maintain_pool()


def shrink_idle(pool, n: int) -> int:
    """End up to n children of a prefork TaskPool that hold no job; returns how many. A child the
    pool has written a job to, is writing one to, or that runs one is never chosen."""
    inner = pool._pool
    if getattr(inner, "_active_writers", None) or getattr(inner, "outbound_buffer", None):
        return 0  # a job is on its way to some child: try at the next tick
    busy_fds = set(getattr(inner, "_busy_workers", ())) | set(getattr(inner, "_active_writes", ()))
    jobs = list(inner._cache.values())
    ended = 0
    for proc in list(inner._pool):
        if ended >= n or inner._processes <= 1:
            break
        if getattr(proc, "inqW_fd", None) in busy_fds or not proc.is_alive():
            continue
        if any(proc.pid in job.worker_pids() or _written_to(job, proc) for job in jobs):
            continue
        inner._processes -= 1
        if inner._putlock:
            inner._putlock.shrink()
        proc.terminate_controlled()  # an idle child: it waits for a job and holds none
        inner.on_shrink(1)
        ended += 1
    return ended


def _written_to(job, proc) -> bool:
    return getattr(job, "_write_to", None) is proc or getattr(job, "_scheduled_for", None) is proc

"""Private APIs of Celery and kombu that VokaFlow relies on: these fail loudly when an upgrade changes them."""

import inspect

from celery.backends.base import KeyValueStoreBackend
from celery.backends.redis import RedisBackend, SentinelBackend

from vokaflow.celery import BoundedSentinelBackend, SubmitOnlyRedisBackend, app


def test_result_backends_store_through_the_hooks_vokaflow_results_overrides():
    # vokaflow.results: _get_result_meta builds the stored dict (args/kwargs are dropped from it),
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

"""The autoscaling rule tick by tick on a controlled clock, its configuration, its signal, and the
resizable thread executor (vokaflow.core.autoscale, workers.pools, workers.board, workers.status)."""

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from vokaflow.core.autoscale import (
    ENQUEUED_AT_HEADER,
    READY_AT_HEADER,
    Scaler,
    ScaleRange,
    ready_age,
    scale_range,
)
from vokaflow.core.workers import WorkerType, worker_argv, worker_profile
from workers import board
from workers.pools import ResizableExecutor
from workers.status import autoscale_summary

IO = WorkerType.IO_INTENSIVE


def run(scaler: Scaler, seconds: float, busy, wait: float, start: float = 0.0, memory_ok: bool = True):
    """Tick once a second for `seconds`; `busy` is a number or a function of the slots."""
    decisions = []
    for t in range(int(seconds)):
        slots = scaler.slots
        d = scaler.tick(start + t, 1e9 + start + t, busy(slots) if callable(busy) else busy, wait, memory_ok)
        if d:
            decisions.append((start + t, d.old, d.new))
    return decisions


def test_a_backlog_doubles_the_slots_once_a_second_up_to_max():
    scaler = Scaler(ScaleRange(1, 32, 1.0), start=1)
    decisions = run(scaler, 10, busy=lambda slots: slots, wait=5.0)
    assert decisions == [(1, 1, 2), (2, 2, 4), (3, 4, 8), (4, 8, 16), (5, 16, 32)]  # MAX in 5 s
    assert scaler.last.why == "oldest waiting task 5.0 s > target 1 s with all 16 slots busy"


def test_no_grow_without_pressure_with_a_free_slot_or_with_memory_short():
    assert run(Scaler(ScaleRange(1, 8, 1.0), 2), 10, busy=2, wait=0.5) == []  # waits less than the target
    assert run(Scaler(ScaleRange(1, 8, 1.0), 2), 10, busy=1, wait=5.0) == []  # a slot is free
    assert run(Scaler(ScaleRange(1, 8, 1.0), 2), 10, busy=2, wait=5.0, memory_ok=False) == []


def test_the_ceiling_caps_growth_and_never_goes_below_min():
    scaler = Scaler(ScaleRange(1, 16, 1.0), start=4, ceiling=2)
    assert scaler.slots == 2 and scaler.ceiling == 2
    assert run(scaler, 10, busy=lambda s: s, wait=9.0) == []
    assert Scaler(ScaleRange(3, 16, 1.0), start=1, ceiling=2).ceiling == 3


def test_idle_slots_shrink_after_the_window_to_the_peak_used_or_min():
    scaler = Scaler(ScaleRange(2, 16, 1.0), start=16, idle_window=30)
    decisions = run(scaler, 40, busy=lambda s: 5 if s > 5 else 0, wait=0.0)
    assert decisions == [(30, 16, 5)]  # at most 5 of 16 used for 30 s
    assert scaler.last.why == "at most 5 of 16 slots busy for 30 s"
    later = run(scaler, 40, busy=0, wait=0.0, start=40)
    assert later == [(61, 5, 2)]  # idle: down to MIN, 30 s after the first spare tick after the change


def test_an_old_waiting_task_holds_off_a_shrink():
    scaler = Scaler(ScaleRange(1, 8, 1.0), start=8, idle_window=30)
    assert run(scaler, 60, busy=3, wait=4.0) == []


def test_a_steady_but_jittery_load_settles_and_never_reverses():
    """Ten minutes of a load needing 4 to 8 slots, changing every second."""
    scaler = Scaler(ScaleRange(1, 32, 1.0), start=1, idle_window=30)
    decisions = []
    for second in range(600):
        need = 4 + (second * 7919 % 5)  # 4 to 8
        busy = min(scaler.slots, need)
        d = scaler.tick(second, 1e9 + second, busy, 2.0 if need > scaler.slots else 0.2)
        if d:
            decisions.append((second, d.old, d.new))
    assert [(old, new) for _, old, new in decisions] == [(1, 2), (2, 4), (4, 8)]  # up, then settled
    assert decisions[-1][0] < 10


def test_shrinks_come_at_most_twice_a_minute_even_under_an_on_off_load():
    """A load on for 5 s and off for 32, again and again: each shrink needs 30 s without a change."""
    scaler = Scaler(ScaleRange(1, 8, 1.0), start=8, idle_window=30)
    shrinks, grows = [], []
    for second in range(600):
        on = second % 37 < 5
        busy = scaler.slots if on else 0
        d = scaler.tick(second, 1e9 + second, busy, 3.0 if on else 0.0)
        if d:
            (grows if d.new > d.old else shrinks).append(second)
    assert shrinks and grows
    assert all(sum(1 for u in shrinks if t <= u < t + 60) <= 2 for t in shrinks), shrinks


@pytest.mark.parametrize(("raw", "wait", "expected"), [
    ("1:16", "", ScaleRange(1, 16, 1.0)), (" 2:2 ", "0.5", ScaleRange(2, 2, 0.5)), ("", "3", None)])
def test_ranges_and_targets_are_read_from_the_environment(raw, wait, expected):
    env = {"VOKAFLOW_AUTOSCALE_IO": raw, "VOKAFLOW_TARGET_WAIT_IO": wait}
    assert scale_range(IO, env) == expected


@pytest.mark.parametrize(("name", "value"), [
    ("VOKAFLOW_AUTOSCALE_IO", "16:1"), ("VOKAFLOW_AUTOSCALE_IO", "0:4"), ("VOKAFLOW_AUTOSCALE_IO", "x"),
    ("VOKAFLOW_AUTOSCALE_IO", "1:"), ("VOKAFLOW_AUTOSCALE_IO", "1:99999999999999999999x"),
    ("VOKAFLOW_TARGET_WAIT_IO", "0"), ("VOKAFLOW_TARGET_WAIT_IO", "nan"), ("VOKAFLOW_TARGET_WAIT_IO", "-1"),
    ("VOKAFLOW_TARGET_WAIT_IO", "1e400"), ("VOKAFLOW_TARGET_WAIT_IO", "soon")])
def test_a_malformed_range_or_target_names_its_variable_in_one_line(name, value):
    env = {"VOKAFLOW_AUTOSCALE_IO": "1:4", name: value}
    with pytest.raises(ValueError) as exc:
        scale_range(IO, env)
    message = str(exc.value)
    assert message.startswith(f"{name}={value!r}: expected") and "\n" not in message


def test_the_wait_counts_from_enqueue_due_time_or_let_out_whichever_is_last():
    now = 1_000_000.0
    assert ready_age({ENQUEUED_AT_HEADER: now - 30}, now) == 30
    due = datetime.fromtimestamp(now - 5, tz=UTC).isoformat()
    assert ready_age({ENQUEUED_AT_HEADER: now - 30, "eta": due}, now) == pytest.approx(5)
    assert ready_age({ENQUEUED_AT_HEADER: now - 30, READY_AT_HEADER: now - 2}, now) == 2
    future = (datetime.fromtimestamp(now, tz=UTC) + timedelta(seconds=60)).isoformat()
    assert ready_age({ENQUEUED_AT_HEADER: now - 30, "eta": future}, now) == 0.0
    assert ready_age({"eta": "not a date"}, now) is None and ready_age({}, now) is None
    assert ready_age({ENQUEUED_AT_HEADER: True}, now) is None  # not a number


def test_solo_types_run_one_slot_a_process():
    env = {"VOKAFLOW_POOL_GENERAL": "solo", "VOKAFLOW_CONCURRENCY_GENERAL": "3"}
    assert worker_profile("general", environ=env).pool == "solo"
    with pytest.raises(ValueError, match="VOKAFLOW_POOL_GENERAL='gevent': choose one of threads, prefork, solo"):
        worker_profile("general", environ={"VOKAFLOW_POOL_GENERAL": "gevent"})


def test_worker_argv_gives_a_solo_process_one_slot(monkeypatch):
    monkeypatch.setenv("VOKAFLOW_POOL_GENERAL", "solo")
    monkeypatch.setenv("VOKAFLOW_CONCURRENCY_GENERAL", "3")
    argv = worker_argv("general")
    assert argv[argv.index("-P") + 1] == "solo" and argv[argv.index("-c") + 1] == "1"


def test_the_resizable_executor_shrinks_only_after_queued_work_is_done():
    executor = ResizableExecutor(4)
    assert executor.threads == 4
    gate = threading.Event()
    done: list[int] = []

    def job(n):
        gate.wait(5)
        done.append(n)
        return n

    futures = [executor.submit(job, n) for n in range(10)]
    executor.resize(1)  # three threads leave, each after the work queued ahead of its notice
    gate.set()
    assert [f.result(5) for f in futures] == list(range(10))
    deadline = time.monotonic() + 5
    while executor.threads > 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert executor.threads == 1 and executor.size == 1 and sorted(done) == list(range(10))
    executor.resize(3)
    assert executor.threads == 3 and executor.submit(lambda: "ok").result(5) == "ok"
    failing = executor.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        failing.result(5)
    executor.shutdown(cancel_futures=True)
    assert executor.threads == 0


def test_the_board_carries_each_processs_record_and_the_hosts_decisions(monkeypatch):
    shared = board.create()
    records = [shared.take() for _ in range(3)]
    assert records == [0, 1, 2]
    shared.give_back(1)
    assert shared.take() == 1  # a record is handed out again only once its process has exited
    monkeypatch.setenv(board.SLOT_ENV, "2")
    monkeypatch.setenv(board.TYPE_ENV, "GENERAL_PURPOSE")
    board.write(1, 2.5, 123.0)
    record = shared.read(2)
    assert (record.busy, record.wait, record.fetched_at) == (1, 2.5, 123.0) and record.pid > 0
    assert record.written_at > 0 and shared.read(0).pid == 0
    shared.publish_for("GENERAL_PURPOSE", {"min": 1, "max": 3, "processes": 2})
    shared.publish_for("IO_INTENSIVE", {"min": 1, "max": 9})
    assert board.host_report() == {"min": 1, "max": 3, "processes": 2}
    assert shared.reports()["IO_INTENSIVE"]["max"] == 9


def test_a_report_read_while_the_host_writes_it_is_never_half_a_write():
    shared = board.create()
    stop = threading.Event()

    def write():
        n = 0
        while not stop.is_set():
            n += 1
            shared.publish({"GENERAL_PURPOSE": {"n": n, "pad": "x" * (n % 5000)}})

    writer = threading.Thread(target=write)
    writer.start()
    try:
        seen = [shared.reports() for _ in range(2000)]
    finally:
        stop.set()
        writer.join()
    assert all(r == {} or set(r) == {"GENERAL_PURPOSE"} for r in seen) and any(seen)


def test_a_types_autoscale_summary_sums_ranges_and_counts_a_hosts_report_once():
    decision = {"at": 10.0, "from": 1, "to": 2, "why": "w"}
    later = {"at": 20.0, "from": 2, "to": 4, "why": "w2"}
    workers = [
        {"name": "a", "autoscale": {"min": 1, "max": 8, "target_wait_seconds": 1.0, "decisions": [decision]}},
        {"name": "b", "autoscale": {"min": 1, "max": 4, "target_wait_seconds": 2.0, "decisions": [later]}},
        {"name": "s1", "autoscale": {"min": 1, "max": 3, "target_wait_seconds": 1.0, "scope": "h/general",
                                     "decisions": []}},
        {"name": "s2", "autoscale": {"min": 1, "max": 3, "target_wait_seconds": 1.0, "scope": "h/general",
                                     "decisions": []}},
        {"name": "fixed"},
    ]
    summary = autoscale_summary(workers)
    assert summary["min"] == 3 and summary["max"] == 15 and summary["target_wait_seconds"] == 2.0
    assert summary["last_change"] == later and summary["decisions"] == [later, decision]
    assert autoscale_summary([{"name": "fixed"}]) is None


def oldest_waits() -> dict[tuple[str, str], float]:
    from workers.metrics import oldest_wait

    return {(s.labels["worker_type"], s.labels["priority"]): s.value for s in oldest_wait().samples}


def test_the_oldest_wait_metric_counts_from_the_later_of_enqueue_due_and_let_out(redis_client, db):
    """vokaflow_oldest_wait_seconds, what KEDA scales on, read off the queues' next messages; a
    paused level is left out."""
    import json as jsonlib

    from tasks.submit import enqueue
    from tasks.validation import prepare
    from workers import queues
    from workers.metrics import oldest_wait

    assert set(oldest_waits().values()) == {0.0} and len(oldest_waits()) == 40  # every series, even idle
    [answer] = enqueue([prepare("vokaflow.echo", args=["x"], worker_type="io", priority="HIGH")])
    queue = answer.queue
    # Make the waiting message older, as if queued 120 s ago and let out by a limit 30 s ago.
    raw = jsonlib.loads(redis_client.rpop(queue))
    raw["headers"][ENQUEUED_AT_HEADER] = time.time() - 120
    raw["headers"][READY_AT_HEADER] = time.time() - 30
    redis_client.rpush(queue, jsonlib.dumps(raw))
    waits = oldest_waits()
    assert 29 <= waits[("IO_INTENSIVE", "HIGH")] <= 40 and waits[("IO_INTENSIVE", "LOW")] == 0.0
    [info] = [q for q in queues.non_empty_queues() if q.name == queue]
    assert info.oldest_age_seconds >= 119 and 29 <= info.oldest_wait_seconds <= 40
    queues.pause_level("IO_INTENSIVE", "HIGH")
    try:
        assert oldest_waits()[("IO_INTENSIVE", "HIGH")] == 0.0  # nothing takes from a paused level
    finally:
        queues.resume_level("IO_INTENSIVE", "HIGH")
    assert oldest_wait().name == "vokaflow_oldest_wait_seconds"


@pytest.mark.parametrize("layout", ["v2", "v1"])
def test_memory_is_judged_against_the_nearest_limit_of_the_processs_own_cgroup(tmp_path, layout):
    from workers.autoscale import memory_share

    proc = tmp_path / "cgroup"
    if layout == "v2":
        proc.write_text("0::/system.slice/vokaflow-io.service\n")
        unit, parent = tmp_path / "system.slice" / "vokaflow-io.service", tmp_path / "system.slice"
        names = ("memory.current", "memory.max", "memory.stat", "inactive_file")
    else:
        proc.write_text("5:cpu:/\n4:memory:/kubepods/pod1\n0::/\n")
        unit, parent = tmp_path / "memory" / "kubepods" / "pod1", tmp_path / "memory" / "kubepods"
        names = ("memory.usage_in_bytes", "memory.limit_in_bytes", "memory.stat", "total_inactive_file")
    used, limit, stat, inactive = names
    for folder in (unit, parent):
        folder.mkdir(parents=True, exist_ok=True)
    (unit / used).write_text("900\n")
    (unit / limit).write_text("max\n" if layout == "v2" else str(1 << 62))  # no limit of its own...
    (unit / stat).write_text("anon 100\n")
    (parent / used).write_text("900\n")
    (parent / limit).write_text("1000\n")  # ...its parent's is the nearest
    (parent / stat).write_text(f"anon 500\n{inactive} 300\n")
    assert memory_share(proc, tmp_path) == pytest.approx(0.6)  # (900 - 300 reclaimable) / 1000
    proc.write_text("")
    assert 0 < memory_share(proc, tmp_path) < 1  # no cgroup: the machine's memory


def test_the_fetched_wait_grows_with_the_clock_until_the_next_fetch():
    from vokaflow.hotpath import FetchedWait

    wait = FetchedWait()
    assert wait.seconds == 0.0
    wait.took({ENQUEUED_AT_HEADER: time.time() - 2})
    first = wait.seconds
    time.sleep(0.05)
    assert 2 <= first < wait.seconds < 3  # nothing fetched since: the next task waits longer
    wait.found_none()
    assert wait.seconds == 0.0
    wait.took({"eta": None})  # a message without any time says nothing
    assert wait.seconds == 0.0


def test_a_task_a_limit_lets_out_counts_its_wait_from_then(redis_client):
    """tasks.limits stamps the let-out time on the message it pushes back (READY_AT_HEADER)."""
    import json as jsonlib

    from tasks import limits
    from tasks.messages import task_message

    message = task_message(task_id="t-let-out", name="vokaflow.echo", args_json="[]", kwargs_json="{}",
                           queue="io.high.p0", eta=None, origin="test", enqueued_at=time.time() - 600)
    before = time.time()
    limits.push_out(redis_client, limits.Instance(limits.Limit("unit.ready", concurrency=1)),
                    [(0.0, "t-let-out", message)])
    pushed = jsonlib.loads(redis_client.rpop("io.high.p0"))
    assert pushed["headers"][READY_AT_HEADER] >= round(before, 3) - 0.001
    assert ready_age(pushed["headers"], time.time()) < 5  # not the 600 s since it was enqueued


def test_a_solo_hosts_report_names_its_host_only_to_staff():
    from workers.status import redacted

    report = {"workers": [{"name": "general-1@vm", "host": "vm", "pid": 1, "busy": 0,
                           "autoscale": {"min": 1, "max": 3, "processes": 2, "scope": "vm/general"}}]}
    public = redacted(report)
    assert public["workers"][0] == {"busy": 0, "autoscale": {"min": 1, "max": 3, "processes": 2}}
    assert report["workers"][0]["autoscale"]["scope"] == "vm/general"  # the staff's copy is untouched

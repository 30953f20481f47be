"""Routing, partitions, profiles and the queue cycle: pure functions, no Redis needed."""

import pytest

from vokaflow.core.priorities import Priority
from vokaflow.core.queues import (
    PriorityFairCycle,
    Route,
    all_queues,
    parse_partitions,
    parse_queue,
    partition_for,
    queue_name,
    queues_for,
)
from vokaflow.core.workers import WorkerType, worker_argv, worker_profile


def test_queue_names_follow_type_priority_partition():
    assert queue_name(WorkerType.CPU_INTENSIVE, Priority.HIGH, 3) == "cpu.high.p3"
    assert Route(WorkerType.GENERAL_PURPOSE, Priority.MAINTENANCE, 7).queue == "general.maintenance.p7"


def test_parse_queue_inverts_queue_name():
    for queue in all_queues(8):
        route = parse_queue(queue)
        assert route is not None and route.queue == queue
    assert parse_queue("celery") is None
    assert parse_queue("cpu.urgent.p1") is None


def test_there_is_one_queue_per_type_priority_and_partition():
    queues = all_queues(8)
    assert len(queues) == len(set(queues)) == 5 * 8 * 8


def test_a_partition_key_always_maps_to_the_same_partition():
    assert partition_for("customer-42", 8) == partition_for("customer-42", 8)
    # CRC-32 is fixed: the same on every host, process and Python version.
    assert partition_for("customer-42", 8) == 5
    spread = {partition_for(f"key-{i}", 8) for i in range(200)}
    assert spread == set(range(8))


def test_without_a_key_partitions_are_filled_round_robin():
    seen = [partition_for(None, 8) for _ in range(16)]
    assert sorted(seen) == sorted(list(range(8)) * 2)


def test_partition_lists_parse_ranges_and_reject_nonsense():
    assert parse_partitions("0-3,6", 8) == [0, 1, 2, 3, 6]
    assert parse_partitions(None, 4) == [0, 1, 2, 3]
    for bad in ("9", "a-b", "3-12"):
        with pytest.raises(ValueError):
            parse_partitions(bad, 8)


def test_worker_queues_are_listed_highest_priority_first():
    queues = queues_for(WorkerType.IO_INTENSIVE, 8, [0, 1])
    assert queues[:3] == ["io.emergency.p0", "io.emergency.p1", "io.critical.p0"]
    assert queues[-1] == "io.maintenance.p1"


def test_priority_fair_cycle_keeps_levels_in_order_and_rotates_within_a_level():
    cycle = PriorityFairCycle()
    cycle.update(["io.low.p0", "io.high.p1", "io.high.p0", "io.emergency.p0", "io.low.p1"])
    assert cycle.consume(5) == ["io.emergency.p0", "io.high.p1", "io.high.p0", "io.low.p0", "io.low.p1"]
    cycle.rotate("io.high.p1")
    assert cycle.consume(5) == ["io.emergency.p0", "io.high.p0", "io.high.p1", "io.low.p0", "io.low.p1"]
    cycle.rotate("io.emergency.p0")  # alone in its level: stays first
    assert cycle.consume(1) == ["io.emergency.p0"]


@pytest.mark.parametrize("cpus, expected", [
    (1, {"cpu": 1, "io": 1, "memory": 1, "network": 1, "general": 2}),
    (8, {"cpu": 4, "io": 8, "memory": 2, "network": 8, "general": 4}),
])
def test_profiles_size_pools_from_the_cpu_count(cpus, expected):
    for worker_type in WorkerType:
        assert worker_profile(worker_type, cpu_count=cpus, environ={}).concurrency == expected[worker_type.short]
    assert worker_profile("cpu", environ={}).pool == "prefork"
    assert worker_profile("io", environ={}).pool == "threads"


def test_concurrency_is_overridable_per_type_and_checked():
    assert worker_profile("io", cpu_count=2, environ={"VOKAFLOW_CONCURRENCY_IO": "16"}).concurrency == 16
    with pytest.raises(ValueError, match="VOKAFLOW_CONCURRENCY_CPU"):
        worker_profile("cpu", environ={"VOKAFLOW_CONCURRENCY_CPU": "lots"})


def test_worker_command_line_names_type_partitions_pool_and_concurrency(monkeypatch):
    monkeypatch.setenv("VOKAFLOW_CONCURRENCY_CPU", "3")
    assert worker_argv("cpu", "0-3") == ["celery", "-A", "vokaflow", "worker", "--type", "cpu", "--partitions", "0-3",
                                         "-P", "prefork", "-c", "3", "-n", "cpu@%h", "-l", "INFO"]


def test_unknown_names_list_the_choices():
    with pytest.raises(ValueError, match="EMERGENCY"):
        Priority.parse("URGENT")
    with pytest.raises(ValueError, match="CPU_INTENSIVE"):
        WorkerType.parse("gpu")
    assert Priority.parse("high") is Priority.HIGH and WorkerType.parse("io") is WorkerType.IO_INTENSIVE

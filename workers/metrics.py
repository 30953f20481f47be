"""Prometheus collector: the figures of workers.status, read at scrape time (no second bookkeeping)."""

from __future__ import annotations

from django.conf import settings
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import CollectorRegistry

from tasks.limits import limit_list
from vokaflow.core.priorities import Priority
from vokaflow.core.queues import all_queues, parse_queue
from vokaflow.core.workers import WorkerType
from workers import queues, status


class FleetCollector:
    def collect(self):
        # One scan gives every non-empty queue's depth and its next task's wait (no LLEN pass besides).
        waiting = queues.non_empty_queues()
        depths = dict.fromkeys(all_queues(settings.VOKAFLOW_PARTITIONS), 0) | {q.name: q.depth for q in waiting}
        workers = status.live_workers()
        metrics = status.fleet_metrics(depths, workers)

        depth = GaugeMetricFamily("vokaflow_queue_depth", "Tasks waiting in a queue.",
                                  labels=["queue", "worker_type", "priority", "partition"])
        for queue, n in depths.items():
            route = parse_queue(queue)
            depth.add_metric([queue, route.worker_type.value, route.priority.name, str(route.partition)], n)
        yield depth

        pending = GaugeMetricFamily("vokaflow_pending_tasks", "Tasks waiting, by priority.", labels=["priority"])
        for priority, n in metrics["queue_distribution"].items():
            pending.add_metric([priority], n)
        yield pending

        tasks = CounterMetricFamily("vokaflow_tasks", "Task outcomes since the counters began.",
                                    labels=["worker_type", "priority", "outcome"])
        for worker_type, per_priority in metrics["tasks_by_type"].items():
            for priority, outcomes in per_priority.items():
                for outcome, n in outcomes.items():
                    tasks.add_metric([worker_type, priority, outcome], n)
        yield tasks

        yield GaugeMetricFamily("vokaflow_throughput_per_second", "Tasks finished per second over the last 60 s.",
                                value=metrics["throughput_per_second"])
        yield oldest_wait(waiting)
        live = GaugeMetricFamily("vokaflow_workers", "Live workers (fresh heartbeat).", labels=["worker_type"])
        slots = GaugeMetricFamily("vokaflow_worker_slots", "Slots of live workers now.", labels=["worker_type"])
        target = GaugeMetricFamily("vokaflow_worker_slots_target", "Slots the live workers' autoscaling decided "
                                   "(the slots now where it is off).", labels=["worker_type"])
        busy = GaugeMetricFamily("vokaflow_worker_busy_slots", "Slots running a task.", labels=["worker_type"])
        for worker_type, pool in status.worker_pools(workers).items():
            live.add_metric([worker_type], len(pool["workers"]))
            slots.add_metric([worker_type], pool["max_workers"])
            target.add_metric([worker_type], pool["target_workers"])
            busy.add_metric([worker_type], pool["busy"])
        yield live
        yield slots
        yield target
        yield busy
        yield GaugeMetricFamily("vokaflow_active_workers", "Live workers (fresh heartbeat).",
                                value=metrics["active_workers"])
        yield GaugeMetricFamily("vokaflow_busy_workers", "Live workers running at least one task.",
                                value=metrics["busy_workers"])

        paused = GaugeMetricFamily("vokaflow_paused_level", "1 for a paused (worker type, priority) level.",
                                   labels=["worker_type", "priority"])
        for level in metrics["paused_levels"]:
            paused.add_metric([level["worker_type"], level["priority"]], 1)
        yield paused

        dead = GaugeMetricFamily("vokaflow_dead_letters", "Dead letters by status.", labels=["status"])
        for dead_status, n in metrics["dead_letters"].items():
            dead.add_metric([dead_status], n)
        yield dead

        running = GaugeMetricFamily("vokaflow_limit_running", "Tasks holding a place in a fleet-wide limit.",
                                    labels=["name"])
        waiting = GaugeMetricFamily("vokaflow_limit_waiting", "Tasks waiting in Redis for a fleet-wide limit.",
                                    labels=["name"])
        for limit in limit_list():
            running.add_metric([limit.name], limit.running)
            waiting.add_metric([limit.name], limit.waiting)
        yield running
        yield waiting

        resources = metrics["system_resources"]
        for name in ("cpu_percent", "memory_percent", "disk_usage"):
            yield GaugeMetricFamily(f"vokaflow_api_host_{name}", f"The API host's {name.replace('_', ' ')}.",
                                    value=resources[name])


def oldest_wait(waiting: list[queues.QueueInfo] | None = None) -> GaugeMetricFamily:
    """Per (worker type, priority), how long the oldest task ready to run has waited (0: none); paused
    levels are left out (nothing takes from them), tasks held back by a limit are in no queue. What
    KEDA scales worker Deployments on (deploy/kubernetes)."""
    waits = {(t.value, p.name): 0.0 for t in WorkerType for p in Priority}
    for q in queues.non_empty_queues() if waiting is None else waiting:
        if not q.paused and q.oldest_wait_seconds is not None:
            waits[(q.worker_type, q.priority)] = max(waits[(q.worker_type, q.priority)], q.oldest_wait_seconds)
    family = GaugeMetricFamily("vokaflow_oldest_wait_seconds", "Seconds the oldest task ready to run has waited.",
                               labels=["worker_type", "priority"])
    for (worker_type, priority), seconds in waits.items():
        family.add_metric([worker_type, priority], seconds)
    return family


def fleet_registry() -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector())
    return registry

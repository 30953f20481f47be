"""`python manage.py seed_failures`: submits failing tasks so the dead-letter admin has rows."""

from django.core.management.base import BaseCommand

from tasks.submit import submit_task
from vokaflow.core.priorities import Priority


class Command(BaseCommand):
    help = "Submit a mix of failing tasks (needs running workers to turn them into dead letters)."

    def add_arguments(self, parser):
        parser.add_argument("--count", type=int, default=30)

    def handle(self, *args, count, **options):
        priorities = list(Priority)
        for i in range(count):
            priority = priorities[i % len(priorities)]
            if i % 3 == 2:
                submit_task("vokaflow.flaky", kwargs={"failure_rate": 1.0, "seed": i}, priority=priority)
            else:
                submit_task("vokaflow.fail", args=[f"seeded failure #{i}: order {1000 + i} could not be charged"],
                            priority=priority, worker_type=["GENERAL_PURPOSE", "IO_INTENSIVE", "CPU_INTENSIVE"][i % 3])
        self.stdout.write(f"submitted {count} failing tasks; they appear in /admin/tasks/deadletter/ as workers "
                          "finish them (flaky ones after their retries, about 10 s)")

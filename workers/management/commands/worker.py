"""`python manage.py worker cpu --partitions 0-3`: runs `celery worker` for one worker type."""

import os
import shlex
import shutil
import sys

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from vokaflow.core.queues import parse_partitions
from vokaflow.core.workers import WorkerType, worker_argv


class Command(BaseCommand):
    help = "Start a Celery worker for one worker type, with the queues, pool and concurrency of its profile."

    def add_arguments(self, parser):
        parser.add_argument("type", help="cpu, io, memory, network or general (or the full type name)")
        parser.add_argument("--partitions", help="partitions to serve, e.g. 0-3,6 (default: all)")
        parser.add_argument("--loglevel", default="INFO")
        parser.add_argument("--print", action="store_true", help="print the celery command instead of running it")
        parser.add_argument("celery_args", nargs="*", help="more `celery worker` options, after --")

    def handle(self, *args, **options):
        try:
            worker_type = WorkerType.parse(options["type"])
            if options["partitions"]:
                parse_partitions(options["partitions"], settings.VOKAFLOW_PARTITIONS)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        argv = worker_argv(worker_type, options["partitions"], loglevel=options["loglevel"],
                           extra=options["celery_args"])
        line = shlex.join(argv)
        if options["print"]:
            self.stdout.write(line)
            return
        self.stderr.write(f"[vokaflow] {line}")
        celery = shutil.which("celery", path=os.path.dirname(sys.executable)) or shutil.which("celery")
        if celery is None:
            raise CommandError("the celery command was not found; install requirements.txt")
        os.execv(celery, [celery, *argv[1:]])

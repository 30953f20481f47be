"""`python manage.py launch`: the whole platform on one host (what `make run` starts)."""

import logging
import os
import secrets

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from workers.launcher import Launcher, PortTaken, ProcessSpec, check_ports, python_command
from workers.profiles import WorkerType, worker_argv

logger = logging.getLogger("vokaflow.launcher")

PROCESS_NAMES = ["web", *(t.short for t in WorkerType), "beat", "flower"]


class Command(BaseCommand):
    help = ("Start the API server, one Celery worker per type, Celery beat and Flower, supervised; "
            "Ctrl-C stops them all.")

    def add_arguments(self, parser):
        parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(PROCESS_NAMES)}")
        parser.add_argument("--setup", action="store_true",
                            help="first migrate, collect static files and create the admin user")
        parser.add_argument("--grace", type=float, default=10.0, help="seconds to wait for a clean stop")

    def handle(self, *args, **options):
        chosen = PROCESS_NAMES if not options["only"] else [n.strip() for n in options["only"].split(",")]
        unknown = sorted(set(chosen) - set(PROCESS_NAMES))
        if unknown:
            raise CommandError(f"unknown process {', '.join(unknown)}; choose from {', '.join(PROCESS_NAMES)}")
        if options["setup"]:
            self._setup()
        specs = [spec for spec in self._specs() if spec.name in chosen]
        try:
            check_ports(specs, settings.VOKAFLOW_HOST)
        except PortTaken as exc:
            raise CommandError(str(exc)) from None
        health = f"http://{settings.VOKAFLOW_HOST}:{settings.VOKAFLOW_PORT}/api/health/" if "web" in chosen else None
        Launcher(specs, health_url=health, grace_seconds=options["grace"]).run()

    def _setup(self):
        self.stderr.write("[vokaflow] applying migrations")
        call_command("migrate", interactive=False, verbosity=0)
        call_command("collectstatic", interactive=False, verbosity=0)
        username = os.environ.get("VOKAFLOW_ADMIN_USER", "admin")
        password = os.environ.get("VOKAFLOW_ADMIN_PASSWORD")
        users = get_user_model().objects
        if password:
            user, created = users.get_or_create(username=username, defaults={"is_staff": True, "is_superuser": True})
            user.is_staff = user.is_superuser = True
            user.set_password(password)
            user.save()
            self.stderr.write(f"[vokaflow] admin user {username!r} {'created' if created else 'updated'}")
        elif not users.filter(is_superuser=True).exists():
            self.stderr.write("[vokaflow] no admin user yet: run `make run VOKAFLOW_ADMIN_PASSWORD=...` "
                              "or `.venv/bin/python manage.py createsuperuser`")

    def _specs(self):
        host, port = settings.VOKAFLOW_HOST, settings.VOKAFLOW_PORT
        specs = [ProcessSpec("web", python_command(
            "-m", "gunicorn", "vokaflow.wsgi", "--bind", f"{host}:{port}",
            "--workers", str(settings.VOKAFLOW_WEB_WORKERS), "--threads", "4", "--access-logfile", "-"),
            port=port, address=f"http://{host}:{port}/  (admin /admin/, API docs /api/docs/)")]
        for worker_type in WorkerType:
            argv = worker_argv(worker_type)
            specs.append(ProcessSpec(worker_type.short, python_command("-m", "celery", *argv[1:]),
                                     address=f"celery worker {worker_type.short}@{os.uname().nodename}"))
        (settings.BASE_DIR / ".run").mkdir(exist_ok=True)
        specs.append(ProcessSpec("beat", python_command("-m", "celery", "-A", "vokaflow", "beat", "-l", "INFO"),
                                 address="celery beat (dead-letter flush and retention)"))
        auth = settings.FLOWER_BASIC_AUTH
        if not auth:
            auth = f"admin:{secrets.token_urlsafe(12)}"
            self.stderr.write(f"[vokaflow] FLOWER_BASIC_AUTH is not set: Flower's login for this run is {auth}")
        specs.append(ProcessSpec("flower", python_command(
            "-m", "celery", "-A", "vokaflow", "flower", f"--address={host}", f"--port={settings.FLOWER_PORT}",
            f"--basic-auth={auth}"), port=settings.FLOWER_PORT,
            address=f"http://{host}:{settings.FLOWER_PORT}/  (login from FLOWER_BASIC_AUTH)"))
        return specs

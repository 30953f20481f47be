"""`python manage.py launch`: the whole platform on one host (what `make run` starts)."""

import json
import logging
import os
import secrets
import sys
from dataclasses import asdict
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from vokaflow.core.workers import WorkerType, worker_argv
from workers.launcher import SYSTEMD_TARGET, PortTaken, ProcessSpec, check_ports, systemd_unit

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
        parser.add_argument("--backoff", type=float, default=1.0,
                            help="seconds before the first restart of a process that died (doubles each time)")
        parser.add_argument("--systemd", metavar="DIR",
                            help="write one systemd unit per process into DIR instead of starting them")
        parser.add_argument("--root", help="project folder the units run in (default: this one)")
        parser.add_argument("--python", help="virtualenv python the units run (default: this one)")

    def handle(self, *args, **options):
        chosen = PROCESS_NAMES if not options["only"] else [n.strip() for n in options["only"].split(",")]
        unknown = sorted(set(chosen) - set(PROCESS_NAMES))
        if unknown:
            raise CommandError(f"unknown process {', '.join(unknown)}; choose from {', '.join(PROCESS_NAMES)}")
        if options["systemd"]:
            return self._write_units(chosen, options)
        if options["setup"]:
            self._setup()
        specs = [spec for spec in self._specs() if spec.name in chosen]
        try:
            check_ports(specs, settings.VOKAFLOW_HOST)
        except PortTaken as exc:
            raise CommandError(str(exc)) from None
        health = f"http://{settings.VOKAFLOW_HOST}:{settings.VOKAFLOW_PORT}/api/health/" if "web" in chosen else None
        plan = {"processes": [asdict(spec) for spec in specs], "health_url": health,
                "grace_seconds": options["grace"], "backoff_seconds": options["backoff"],
                "redis_url": settings.REDIS_URL, "sentinel_master": settings.VOKAFLOW_REDIS_SENTINEL_MASTER}
        plan_path = settings.BASE_DIR / ".run" / "launch-plan.json"
        plan_path.write_text(json.dumps(plan))
        plan_path.chmod(0o600)  # it holds the Redis URL, with its password if any
        sys.stdout.flush()
        sys.stderr.flush()
        # The supervisor runs for the fleet's whole life: replace this Django process with one that
        # imports neither Django nor the task code (same pid, so signals and make still reach it).
        os.execv(sys.executable, [sys.executable, "-m", "workers.launcher", str(plan_path)])

    def _write_units(self, chosen, options):
        root = options["root"] or str(settings.BASE_DIR)
        python = options["python"] or sys.executable
        folder = Path(options["systemd"])
        folder.mkdir(parents=True, exist_ok=True)
        names = []
        worker_names = {t.short for t in WorkerType}
        for spec in self._specs(python=python, flower_auth="${FLOWER_BASIC_AUTH}"):
            if spec.name not in chosen:
                continue
            if spec.name in worker_names:
                # Sized on the host that runs it (CPU count, VOKAFLOW_CONCURRENCY_*), and no
                # "%h" for systemd to expand.
                spec = ProcessSpec(spec.name, [python, f"{root}/manage.py", "worker", spec.name])
            # Flower never starts without a password.
            pre = '/bin/sh -c \'test -n "$FLOWER_BASIC_AUTH"\'' if spec.name == "flower" else None
            unit = systemd_unit(spec, root=root, env_file=f"{root}/.env", grace_seconds=options["grace"],
                                exec_start_pre=pre)
            name = f"vokaflow-{spec.name}.service"
            (folder / name).write_text(unit)
            names.append(name)
        (folder / "vokaflow.target").write_text(SYSTEMD_TARGET.format(wants=" ".join(names)))
        self.stdout.write(f"wrote {len(names)} units and vokaflow.target to {folder}; install with:\n"
                          f"  sudo cp {folder}/vokaflow* /etc/systemd/system/ && sudo systemctl daemon-reload "
                          f"&& sudo systemctl enable --now vokaflow.target")

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

    def _specs(self, python: str | None = None, flower_auth: str | None = None):
        host, port = settings.VOKAFLOW_HOST, settings.VOKAFLOW_PORT

        def python_command(*args):
            return [python or sys.executable, *args]

        specs = [ProcessSpec("web", python_command(
            "-m", "gunicorn", "vokaflow.wsgi", "--bind", f"{host}:{port}",
            "--workers", str(settings.VOKAFLOW_WEB_WORKERS), "--threads", "4", "--access-logfile", "-",
            # Load the app once in the master: the web workers share its pages.
            "--preload"),
            port=port, address=f"http://{host}:{port}/  (admin /admin/, API docs /api/docs/)")]
        for worker_type in WorkerType:
            argv = worker_argv(worker_type)
            specs.append(ProcessSpec(worker_type.short, python_command("-m", "celery", *argv[1:]),
                                     address=f"celery worker {worker_type.short}@{os.uname().nodename}"))
        (settings.BASE_DIR / ".run").mkdir(exist_ok=True)
        specs.append(ProcessSpec("beat", python_command("-m", "celery", "-A", "vokaflow", "beat", "-l", "INFO"),
                                 address="celery beat (dead-letter flush and retention)"))
        auth = flower_auth or settings.FLOWER_BASIC_AUTH
        if not auth:
            auth = f"admin:{secrets.token_urlsafe(12)}"
            self.stderr.write(f"[vokaflow] FLOWER_BASIC_AUTH is not set: Flower's login for this run is {auth}")
        specs.append(ProcessSpec("flower", python_command(
            "-m", "celery", "-A", "vokaflow", "flower", f"--address={host}", f"--port={settings.FLOWER_PORT}",
            f"--basic-auth={auth}"), port=settings.FLOWER_PORT,
            address=f"http://{host}:{settings.FLOWER_PORT}/  (login from FLOWER_BASIC_AUTH)"))
        return specs

"""`python manage.py launch`: the whole platform on one host (what `make run` starts)."""

import json
import logging
import os
import secrets
import socket
import sys
from dataclasses import asdict
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError

from vokaflow.core.workers import WorkerType, worker_argv, worker_profile
from vokaflow.redis_connect import BadRedisUrl, cluster_client, is_cluster, redacted_url
from workers.launcher import SYSTEMD_TARGET, PortTaken, ProcessSpec, check_ports, systemd_unit

logger = logging.getLogger("vokaflow.launcher")

PROCESS_NAMES = ["web", *(t.short for t in WorkerType), "beat", "flower"]
FORKED = {*(t.short for t in WorkerType), "beat", "flower"}  # started by workers.host, sharing its imports


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
        self._check_broker()
        if options["setup"]:
            self._setup()
        specs = [spec for spec in self._specs(task_events="flower" in chosen) if spec.name in chosen]
        try:
            check_ports(specs, settings.VOKAFLOW_HOST)
        except PortTaken as exc:
            raise CommandError(str(exc)) from None
        # The workers, beat and Flower are forked from one host process that imported the task code once
        # (workers.host): they share its memory. The launcher supervises the host, the host them.
        forked = [spec for spec in specs if spec.name in FORKED]
        if forked:
            host_plan = self._write_plan("workers-plan.json", forked, None, options)
            ready = {"http": next((s.ready["http"] for s in forked if s.ready and "http" in s.ready), None),
                     "heartbeats": [n for s in forked for n in (s.ready or {}).get("heartbeats", ())]}
            specs = [spec for spec in specs if spec.name not in FORKED]
            specs.append(ProcessSpec("workers", [sys.executable, "-m", "workers.host", str(host_plan)], ready=ready))
        plan_path = self._write_plan("launch-plan.json", specs, self._ready_block(chosen), options)
        sys.stdout.flush()
        sys.stderr.flush()
        # The supervisor runs for the fleet's whole life: replace this Django process with one that
        # imports neither Django nor the task code (same pid, so signals and make still reach it).
        os.execv(sys.executable, [sys.executable, "-m", "workers.launcher", str(plan_path)])

    def _write_plan(self, name: str, specs: list[ProcessSpec], ready_message: str | None, options) -> Path:
        plan = {"processes": [asdict(spec) for spec in specs], "ready_message": ready_message,
                "grace_seconds": options["grace"], "backoff_seconds": options["backoff"],
                "redis_url": settings.REDIS_URL, "sentinel_master": settings.VOKAFLOW_REDIS_SENTINEL_MASTER}
        path = settings.BASE_DIR / ".run" / name
        # Only this user may read it: it holds the Redis URL and Flower's login.
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as file:
            json.dump(plan, file)
        return path

    def _write_units(self, chosen, options):
        root = options["root"] or str(settings.BASE_DIR)
        python = options["python"] or sys.executable
        folder = Path(options["systemd"])
        folder.mkdir(parents=True, exist_ok=True)
        names = []
        worker_names = {t.short for t in WorkerType}
        for spec in self._specs(python=python, systemd=True):
            if spec.name not in chosen:
                continue
            if spec.name in worker_names:
                # Sized on the host that runs it (CPU count, VOKAFLOW_CONCURRENCY_*), and no
                # "%h" for systemd to expand.
                spec = ProcessSpec(spec.name, [python, f"{root}/manage.py", "worker", spec.name])
            # Flower never starts without a password; it reads FLOWER_BASIC_AUTH from the EnvironmentFile.
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

    def _check_broker(self) -> None:
        """A rediscluster:// REDIS_URL whose nodes do not answer, or that is no cluster, stops here
        with one line naming it (password redacted) and why."""
        if is_cluster(settings.REDIS_URL):
            try:
                cluster_client(settings.REDIS_URL).ping(target_nodes="primaries")
            except BadRedisUrl as exc:
                raise CommandError(str(exc)) from None
            except Exception as exc:
                raise CommandError(f"Redis Cluster {redacted_url(settings.REDIS_URL)} cannot be used: {exc}") from None

    def _setup(self):
        self.stderr.write("[vokaflow] applying migrations")
        call_command("migrate", interactive=False, verbosity=0)
        call_command("collectstatic", interactive=False, verbosity=0)
        username, password = settings.VOKAFLOW_ADMIN_USER, settings.VOKAFLOW_ADMIN_PASSWORD
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

    def _specs(self, python: str | None = None, systemd: bool = False, task_events: bool = False):
        host, port = settings.VOKAFLOW_HOST, settings.VOKAFLOW_PORT

        def python_command(*args):
            return [python or sys.executable, *args]

        web = f"http://{host}:{port}"
        specs = [ProcessSpec("web", python_command(
            "-m", "gunicorn", "vokaflow.wsgi", "--bind", f"{host}:{port}",
            "--workers", str(settings.VOKAFLOW_WEB_WORKERS), "--threads", "4", "--access-logfile", "-",
            # Load the app once in the master: the web workers share its pages.
            "--preload"),
            port=port, ready={"http": f"{web}/api/health/"})]
        for worker_type in WorkerType:
            # No banner: it lists the worker's 64 queues; the worker logs one line about them instead.
            # Beside Flower, task events are on from the start: Flower would turn them on within 5 s
            # anyway, and each worker would log that below the ready block.
            argv = worker_argv(worker_type, banner=False, extra=["--task-events"] if task_events else None)
            profile = worker_profile(worker_type)
            if profile.pool == "solo":  # the host runs its processes as `<type>-<n>@host` (workers.host)
                specs.append(ProcessSpec(worker_type.short, python_command("-m", "celery", *argv[1:]),
                                         ready={"heartbeats": [f"{worker_type.short}-1@{socket.gethostname()}"]},
                                         scale={"worker_type": worker_type.value, "processes": profile.concurrency}))
                continue
            name = f"{worker_type.short}@{socket.gethostname()}"
            specs.append(ProcessSpec(worker_type.short, python_command("-m", "celery", *argv[1:]),
                                     ready={"heartbeats": [name]}))
        (settings.BASE_DIR / ".run").mkdir(exist_ok=True)
        specs.append(ProcessSpec("beat", python_command("-m", "celery", "-A", "vokaflow", "beat", "-l", "INFO")))
        # Flower reads FLOWER_BASIC_AUTH from its environment (a systemd unit's EnvironmentFile):
        # a password on its command line would be readable by every user of the host (`ps`).
        env = {}
        if not systemd:
            self.flower_login = settings.FLOWER_BASIC_AUTH or f"admin:{secrets.token_urlsafe(12)}"
            env["FLOWER_BASIC_AUTH"] = self.flower_login
        specs.append(ProcessSpec("flower", python_command(
            "-m", "celery", "-A", "vokaflow", "flower", f"--address={host}", f"--port={settings.FLOWER_PORT}"),
            port=settings.FLOWER_PORT, env=env,
            ready={"http": f"http://{host}:{settings.FLOWER_PORT}/healthcheck"}))
        return specs

    def _ready_block(self, chosen: list[str]) -> str:
        """What `make run` prints last: every address and every login, in one block."""
        web = f"http://{settings.VOKAFLOW_HOST}:{settings.VOKAFLOW_PORT}"
        rows = []
        if "web" in chosen:
            rows += [("console", f"{web}/", "operations console (staff login)"),
                     ("admin", f"{web}/admin/", "dead letters, schedules, users"),
                     ("API docs", f"{web}/api/docs/", "Swagger UI; schema at /api/schema/"),
                     ("ReDoc", f"{web}/api/redoc/", "the same reference on one page"),
                     ("health", f"{web}/api/health/", "open, for load balancers"),
                     ("metrics", f"{web}/metrics", "Prometheus: Bearer $VOKAFLOW_METRICS_TOKEN or an admin login")]
        if "flower" in chosen:
            flower = f"http://{settings.VOKAFLOW_HOST}:{settings.FLOWER_PORT}/"
            rows.append(("Flower", flower, "workers, tasks, broker"))
        workers = [f"{n}@{socket.gethostname()}" for n in chosen if n in {t.short for t in WorkerType}]
        if workers:
            rows.append(("workers", " ".join(workers), ""))
        if "beat" in chosen:
            rows.append(("beat", "celery beat", "schedules (and dead-letter flush and retention)"))
        rows.append(("Redis", redacted_url(settings.REDIS_URL),
                     "Redis Cluster (queues spread over its primaries)" if is_cluster(settings.REDIS_URL)
                     else "broker, results, locks"))
        logins = []
        if "web" in chosen:
            logins.append(("admin", self._admin_login()))
        if "flower" in chosen:
            if settings.FLOWER_BASIC_AUTH:
                user = settings.FLOWER_BASIC_AUTH.split(":", 1)[0]
                logins.append(("Flower", f"user {user!r}, password from FLOWER_BASIC_AUTH (change it in .env)"))
            else:
                logins.append(("Flower", f"{self.flower_login}  (made for this run; set FLOWER_BASIC_AUTH="
                                         "user:password in .env to choose one)"))
        rule = "=" * 78
        lines = ["", rule, "VokaFlow is ready", ""]
        lines += [f"  {name:<9} {address:<38} {note}".rstrip() for name, address, note in rows]
        if logins:
            lines += ["", "Logins"] + [f"  {name:<9} {text}" for name, text in logins]
        lines += ["", "Ctrl-C stops every process.", rule]
        return "\n".join(lines)

    def _admin_login(self) -> str:
        username = settings.VOKAFLOW_ADMIN_USER
        change = f".venv/bin/python manage.py changepassword {username}"
        try:
            exists = get_user_model().objects.filter(username=username, is_superuser=True).exists()
        except DatabaseError:
            exists = False
        if not exists:
            return ("no admin user yet: make run VOKAFLOW_ADMIN_PASSWORD=... "
                    "(or .venv/bin/python manage.py createsuperuser)")
        if settings.VOKAFLOW_ADMIN_PASSWORD:
            return f"user {username!r}, password from VOKAFLOW_ADMIN_PASSWORD (change: {change})"
        return f"user {username!r} (change its password: {change})"

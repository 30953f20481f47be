"""The structure holds: one-way layers, and modules that promise to need no Django really don't."""

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, run_python


def _env_without_django() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["REDIS_URL"] = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    return env


def test_the_import_contracts_hold():
    # Given the contracts in pyproject.toml (layers one way; core and locks free of Django/Celery)
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint_imports)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_lock_module_works_in_a_plain_script_without_django_or_celery():
    # When a fresh interpreter imports vokaflow.locks and takes a lock
    result = run_python(
        "import os, sys\n"
        "from vokaflow import locks\n"
        "lease = locks.acquire('layers-test', ttl=5)\n"
        "locks.release(lease)\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('django', 'celery', 'rest_framework',"
        " 'tasks', 'workers') or m == 'vokaflow.celery')\n"
        "print(loaded, os.environ.get('DJANGO_SETTINGS_MODULE'), lease.fencing_token > 0)\n",
        env=_env_without_django())
    # Then neither Django nor Celery was imported, no settings module was set, and the lock worked
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[] None True"


def test_the_vocabulary_imports_nothing_but_the_standard_library_and_kombu_scheduling():
    result = run_python(
        "import sys\n"
        "before = set(sys.modules)\n"
        "import vokaflow.core.keys, vokaflow.core.priorities, vokaflow.core.queues, vokaflow.core.workers\n"
        "import vokaflow.core.errors\n"
        "new = {m.split('.')[0] for m in set(sys.modules) - before}\n"
        "print(sorted(new & {'django', 'celery', 'redis', 'rest_framework', 'tasks', 'workers'}))\n",
        env=_env_without_django())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"

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


def test_every_redis_key_name_is_defined_once_and_names_its_own_key():
    # A second assignment silently replaces the first: two definitions of one name, or two names for
    # one key, are a mistake waiting to be edited in one place only.
    import ast

    tree = ast.parse((ROOT / "vokaflow" / "core" / "keys.py").read_text())
    names = [target.id for node in tree.body if isinstance(node, ast.Assign)
             for target in node.targets if isinstance(target, ast.Name)]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []
    from vokaflow.core import keys

    values = [getattr(keys, n) for n in names if n != "PREFIX"]
    assert sorted(v for v in set(values) if values.count(v) > 1) == []
    assert keys.CANCEL == "vokaflow:cancel:{}"  # what running tasks and workers already read


def test_pausing_and_the_fleet_views_do_not_import_each_other():
    # workers.status reads the paused levels of workers.queues; workers.queues finds the live workers
    # in workers.live, never in workers.status, not even inside a function (the contract in
    # pyproject.toml, checked above, keeps it so).
    import ast

    def imported(module: str) -> set[str]:
        tree = ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text())
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
        return found

    assert "workers.status" not in imported("workers.queues")
    assert not {"workers.status", "workers.queues"} & imported("workers.live")
    assert '"workers.status",\n    "workers.queues",\n    "workers.live",' in (ROOT / "pyproject.toml").read_text()


def test_the_scripts_and_benchmarks_import_the_installed_package_without_path_tricks(tmp_path):
    # The package is installed editable in the virtualenv: no script puts the checkout on sys.path.
    for path in [*(ROOT / "bench").glob("*.py"), *(ROOT / "scripts").glob("*.py")]:
        assert "sys.path" not in path.read_text(), path
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for script in ("bench/latency.py", "bench/lock_waits.py", "scripts/screenshots.py"):
        # From another folder, so neither the working directory nor PYTHONPATH provides the project.
        result = subprocess.run([sys.executable, str(ROOT / script), "--help"], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"{script}: {result.stderr}"
        assert "usage:" in result.stdout

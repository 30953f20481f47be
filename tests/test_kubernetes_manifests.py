"""deploy/kubernetes agrees with the code it runs: worker types and pools, ports, health paths,
time limits, the metric the autoscalers read, and the settings the pods are given.

Everything expected comes from the code (WorkerType, worker_argv, settings, the URL conf,
FleetCollector) or from the files the manifests mirror (Dockerfile, docker-compose.yml), never
from constants copied here. The probes are run for real: the web's against a live server, the
workers' against a real worker's heartbeat.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from django.conf import settings
from django.http.request import validate_host
from django.urls import resolve

from tests.conftest import ROOT, free_port, run_python, wait_for, worker_env
from vokaflow.core.autoscale import autoscale_env_var, scale_range, target_wait_env_var
from vokaflow.core.workers import WorkerType, worker_argv, worker_profile

K8S = ROOT / "deploy" / "kubernetes"
HPA = K8S / "hpa"
WAIT_METRIC = "vokaflow_oldest_wait_seconds"


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


MAIN_FILES = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
HPA_FILES = sorted(p for p in HPA.glob("*.yaml") if p.name != "kustomization.yaml")
MAIN = [doc for path in MAIN_FILES for doc in documents(path)]
HPAS = [doc for path in HPA_FILES for doc in documents(path)]


def of_kind(kind: str, docs: list[dict] = MAIN) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(kind: str, name: str, docs: list[dict] = MAIN) -> dict:
    found = [doc for doc in of_kind(kind, docs) if doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r}, found {len(found)}"
    return found[0]


def container(workload: dict) -> dict:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"{workload['metadata']['name']}: one container expected"
    return containers[0]


def config() -> dict[str, str]:
    (configmap,) = of_kind("ConfigMap")
    return configmap["data"]


def autoscale(worker_type: WorkerType):
    """The type's range and target wait as the worker reads them from the ConfigMap (ValueError if malformed)."""
    found = scale_range(worker_type, config())
    assert found is not None, f"{autoscale_env_var(worker_type)} is not set: the pod would not autoscale"
    return found


def options(argv: list[str]) -> dict[str, str]:
    """`-X value`, `--long value` and `--long=value` pairs of a command line."""
    found, i = {}, 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("-") and "=" in arg:
            key, value = arg.split("=", 1)
            found[key] = value
        elif arg.startswith("-") and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            found[arg] = argv[i + 1]
            i += 1
        elif arg.startswith("-"):
            found[arg] = ""
        i += 1
    return found


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def compose_command(service: str) -> list[str]:
    """A compose service's command as the container gets it (compose's `$$` is a literal `$`)."""
    return [part.replace("$$", "$") for part in compose()["services"][service]["command"]]


def dockerfile_cmd() -> list[str]:
    (line,) = [line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("CMD ")]
    return json.loads(line[len("CMD "):])


def exec_command(command: list[str]) -> list[str]:
    """The program a `sh -c '... && exec prog args'` wrapper ends up running (or the command itself)."""
    if command[:2] == ["sh", "-c"]:
        return shlex.split(command[2].rsplit("exec ", 1)[1])
    return command


def bind_port(gunicorn_argv: list[str]) -> int:
    return int(options(gunicorn_argv)["--bind"].rsplit(":", 1)[1])


def worker_deployments() -> dict[WorkerType, dict]:
    """Deployments running `celery ... worker`, by the type their --type names."""
    found: dict[WorkerType, list[dict]] = {}
    for deployment in of_kind("Deployment"):
        argv = container(deployment)["command"]
        if argv[:1] == ["celery"] and "worker" in argv:
            found.setdefault(WorkerType.parse(options(argv)["--type"]), []).append(deployment)
    assert all(len(d) == 1 for d in found.values()), "two worker Deployments for one type"
    return {t: d[0] for t, d in found.items()}


def target_of(scaler: dict) -> dict:
    ref = scaler["spec"]["scaleTargetRef"]
    assert ref.get("kind", "Deployment") == "Deployment" and ref.get("apiVersion", "apps/v1") == "apps/v1"
    return one("Deployment", ref["name"])


def type_of(deployment: dict) -> WorkerType:
    return WorkerType.parse(options(container(deployment)["command"])["--type"])


def probe_code(probe: dict) -> str:
    argv = probe["exec"]["command"]
    assert argv[:2] == ["python", "-c"], argv
    return argv[2]


def cpu_cores(quantity: str) -> float:
    quantity = str(quantity)
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


# --- files, kinds, names ------------------------------------------------------------------

def test_every_file_parses_and_each_kustomization_lists_its_folder():
    for doc in MAIN + HPAS:
        assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name"), doc
    main = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(main["resources"]) == [p.name for p in MAIN_FILES]
    hpa = yaml.safe_load((HPA / "kustomization.yaml").read_text())
    assert sorted(hpa["resources"]) == [p.name for p in HPA_FILES]
    # The HPAs are the alternative to KEDA, never applied beside it.
    assert not of_kind("HorizontalPodAutoscaler") and not of_kind("ScaledObject", HPAS)
    (namespace,) = of_kind("Namespace")
    assert main["namespace"] == hpa["namespace"] == namespace["metadata"]["name"]
    for kind in {doc["kind"] for doc in MAIN}:
        names = [doc["metadata"]["name"] for doc in of_kind(kind)]
        assert len(names) == len(set(names)), f"two {kind}s of one name"


def test_every_pod_runs_the_image_compose_builds():
    image = compose()["x-app"]["image"]
    workloads = of_kind("Deployment") + of_kind("Job")
    assert workloads
    for workload in workloads:
        assert container(workload)["image"] == image, workload["metadata"]["name"]


# --- workers --------------------------------------------------------------------------------

def test_every_worker_type_has_a_deployment_a_scaled_object_and_an_hpa():
    deployments = worker_deployments()
    assert set(deployments) == set(WorkerType)
    for scalers in (of_kind("ScaledObject"), of_kind("HorizontalPodAutoscaler", HPAS)):
        targets = [type_of(target_of(scaler)) for scaler in scalers]
        assert sorted(targets) == sorted(WorkerType), "one autoscaler per worker type"


@pytest.mark.parametrize("worker_type", list(WorkerType), ids=lambda t: t.short)
def test_worker_command_is_the_types_own(worker_type):
    argv = container(worker_deployments()[worker_type])["command"]
    expected = worker_argv(worker_type)
    # Celery itself is the container's process: SIGTERM (scale-in) reaches it as a warm shutdown.
    assert argv[:argv.index("worker") + 1] == expected[:expected.index("worker") + 1]
    ours, theirs = options(argv), options(expected)
    assert set(ours) == set(theirs), "the same options as `manage.py worker`"
    assert WorkerType.parse(ours["--type"]) is worker_type
    assert ours["-P"] == worker_profile(worker_type, environ=config()).pool  # VOKAFLOW_POOL_<TYPE> in the pod's env
    assert ours["-n"] == theirs["-n"] and "%h" in ours["-n"]  # the pod's name: what the probe matches
    # -c is the slots the pod starts with; the autoscaler keeps them within MIN..MAX.
    assert autoscale(worker_type).min <= int(ours["-c"]) <= autoscale(worker_type).max


@pytest.mark.parametrize("worker_type", list(WorkerType), ids=lambda t: t.short)
def test_scale_in_drains_within_the_grace_period(worker_type):
    """Warm shutdown waits for running tasks, which end by their hard time limit at the latest;
    a task still running at the visibility timeout would be handed to another worker."""
    grace = worker_deployments()[worker_type]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    data, short = config(), worker_type.short
    hard_limit = max(settings.VOKAFLOW_TIME_LIMITS[short][1],
                     float(data.get(f"VOKAFLOW_TIME_LIMIT_{short.upper()}", data.get("VOKAFLOW_TIME_LIMIT", 0))))
    assert grace > hard_limit
    visibility = float(data.get("VOKAFLOW_VISIBILITY_TIMEOUT", settings.VOKAFLOW_VISIBILITY_TIMEOUT))
    assert grace < visibility


@pytest.mark.parametrize("worker_type", list(WorkerType), ids=lambda t: t.short)
def test_worker_resources(worker_type):
    deployment = worker_deployments()[worker_type]
    resources = container(deployment)["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]
    if worker_profile(worker_type, environ=config()).pool == "prefork":
        # Processes beyond the pod's cores only queue for CPU: the limit caps the pool.
        cores = cpu_cores(resources["limits"]["cpu"])
        assert int(options(container(deployment)["command"])["-c"]) <= math.floor(cores)
        assert autoscale(worker_type).max <= math.floor(cores)


def test_worker_liveness_probe_reads_this_pods_heartbeat(start_worker):
    """The probe runs with only the pod's environment (no DJANGO_SETTINGS_MODULE from pytest):
    it fails while Redis cannot be read and passes once a worker on this host sends heartbeats."""
    codes = set()
    for deployment in worker_deployments().values():
        spec = container(deployment)
        assert probe_code(spec["startupProbe"]) == probe_code(spec["livenessProbe"])
        codes.add(probe_code(spec["livenessProbe"]))
    (code,) = codes
    env = worker_env()
    env.pop("DJANGO_SETTINGS_MODULE", None)
    assert run_python(code, {**env, "REDIS_URL": "redis://127.0.0.1:1/0"}).returncode != 0
    start_worker("general")
    wait_for(lambda: run_python(code, env).returncode == 0, 20, 0.2, "the liveness probe to pass")


# --- web and Flower ------------------------------------------------------------------------

def test_web_runs_the_images_command_on_its_port():
    web = one("Deployment", "vokaflow-web")
    argv = container(web)["command"]
    assert argv == dockerfile_cmd() == compose_command("web")
    port = bind_port(argv)
    (container_port,) = container(web)["ports"]
    assert container_port["containerPort"] == port
    assert_service_reaches("vokaflow-web", web, port)


def test_flower_beat_and_migrate_run_composes_commands():
    flower = one("Deployment", "vokaflow-flower")
    assert container(flower)["command"] == compose_command("flower")
    port = int(options(exec_command(container(flower)["command"]))["--port"])
    expose = next(line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("EXPOSE "))
    assert str(port) in expose.split()
    assert [p["containerPort"] for p in container(flower)["ports"]] == [port]
    assert_service_reaches("vokaflow-flower", flower, port)
    assert container(one("Deployment", "vokaflow-beat"))["command"] == compose_command("beat")
    assert container(one("Job", "vokaflow-migrate"))["command"] == compose_command("migrate")


def assert_service_reaches(name: str, deployment: dict, port: int) -> None:
    service = one("Service", name)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    named = {p["name"]: p["containerPort"] for p in container(deployment)["ports"]}
    (service_port,) = service["spec"]["ports"]
    target = service_port["targetPort"]
    assert named.get(target, target) == port and service_port["port"] == port


def web_probe_urls() -> dict[str, str]:
    spec = container(one("Deployment", "vokaflow-web"))
    urls = {}
    for kind in ("readinessProbe", "livenessProbe"):
        (url,) = re.findall(r"https?://[^'\"\s]+", probe_code(spec[kind]))
        urls[kind] = url
    return urls


def test_web_probes_ask_the_health_view_on_an_allowed_host():
    port = container(one("Deployment", "vokaflow-web"))["ports"][0]["containerPort"]
    allowed = config()["ALLOWED_HOSTS"].split(",")
    for url in web_probe_urls().values():
        parts = urlsplit(url)
        assert resolve(parts.path).url_name == "health"
        assert parts.port == port and validate_host(parts.hostname, allowed)
    # Prometheus scrapes /metrics through the Service's name (web.yaml): Django must accept it.
    namespace = yaml.safe_load((K8S / "kustomization.yaml").read_text())["namespace"]
    assert validate_host(f"vokaflow-web.{namespace}.svc", allowed)
    assert resolve("/metrics").url_name == "prometheus"


@pytest.mark.django_db(transaction=True)
def test_web_probes_pass_against_a_live_server_without_workers(live_server):
    """No worker is running, so /api/health/ answers 503: the web is still alive and ready (it
    can queue tasks, and KEDA reads the wait through it). Nothing listening fails both."""
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    spec = container(one("Deployment", "vokaflow-web"))
    for kind, url in web_probe_urls().items():
        origin = f"{urlsplit(url).scheme}://{urlsplit(url).netloc}"
        code = probe_code(spec[kind])
        result = run_python(code.replace(origin, live_server.url), env, timeout=30)
        assert result.returncode == 0, f"{kind}: {result.stderr}"
        assert run_python(code.replace(origin, f"http://127.0.0.1:{free_port()}"), env).returncode != 0


# --- the autoscalers' metric ------------------------------------------------------------------

SELECTOR = re.compile(r"([a-zA-Z_:][\w:]*)\{([^}]*)\}")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')


def metric_uses() -> list[tuple[str, dict[str, str], WorkerType, float, str]]:
    """(metric, equality label matchers, the scaled Deployment's type, target, kind) of every
    ScaledObject trigger and HPA metric."""
    uses = []
    for scaled in of_kind("ScaledObject"):
        for trigger in scaled["spec"]["triggers"]:
            assert trigger["type"] == "prometheus" and trigger.get("metricType") == "Value"
            ((name, matchers),) = SELECTOR.findall(trigger["metadata"]["query"])
            labels = {k: v for k, op, v in MATCHER.findall(matchers) if op == "="}
            uses.append((name, labels, type_of(target_of(scaled)), float(trigger["metadata"]["threshold"]),
                         "ScaledObject"))
    for hpa in of_kind("HorizontalPodAutoscaler", HPAS):
        for metric in hpa["spec"]["metrics"]:
            assert metric["type"] == "External" and metric["external"]["target"]["type"] == "Value"
            external = metric["external"]
            uses.append((external["metric"]["name"], external["metric"]["selector"]["matchLabels"],
                         type_of(target_of(hpa)), float(external["target"]["value"]), "HPA"))
    return uses


def test_autoscalers_scale_each_type_on_its_own_wait_and_target():
    uses = metric_uses()
    assert len(uses) == 2 * len(WorkerType)
    for name, labels, worker_type, target, kind in uses:
        assert name == WAIT_METRIC, kind
        assert labels["worker_type"] == worker_type.value, f"{kind} of {worker_type.short} reads another type"
        assert target == autoscale(worker_type).target_wait, "the same target as the pods' own autoscaler"
    for scaled in of_kind("ScaledObject"):
        spec = scaled["spec"]
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
        behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        assert behavior["scaleDown"]["stabilizationWindowSeconds"] > 0 and spec["cooldownPeriod"] > 0
    for hpa in of_kind("HorizontalPodAutoscaler", HPAS):
        spec = hpa["spec"]
        assert 1 <= spec["minReplicas"] <= spec["maxReplicas"]
        assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] > 0


@pytest.mark.django_db
def test_the_metric_the_autoscalers_read_is_exported_with_those_labels():
    """FleetCollector, as /metrics runs it, on the suite's Redis: with a task waiting for every
    type, the family names a series for each type the autoscalers select."""
    from tasks.submit import submit_task
    from workers.metrics import FleetCollector

    for worker_type in WorkerType:
        submit_task("vokaflow.echo", args=["k8s"], worker_type=worker_type.short, priority="LOW")
    families = {family.name: family for family in FleetCollector().collect()}
    assert WAIT_METRIC in families, f"workers.metrics exports no {WAIT_METRIC} (it has {sorted(families)})"
    samples = families[WAIT_METRIC].samples
    assert {s.labels["worker_type"] for s in samples} <= {t.value for t in WorkerType}
    for name, labels, _, _, kind in metric_uses():
        assert name in families, f"{kind}: workers.metrics exports no {name}"
        matching = [s for s in families[name].samples if labels.items() <= s.labels.items()]
        assert matching, f"{kind}: no {name} series with {labels}"


# --- configuration ------------------------------------------------------------------------

def test_pods_take_the_configmap_and_secret_that_exist():
    (configmap,), (secret,) = of_kind("ConfigMap"), of_kind("Secret")
    sources = [{"configMapRef": {"name": configmap["metadata"]["name"]}},
               {"secretRef": {"name": secret["metadata"]["name"]}}]
    for workload in of_kind("Deployment") + of_kind("Job"):
        spec = container(workload)
        # Both, the Secret last: a key in both (a REDIS_URL with a password) takes the Secret's value.
        assert spec["envFrom"] == sources, workload["metadata"]["name"]
        for var in spec.get("env", []):
            ref = var.get("valueFrom", {})
            if "configMapKeyRef" in ref:
                assert ref["configMapKeyRef"]["key"] in configmap["data"]
            if "secretKeyRef" in ref:
                assert ref["secretKeyRef"]["key"] in secret["stringData"]
    assert {"SECRET_KEY", "DATABASE_URL"} <= set(secret["stringData"])
    assert not set(secret["stringData"]) & set(configmap["data"]), "a setting in both: which one wins is unclear"


def test_every_setting_given_to_the_pods_is_one_the_code_reads():
    data = config()
    per_type = {autoscale_env_var(t) for t in WorkerType} | {target_wait_env_var(t) for t in WorkerType}
    assert per_type <= set(data), "every type autoscales, each with its own target wait"
    # A per-type name for no type (VOKAFLOW_AUTOSCALE_GPU) would be silently ignored by every worker.
    unknown = sorted(key for key in data if key.startswith(("VOKAFLOW_AUTOSCALE_", "VOKAFLOW_TARGET_WAIT_"))
                     and key not in per_type and key != "VOKAFLOW_AUTOSCALE_IDLE")
    assert not unknown, f"names no worker type: {unknown}"
    for worker_type in WorkerType:
        autoscale(worker_type)  # parses as the worker parses it at start (a malformed range stops it)
    source = "\n".join(path.read_text() for folder in ("vokaflow", "workers", "tasks")
                       for path in (ROOT / folder).rglob("*.py")) + (ROOT / "manage.py").read_text()
    (secret,) = of_kind("Secret")
    given = (set(data) - per_type) | set(secret["stringData"])
    given |= {var["name"] for workload in of_kind("Deployment") for var in container(workload).get("env", [])}
    unread = sorted(key for key in given if not re.search(rf"\b{key}\b", source))
    assert not unread, f"set for the pods but read nowhere: {unread}"

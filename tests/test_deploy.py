"""deploy/: the files render, validate and say what they must, and KEDA reads the truth.

* Kubernetes: every kustomization renders (``kubectl kustomize``, offline), the core kinds
  validate strictly against bundled schemas (``kubernetes-validate``), the KEDA triggers
  use the documented redis-streams fields and taskq's real stream key and group, grace
  periods exceed the shutdown timeout, probes hit ``/healthz``, ``TASKQ_PROCS`` comes from
  the CPU limit.
* The Dockerfile (no daemon here: content checks, a build where one exists), compose.yaml,
  the systemd units (``systemd-analyze verify``) and the supervisord program.
* What KEDA's scaler reads (XINFO GROUPS lag, XPENDING count) against a real node mid-run.
Each tool that is missing skips its test with the reason.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis as redis_lib

import taskq
from taskq.broker.keys import GROUP, QueueKeys

yaml = pytest.importorskip("yaml", reason="pyyaml is in the test extra")

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
KUSTOMIZATIONS = ["base", "overlays/keda", "overlays/keda-jobs"]
K8S_VERSION = "1.30.0"  # the oldest Kubernetes the manifests are meant for
DEFAULT_SHUTDOWN = 30.0  # taskq worker's --shutdown-timeout default
# KEDA's redis-streams trigger metadata (keda.sh/docs/latest/scalers/redis-streams).
KEDA_REDIS_STREAMS_FIELDS = {
    "address", "addressFromEnv", "host", "hostFromEnv", "port", "portFromEnv",
    "usernameFromEnv", "passwordFromEnv", "stream", "consumerGroup", "pendingEntriesCount",
    "streamLength", "lagCount", "activationLagCount", "enableTLS", "unsafeSsl", "databaseIndex",
}


# -- Kubernetes ----------------------------------------------------------------------------


def render(kustomization: str) -> list[dict[str, Any]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: cannot render the kustomizations")
    done = subprocess.run(["kubectl", "kustomize", str(K8S / kustomization)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, pod spec) of every workload: Deployments and the ScaledJob's Job template."""
    for d in docs:
        if d["kind"] == "Deployment":
            yield d["metadata"]["name"], d["spec"]["template"]["spec"]
        elif d["kind"] == "ScaledJob":
            yield d["metadata"]["name"], d["spec"]["jobTargetRef"]["template"]["spec"]


def shutdown_timeout(args: list[str]) -> float:
    return float(args[args.index("--shutdown-timeout") + 1]) if "--shutdown-timeout" in args \
        else DEFAULT_SHUTDOWN


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_renders_and_core_kinds_validate(kustomization: str) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is in the test extra")
    docs = render(kustomization)
    validated = 0
    for doc in docs:
        if doc["apiVersion"].startswith("keda.sh/"):
            if doc["kind"] != "ScaledJob":
                continue  # KEDA's CRDs have no bundled schema; checked field by field below
            # Its jobTargetRef is a batch/v1 JobSpec: validate it as one.
            doc = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "job"},
                   "spec": doc["spec"]["jobTargetRef"]}
        kv.validate(doc, K8S_VERSION, strict=True)
        validated += 1
    assert validated >= 4
    assert not [d for d in docs if d["kind"] == "Secret"], "a placeholder Secret would be applied"


def test_secret_example_validates_and_holds_no_real_value() -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is in the test extra")
    secret = yaml.safe_load((K8S / "base/secret.example.yaml").read_text())
    kv.validate(secret, K8S_VERSION, strict=True)
    assert set(secret["stringData"]) == {"TASKQ_SECRET", "REDIS_PASSWORD", "TASKQ_DASHBOARD_AUTH"}
    assert all("change-me" in v for v in secret["stringData"].values())


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_pods_stop_gracefully_probe_healthz_and_run_locked_down(kustomization: str) -> None:
    docs = render(kustomization)
    config = one(docs, "ConfigMap", "taskq-config")["data"]
    metrics_port = int(config["TASKQ_METRICS"].rpartition(":")[2])
    for name, spec in pod_specs(docs):
        (container,) = spec["containers"]
        args = container["args"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert {"cpu", "memory"} <= set(container["resources"]["limits"]), name
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", name
        probe_port = ports[container["livenessProbe"]["httpGet"]["port"]]
        if args[0] == "worker":
            assert spec["terminationGracePeriodSeconds"] > shutdown_timeout(args), name
            assert probe_port == metrics_port  # the node serves /healthz on TASKQ_METRICS
            env = {e["name"]: e for e in container["env"]}
            procs = env["TASKQ_PROCS"]["valueFrom"]["resourceFieldRef"]
            assert procs == {"containerName": container["name"], "resource": "limits.cpu",
                             "divisor": "1"}
            url = env["TASKQ_URL"]["value"]
            for var in re.findall(r"\$\((\w+)\)", url):  # defined before use, or not expanded
                assert var in config or list(env).index(var) < list(env).index("TASKQ_URL"), var
        else:
            assert args[:1] == ["dashboard"] and "--allow-actions" not in args
            assert probe_port == int(args[args.index("--port") + 1])


def test_keda_scaledobject_two_documented_triggers_on_taskqs_stream() -> None:
    docs = render("overlays/keda")
    config = one(docs, "ConfigMap", "taskq-config")["data"]
    worker = one(docs, "Deployment", "taskq-worker")
    assert "replicas" not in worker["spec"], "KEDA's HPA owns the replica count"
    scaled = one(docs, "ScaledObject", "taskq-worker")["spec"]
    assert scaled["scaleTargetRef"]["name"] == "taskq-worker"
    assert scaled["minReplicaCount"] == 0
    behavior = scaled["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 60
    triggers = scaled["triggers"]
    check_triggers(docs, triggers, config)
    kinds = sorted(next(k for k in ("lagCount", "pendingEntriesCount") if k in t["metadata"])
                   for t in triggers)
    assert kinds == ["lagCount", "pendingEntriesCount"]
    (lag,) = [t["metadata"] for t in triggers if "lagCount" in t["metadata"]]
    assert "activationLagCount" in lag  # the backlog is what wakes the fleet from zero
    (pending,) = [t["metadata"] for t in triggers if "pendingEntriesCount" in t["metadata"]]
    assert "lagCount" not in pending  # one trigger reads one thing


def test_keda_scaledjob_runs_burst_workers_on_the_backlog() -> None:
    docs = render("overlays/keda-jobs")
    assert not [d for d in docs if d["metadata"]["name"] == "taskq-worker"]
    job = one(docs, "ScaledJob", "taskq-burst")["spec"]
    (container,) = job["jobTargetRef"]["template"]["spec"]["containers"]
    assert container["args"][:2] == ["worker", "--burst"]
    assert job["rollout"]["strategy"] == "gradual"  # an update must not kill running Jobs
    (trigger,) = job["triggers"]
    assert "lagCount" in trigger["metadata"]
    check_triggers(docs, job["triggers"], one(docs, "ConfigMap", "taskq-config")["data"])


def check_triggers(docs: list[dict[str, Any]], triggers: list[dict[str, Any]],
                   config: dict[str, str]) -> None:
    auth = one(docs, "TriggerAuthentication", "taskq-redis")["spec"]["secretTargetRef"]
    assert {a["parameter"] for a in auth} <= {"username", "password"}
    for trigger in triggers:
        meta = trigger["metadata"]
        assert trigger["type"] == "redis-streams"
        assert set(meta) <= KEDA_REDIS_STREAMS_FIELDS, set(meta) - KEDA_REDIS_STREAMS_FIELDS
        assert all(isinstance(v, str) for v in meta.values()), "KEDA metadata values are strings"
        assert meta["stream"] == QueueKeys(config["TASKQ_QUEUE"]).stream
        assert meta["consumerGroup"] == GROUP
        assert meta["addressFromEnv"] in config
        assert meta["databaseIndex"] == config["TASKQ_REDIS_DB"]
        assert trigger["authenticationRef"]["name"] == "taskq-redis"
        for key in ("lagCount", "activationLagCount", "pendingEntriesCount"):
            if key in meta:
                assert int(meta[key]) >= 0


# -- Dockerfile, compose, systemd, supervisord ---------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (DEPLOY / "docker/Dockerfile").read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1]) for ln in lines]


def test_dockerfile_runs_taskq_worker_as_non_root_in_exec_form() -> None:
    steps = dockerfile_instructions()
    final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM"):]
    ops = dict(final)  # the runtime stage: the last value of each instruction
    assert re.match(r"python:3\.\d+-slim\b", ops["FROM"])
    user = ops["USER"].split(":")[0]
    assert user not in ("root", "0") and user.isdigit()  # numeric: runAsNonRoot can check it
    argv = json.loads(ops["ENTRYPOINT"]) + json.loads(ops["CMD"])  # json: exec form only
    assert argv == ["taskq", "worker"]
    assert ops["STOPSIGNAL"] == "SIGTERM"
    health = ops["HEALTHCHECK"]
    assert "/healthz" in health and json.loads(health.split("CMD", 1)[1].strip())[0] == "python"
    # Dependencies come from the project's own pyproject.toml, installed as a package.
    copies = " ".join(arg for op, arg in steps if op == "COPY")
    assert "pyproject.toml" in copies
    assert any(op == "RUN" and re.search(r"pip install \"?\.(\[|\"|\s|$)", arg) for op, arg in steps)


def test_docker_build_where_a_daemon_exists(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "info"], capture_output=True,
                                        timeout=30).returncode != 0:
        pytest.skip("no Docker daemon on this machine: the Dockerfile is checked by content only")
    done = subprocess.run([docker, "build", "-q", "-f", str(DEPLOY / "docker/Dockerfile"), str(ROOT)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]


def test_compose_file_names_what_it_should() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert "--appendonly" in services["redis"]["command"]
    assert services["redis"]["command"][services["redis"]["command"].index("--appendonly") + 1] == "yes"
    worker = services["worker"]
    assert worker["init"] is True and worker["deploy"]["replicas"] >= 1
    grace = float(worker["stop_grace_period"].rstrip("s"))
    assert grace > shutdown_timeout(worker["command"])
    assert worker["build"]["dockerfile"] == "deploy/docker/Dockerfile"
    assert (DEPLOY / worker["build"]["context"] / worker["build"]["dockerfile"]).is_file()
    dashboard = services["dashboard"]
    assert dashboard["command"][0] == "dashboard"
    assert dashboard["ports"] and all(p.startswith("127.0.0.1:") for p in dashboard["ports"])
    monitoring = {n for n, s in services.items() if "monitoring" in s.get("profiles", [])}
    assert monitoring == {"prometheus", "grafana"}
    mounts = [v.split(":")[0] for n in monitoring for v in services[n]["volumes"] if v.startswith(".")]
    assert "./monitoring/grafana-dashboard.json" in mounts
    assert "./monitoring/prometheus-alerts.yaml" in mounts
    for path in mounts:  # ours must exist; deploy/monitoring/ comes with the dashboard work
        assert path.startswith("./monitoring/") or (DEPLOY / path).is_file(), path
    prometheus = yaml.safe_load((DEPLOY / "compose/prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in prometheus["scrape_configs"]}
    assert jobs["taskq-worker"]["dns_sd_configs"][0]["port"] == 9808


def test_systemd_units(tmp_path: Path) -> None:
    units = sorted((DEPLOY / "systemd").glob("*.service"))
    assert [u.name for u in units] == ["taskq-dashboard.service", "taskq-worker.service"]
    for unit in units:
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read(unit)
        service = parser["Service"]
        assert service["KillSignal"] == "SIGTERM" and service["User"] != "root"
        if unit.name == "taskq-worker.service":
            args = service["ExecStart"].split()
            assert float(service["TimeoutStopSec"]) > shutdown_timeout(args)
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: units checked by content only")
    # verify wants ExecStart's binary to exist: point it at this venv's taskq.
    taskq_bin = Path(sys.executable).with_name("taskq")
    for unit in units:
        text = unit.read_text().replace("/srv/app/.venv/bin/taskq", str(taskq_bin))
        (tmp_path / unit.name).write_text(text)
    done = subprocess.run([analyze, "verify", *sorted(map(str, tmp_path.glob("*.service")))],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "Unknown" not in done.stderr, done.stderr


def test_supervisord_program_outlasts_the_shutdown_timeout() -> None:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(DEPLOY / "supervisord.conf")
    program = parser["program:taskq-worker"]
    assert program["stopsignal"] == "TERM"
    assert float(program["stopwaitsecs"]) > shutdown_timeout(program["command"].split())


def test_docs_describe_every_deploy_file_and_the_three_ways() -> None:
    readme = (DEPLOY / "README.md").read_text()
    ours = [p for p in DEPLOY.rglob("*") if p.is_file() and "monitoring" not in p.parts
            and p.name != "README.md"]
    missing = [str(p.relative_to(DEPLOY)) for p in ours if str(p.relative_to(DEPLOY)) not in readme]
    assert not missing, f"deploy/README.md does not describe {missing}"
    section = (ROOT / "README.md").read_text().split("## Deploy", 1)[1].split("\n## ", 1)[0]
    for command in ("systemctl enable --now taskq-worker", "docker compose -f deploy/compose.yaml",
                    "kubectl apply -k deploy/kubernetes/overlays/keda"):
        assert command in section, command


# -- what KEDA reads, against a real node mid-run ------------------------------------------

HOLD_TASKS = '''
"""A task that runs until the test opens its gate: the node is mid-run for as long as needed."""
import os, pathlib, time
import taskq
DIR = pathlib.Path(os.environ["DEPLOY_TEST_DIR"])

@taskq.task(name="deploy.hold")
def hold(i: int) -> int:
    (DIR / f"started-{i}").touch()
    deadline = time.monotonic() + 50
    while not (DIR / f"go-{i}").exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {i} never opened")
        time.sleep(0.01)
    return i
'''


def wait_for(what: str, check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def keda_reading(client: redis_lib.Redis, stream: str) -> dict[str, Any]:
    """What KEDA's two triggers read, and the stream's own count, in one atomic snapshot."""
    pipe = client.pipeline(transaction=True)
    pipe.xinfo_groups(stream)
    pipe.xpending(stream, GROUP)
    pipe.xlen(stream)
    groups, pending, length = pipe.execute()
    (group,) = [g for g in groups if g["name"] == GROUP.encode()]
    undelivered = len(client.xrange(stream, min=f"({group['last-delivered-id'].decode()}"))
    return {"lag": group.get("lag", "absent"), "pending": pending["pending"], "length": length,
            "undelivered": undelivered, "consumers": pending["consumers"]}


def server_version(client: redis_lib.Redis) -> tuple[int, ...]:
    return tuple(int(x) for x in str(client.info("server")["redis_version"]).split(".")[:2])


@pytest.mark.realserver
@pytest.mark.timeout(120)
def test_keda_reads_what_taskq_has_queued_and_in_flight(redis_url: str, tmp_path: Path) -> None:
    (tmp_path / "deploy_hold_tasks.py").write_text(textwrap.dedent(HOLD_TASKS))
    env = {**os.environ, "DEPLOY_TEST_DIR": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    client = redis_lib.Redis.from_url(redis_url)
    has_lag = server_version(client) >= (7, 0)  # XINFO GROUPS reports lag from Redis 7.0
    stream, n = QueueKeys("default").stream, 5
    readings: list[dict[str, Any]] = []

    def check(remaining: int) -> dict[str, Any]:
        r = keda_reading(client, stream)
        readings.append(r)
        # taskq XDELs what it finished: the stream holds exactly what is queued or running.
        assert r["length"] == remaining == r["undelivered"] + r["pending"], r
        # KEDA's lag trigger: Redis 7 counts the undelivered entries; on 6.2 there is no
        # lag field, KEDA reads 0 and never scales from zero (the README says so).
        assert r["lag"] == (r["undelivered"] if has_lag else "absent"), r
        return r

    with taskq.Client(redis_url) as producer:
        batch = producer.send_many("deploy.hold", [[i] for i in range(n)])
    assert check(n)["pending"] == 0  # zero pods: only the backlog can wake the fleet

    log = (tmp_path / "worker.log").open("w")
    node = subprocess.Popen(
        [sys.executable, "-m", "taskq", "--url", redis_url, "worker", "--procs", "1",
         "--import", "deploy_hold_tasks", "--shutdown-timeout", "5"],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        for i in range(n):
            wait_for(f"task {i} to start", (tmp_path / f"started-{i}").exists)
            r = check(n - i)
            assert r["pending"] >= 1 and len(r["consumers"]) == 1, r  # ours, claimed by the node
            (tmp_path / f"go-{i}").touch()
            wait_for(f"task {i} to finish", lambda i=i: batch.status().finished == i + 1)
        assert check(0)["pending"] == 0  # now, and only now, may KEDA scale to zero
        assert batch.status().failed == 0
    finally:
        node.terminate()
        try:
            node.wait(timeout=30)
        finally:
            if node.poll() is None:
                node.kill()
                node.wait(timeout=10)
            log.close()
    # The trap a lag-only ScaledObject falls into: nothing left to deliver, a task running.
    assert any(r["undelivered"] == 0 and r["pending"] > 0 for r in readings), readings


@pytest.mark.realserver
def test_redis_7_lag_is_null_when_the_newest_delivered_entry_is_deleted_first(
    redis_url: str,
) -> None:
    """Why the in-flight trigger must stay even though the lag trigger scales: Redis 7.0
    cannot count the lag (NULL, which KEDA reads as 0) while the last delivered entry is
    already deleted and an older one still runs, and taskq finishes tasks out of order."""
    client = redis_lib.Redis.from_url(redis_url)
    version = server_version(client)
    if version < (7, 0):
        pytest.skip(f"Redis {'.'.join(map(str, version))} has no XINFO GROUPS lag")
    stream = QueueKeys("lagcheck").stream
    client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    ids = [client.xadd(stream, {"i": i}) for i in range(4)]
    client.xreadgroup(GROUP, "node", {stream: ">"}, count=2)
    client.xack(stream, GROUP, ids[1])
    client.xdel(stream, ids[1])
    (group,) = client.xinfo_groups(stream)
    assert group["pending"] == 1  # what the in-flight trigger reads: the running task
    # 2 queued, yet Redis 7.0 has no lag to give (a later version may count it: 2).
    assert group["lag"] is None if version[:2] == (7, 0) else group["lag"] in (None, 2)
    client.xack(stream, GROUP, ids[0])
    client.xdel(stream, ids[0])
    (group,) = client.xinfo_groups(stream)
    assert (group["pending"], group["lag"]) == (0, 2)  # countable again once it drained

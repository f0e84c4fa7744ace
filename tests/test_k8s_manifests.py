"""infra/k8s/: every manifest passes the Kubernetes schema offline (kubernetes-validate, strict),
and the pieces fit together the way the cluster would need them to: each Service selects the pods
of one workload and a port they expose, every credential is a reference to a key that
kustomization.yaml's secretGenerator makes, every $(VAR) a value uses is defined before it, the
worker serves the pool of infra/k8s/prefect.yaml with a Role that lets it run Jobs. The code the
containers run is run here: the PostgreSQL init script against the project's own PostgreSQL
server, MLflow's auth-config init container, and Job mlflow-accounts against the team stack."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from k8s_schema import K8S, assert_valid, secret_keys, secret_refs

KUSTOMIZATION = yaml.safe_load((K8S / "kustomization.yaml").read_text())
DOCS = [doc for f in KUSTOMIZATION["resources"] for doc in yaml.safe_load_all((K8S / f).read_text()) if doc]
WORKLOADS = [d for d in DOCS if d["kind"] in ("Deployment", "StatefulSet", "Job")]
SECRET_NAMES = ("PASSWORD", "SECRET", "AUTH_STRING", "TOKEN", "ACCESS_KEY")
# prefect-kubernetes' worker settings that name a Secret and its key (they hold no secret)
NAMES_A_SECRET = "PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_AUTH_STRING_SECRET_"
VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def named(kind: str, name: str) -> dict:
    [doc] = [d for d in DOCS if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def containers(workload: dict) -> list[dict]:
    pod = workload["spec"]["template"]["spec"]
    return pod.get("initContainers", []) + pod["containers"]


def expanded_env(container: dict, secret_values: dict[tuple[str, str], str]) -> dict[str, str]:
    """The container's environment as the kubelet makes it: secretKeyRef from `secret_values`,
    $(VAR) replaced by an earlier entry's value (a later or unknown one stays as written)."""
    env: dict[str, str] = {}
    for entry in container.get("env", []):
        if "valueFrom" in entry:
            ref = entry["valueFrom"]["secretKeyRef"]
            env[entry["name"]] = secret_values[(ref["name"], ref["key"])]
        else:
            env[entry["name"]] = VAR_REF.sub(lambda m: env.get(m[1], m[0]), entry["value"])
    return env


def test_every_manifest_passes_the_kubernetes_schema():
    listed = set(KUSTOMIZATION["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "prefect.yaml"}
    assert listed == on_disk, f"kustomization.yaml resources vs files: {listed ^ on_disk}"
    for doc in DOCS:
        assert_valid(doc)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in DOCS}
    assert {("StatefulSet", "postgres"), ("Service", "postgres"), ("Deployment", "mlflow"),
            ("Service", "mlflow"), ("Deployment", "prefect-server"), ("Service", "prefect-server"),
            ("Deployment", "prefect-worker"), ("ServiceAccount", "prefect-worker"),
            ("Role", "prefect-worker"), ("RoleBinding", "prefect-worker")} <= kinds
    # PostgreSQL keeps its data on a claim of its own
    [claim] = named("StatefulSet", "postgres")["spec"]["volumeClaimTemplates"]
    assert_valid({"apiVersion": "v1", "kind": "PersistentVolumeClaim", **claim})
    mounts = {m["name"] for c in containers(named("StatefulSet", "postgres")) for m in c["volumeMounts"]}
    assert claim["metadata"]["name"] in mounts


def test_a_broken_manifest_is_refused():
    """The check has teeth: a misspelt field and a wrong type are errors."""
    service = json.loads(json.dumps(named("Service", "mlflow")))
    service["spec"]["selectr"] = service["spec"].pop("selector")
    with pytest.raises(AssertionError, match="selectr"):
        assert_valid(service)
    deployment = json.loads(json.dumps(named("Deployment", "mlflow")))
    deployment["spec"]["replicas"] = "one"
    with pytest.raises(AssertionError, match="spec.replicas"):
        assert_valid(deployment)


def test_services_select_one_workload_and_its_port():
    for service in (d for d in DOCS if d["kind"] == "Service"):
        selector = service["spec"]["selector"]
        matched = [w for w in WORKLOADS if w["kind"] != "Job"
                   and selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert len(matched) == 1, (service["metadata"]["name"], [w["metadata"]["name"] for w in matched])
        [workload] = matched
        assert selector.items() <= workload["spec"]["selector"]["matchLabels"].items()
        ports = {p["name"] for c in workload["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, (service["metadata"]["name"], port)
        if workload["kind"] == "StatefulSet":
            assert workload["spec"]["serviceName"] == service["metadata"]["name"]


def test_credentials_are_references_to_generated_secrets():
    made = secret_keys()
    used = secret_refs(DOCS)
    assert used <= made, f"referenced but never generated: {used - made}"
    assert made <= used | secret_refs(json.loads((K8S / "work-pool.json").read_text())), \
        f"generated but never used: {made - used}"
    for workload in WORKLOADS:
        for container in containers(workload):
            defined: set[str] = set()
            for entry in container.get("env", []):
                where = f"{workload['metadata']['name']}/{container['name']} {entry['name']}"
                if "value" in entry:
                    # a secret is never a literal; a URL that holds one takes it through $(VAR)
                    assert not any(s in entry["name"] for s in SECRET_NAMES) or \
                        entry["name"].startswith(NAMES_A_SECRET), where
                    for var in VAR_REF.findall(entry["value"]):
                        assert var in defined, f"{where}: $({var}) is not defined before it"
                defined.add(entry["name"])
    ignored = (K8S / "secrets" / ".gitignore").read_text().split()
    assert "*.env" in ignored and "!*.env.example" in ignored


def test_the_worker_serves_the_kubernetes_pool_with_a_role_for_jobs():
    pool_file = yaml.safe_load((K8S / "prefect.yaml").read_text())
    pools = {d["work_pool"]["name"] for d in pool_file["deployments"]}
    worker = named("Deployment", "prefect-worker")
    [container] = worker["spec"]["template"]["spec"]["containers"]
    args = container["command"] + container["args"]
    assert args[:3] == ["prefect", "worker", "start"]
    assert [args[args.index("--pool") + 1]] == sorted(pools)
    assert args[args.index("--type") + 1] == "kubernetes"
    env = {e["name"]: e for e in container["env"]}
    namespace = KUSTOMIZATION["namespace"]
    template = json.loads((K8S / "work-pool.json").read_text())
    assert template["variables"]["properties"]["namespace"]["default"] == namespace
    assert env["PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES"]["value"] == namespace
    assert env["PREFECT_API_URL"]["value"] == "http://prefect-server:4200/api"
    # the Jobs' auth string: the Secret key the worker itself reads it from
    assert (env[NAMES_A_SECRET + "NAME"]["value"], env[NAMES_A_SECRET + "KEY"]["value"]) == \
        tuple(env["PREFECT_API_AUTH_STRING"]["valueFrom"]["secretKeyRef"].values()) == ("dmops-prefect", "auth-string")
    assert worker["spec"]["template"]["spec"]["serviceAccountName"] == "prefect-worker"
    binding = named("RoleBinding", "prefect-worker")
    assert binding["roleRef"]["name"] == "prefect-worker"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "prefect-worker"}]
    rules = {(group, resource): set(rule["verbs"]) for rule in named("Role", "prefect-worker")["rules"]
             for group in rule["apiGroups"] for resource in rule["resources"]}
    assert {"create", "get", "list", "watch", "delete"} <= rules[("batch", "jobs")]
    assert {"get", "list", "watch"} <= rules[("", "pods")] and "get" in rules[("", "pods/log")]
    assert all("secrets" not in resource for _, resource in rules), "the worker needs no Secret access"


def test_images_are_set_in_one_place():
    """Every dmops container runs the image kustomization.yaml names (`images`), PostgreSQL its own."""
    [image] = KUSTOMIZATION["images"]
    for workload in WORKLOADS:
        for container in containers(workload):
            expected = "postgres" if workload["metadata"]["name"] == "postgres" else image["name"]
            assert container["image"].split(":")[0] == expected, (workload["metadata"]["name"], container["image"])


def test_postgres_init_script_makes_the_roles_and_databases():
    """The StatefulSet's init script, run as the official image runs it (sh, the superuser's
    psql), on the project's own PostgreSQL server: mlflow owns mlflow and mlflow_auth, prefect owns
    prefect with pg_trgm, neither gets into the other's."""
    from infra.ports import free_ports
    from infra.postgres import PostgresServer
    from infra.postgres_bin import find_bin_dir
    from infra.postgres_db import connect, load_postgres_credentials

    script = yaml.safe_load((K8S / "postgres.yaml").read_text().split("\n---\n")[0])["data"]["10-dmops.sh"]
    state = Path(tempfile.mkdtemp(prefix="dmops-k8s-pg-"))
    state.chmod(0o711)                  # as root the server runs as the postgres OS user
    pg = PostgresServer(state, port=free_ports(1)[0])
    try:
        pg.start(timeout=90)
        superuser = load_postgres_credentials(pg.credentials_path)
        passwords = {"mlflow": secrets.token_hex(24), "prefect": secrets.token_hex(24)}
        env = {"PATH": f"{find_bin_dir()}:{os.environ['PATH']}", "POSTGRES_USER": "postgres",
               "PGHOST": "127.0.0.1", "PGPORT": str(pg.port), "PGPASSWORD": superuser.superuser_password,
               "MLFLOW_DB_PASSWORD": passwords["mlflow"], "PREFECT_DB_PASSWORD": passwords["prefect"]}
        ran = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=60)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert passwords["mlflow"] not in ran.stdout + ran.stderr
        for role, databases in (("mlflow", ("mlflow", "mlflow_auth")), ("prefect", ("prefect",))):
            for database in databases:
                with connect("127.0.0.1", pg.port, role, passwords[role], database) as conn:
                    assert conn.execute("SELECT current_user").fetchone() == (role,)
        with connect("127.0.0.1", pg.port, "prefect", passwords["prefect"], "prefect") as conn:
            assert conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm'").fetchone() == (1,)
        for role, other in (("mlflow", "prefect"), ("prefect", "mlflow_auth")):
            with pytest.raises(Exception, match="permission denied"):
                connect("127.0.0.1", pg.port, role, passwords[role], other)
    finally:
        pg.stop()
        shutil.rmtree(state, ignore_errors=True)


def test_mlflow_auth_config_init_container_writes_a_config_mlflow_reads(tmp_path):
    """The init container's command with its environment as the kubelet expands it: a 0600
    basic_auth.ini whose database URI holds the mlflow role's password, read back by MLflow."""
    [init] = named("Deployment", "mlflow")["spec"]["template"]["spec"]["initContainers"]
    password = secrets.token_hex(24)
    env = expanded_env(init, {("dmops-postgres", "mlflow-password"): password})
    config = tmp_path / "auth" / "basic_auth.ini"
    env["MLFLOW_AUTH_CONFIG_PATH"] = str(config)
    ran = subprocess.run([sys.executable, *init["command"][1:], *init["args"]],
                         env={**os.environ, **env}, cwd=K8S.parents[1], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert config.stat().st_mode & 0o777 == 0o600
    read = subprocess.run([sys.executable, "-c", "from mlflow.server.auth.config import read_auth_config as r; "
                           "c = r(); print(c.database_uri, c.default_permission, c.admin_username)"],
                          env={**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(config)},
                          capture_output=True, text=True, timeout=60)
    assert read.stdout.split() == [f"postgresql+psycopg://mlflow:{password}@postgres:5432/mlflow_auth",
                                   "READ", "admin"], read.stderr


@pytest.mark.stack
def test_mlflow_accounts_job_sets_the_accounts_on_a_basic_auth_server(team_stack):
    """Job mlflow-accounts' command against the team stack's MLflow (basic-auth, workspaces),
    with the stack's passwords in the Job's environment: it succeeds, and so does a second run."""
    job = named("Job", "mlflow-accounts")
    [container] = containers(job)
    passwords = team_stack.team_credentials().mlflow_passwords
    values = {("dmops-mlflow", f"{user}-password"): passwords[user] for user in ("admin", "pipeline", "viewer")}
    env = expanded_env(container, values)
    env["MLFLOW_TRACKING_URI"] = team_stack.client_env("viewer")["MLFLOW_TRACKING_URI"]
    for _ in range(2):
        ran = subprocess.run([sys.executable, *container["command"][1:], *container["args"]],
                             env={**os.environ, **env}, cwd=K8S.parents[1], capture_output=True, text=True,
                             timeout=120)
        assert ran.returncode == 0, ran.stderr[-2000:]
        assert "MLflow accounts pipeline and viewer are set" in ran.stdout

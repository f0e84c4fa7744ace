"""The Kubernetes work pool (infra/k8s/work-pool.json) and its deployments file
(infra/k8s/prefect.yaml), checked as far as one machine can: the `stack` fixture's Prefect server,
with prefect-kubernetes installed, accepts the pool and holds the template as sent; `prefect
deploy` puts both deployments on it with their job variables; and a flow run of them renders, by
prefect-kubernetes' own code (what the worker does before it sends the Job), into a Job that
passes the Kubernetes schema, asks for the GPUs, and holds no secret value: every credential is a
reference to a Secret of infra/k8s/kustomization.yaml."""

import copy
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from async_run import run_async
from flows.deployments import POOL_TYPES, DeploymentsFileError, pool_create_args
from k8s_schema import assert_valid, secret_keys, secret_refs

ROOT = Path(__file__).resolve().parents[1]
KUBERNETES = POOL_TYPES["kubernetes"]
IMAGE = "registry.example.com/dmops:test"
# the worker Deployment's settings that concern the Jobs it creates
WORKER = next(d for d in yaml.safe_load_all((ROOT / "infra/k8s/worker.yaml").read_text())
              if d["kind"] == "Deployment")


def template() -> dict:
    return json.loads((ROOT / KUBERNETES.base_job_template).read_text())


def _worker_env() -> dict[str, str]:
    [container] = WORKER["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value") for e in container["env"]}


async def _render(pool_name: str, deployment_name: str, job_variables: dict) -> dict:
    """The Job manifest the worker of `pool_name` would send for a new flow run of
    `deployment_name` with `job_variables`: prefect-kubernetes' resolve_for_flow_run (deployment
    and flow-run variables over the pool's template, then prepare_for_flow_run) and the secret
    replacement its _create_job does first, under the worker Deployment's settings."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.settings import PREFECT_API_AUTH_STRING, temporary_settings
    from prefect_kubernetes.worker import KubernetesWorker, KubernetesWorkerJobConfiguration

    async with get_client() as client:
        [deployment] = await client.read_deployments(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment_name])))
        flow_run = await client.create_flow_run_from_deployment(deployment.id, job_variables=job_variables)
        try:
            pool = await client.read_work_pool(pool_name)
            # the worker runs with the pipeline role's auth string in its environment
            with temporary_settings(updates={PREFECT_API_AUTH_STRING: "pipeline:not-a-real-token"}):
                config = await KubernetesWorkerJobConfiguration.resolve_for_flow_run(
                    flow_run, client=client, work_pool=pool, worker_name="test-worker", deployment=deployment)
            env = _worker_env()
            # private, but the step itself: _create_job runs it on the configuration before it
            # sends the Job (it uses nothing of the worker instance)
            await KubernetesWorker._replace_env_variable_with_secret(
                None, "PREFECT_API_AUTH_STRING", config,
                env["PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_AUTH_STRING_SECRET_NAME"],
                env["PREFECT_INTEGRATIONS_KUBERNETES_WORKER_API_AUTH_STRING_SECRET_KEY"])
        finally:
            await client.delete_flow_run(flow_run.id)
    return config.job_manifest


def _container(job: dict) -> dict:
    [container] = job["spec"]["template"]["spec"]["containers"]
    return container


def test_server_accepts_the_pool_and_holds_the_template(stack):
    """The project's template, created as a kubernetes pool through Prefect's client, reads back
    unchanged; one placeholder naming no variable is refused, so acceptance means something."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import PrefectHTTPStatusError

    name = f"test-k8s-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        try:
            client.create_work_pool(WorkPoolCreate(name=name, type="kubernetes", base_job_template=template()))
            held = client.read_work_pool(name)
            assert held.type == "kubernetes"
            assert held.base_job_template == template()
            broken = template()
            broken["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0][
                "image"] = "{{ imag }}"
            with pytest.raises(PrefectHTTPStatusError, match="422"):
                client.create_work_pool(WorkPoolCreate(name=name + "-broken", type="kubernetes",
                                                       base_job_template=broken))
        finally:
            client.delete_work_pool(name)


def test_pool_create_args():
    assert pool_create_args("process", {}) == ["--type", "process"]
    assert pool_create_args("kubernetes", {"DMOPS_IMAGE": IMAGE}) == [
        "--type", "kubernetes", "--base-job-template", "infra/k8s/work-pool.json"]
    with pytest.raises(DeploymentsFileError, match="DMOPS_IMAGE is not set"):
        pool_create_args("kubernetes", {})
    with pytest.raises(DeploymentsFileError, match="one of process, kubernetes"):
        pool_create_args("docker", {})


@pytest.mark.slow
def test_deployments_render_into_valid_jobs_without_secret_values(stack, tmp_path):
    suffix = uuid.uuid4().hex[:8]
    pool = f"test-k8s-{suffix}"
    spec = yaml.safe_load((ROOT / KUBERNETES.deployments_file).read_text())
    for deployment in spec["deployments"]:
        deployment["name"] = f"{deployment['name']}-{suffix}"
        deployment["work_pool"]["name"] = pool
    names = {d["name"].rsplit("-", 1)[0]: d["name"] for d in spec["deployments"]}
    prefect_file = tmp_path / "prefect.yaml"
    prefect_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    env = {**os.environ, "DMOPS_IMAGE": IMAGE, "COLUMNS": "200"}
    prefect = [sys.executable, "-m", "prefect"]
    try:
        created = subprocess.run([*prefect, "work-pool", "create", pool, *pool_create_args("kubernetes", env)],
                                 cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert created.returncode == 0, created.stdout + created.stderr
        deployed = subprocess.run([*prefect, "--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file)],
                                  cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]

        # the nightly one as deployed: one GPU, the image of $DMOPS_IMAGE
        nightly = run_async(_render(pool, names["nightly"], {}))
        # the on-demand one with four GPUs for this run, and one on CPUs
        four = run_async(_render(pool, names["on-demand"], {"gpus": 4}))
        cpu = run_async(_render(pool, names["on-demand"], {"gpus": 0}))
    finally:
        from prefect_api import prefect_api

        for d in prefect_api("POST", "/deployments/filter",
                             {"deployments": {"name": {"any_": list(names.values())}}}) or []:
            prefect_api("DELETE", f"/deployments/{d['id']}")
        prefect_api("DELETE", f"/work_pools/{pool}")

    for job, gpus in ((nightly, 1), (four, 4), (cpu, 0)):
        assert_valid(job)
        container = _container(job)
        assert container["image"] == IMAGE
        assert job["metadata"]["namespace"] == "dmops"
        for side in ("requests", "limits"):
            assert container["resources"][side].get("nvidia.com/gpu") == gpus, container["resources"]
        # the flow run's command, from prefect-kubernetes (the image's prefect runs it)
        assert container["args"][:3] == ["prefect", "flow-run", "execute"], container["args"]
        # credentials: references to the kustomization's Secrets only, never a value
        env = {e["name"]: e for e in container["env"]}
        for name in ("MLFLOW_TRACKING_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                     "PREFECT_API_AUTH_STRING"):
            assert "value" not in env[name] and "secretKeyRef" in env[name]["valueFrom"], env[name]
        assert secret_refs(job) <= secret_keys(), secret_refs(job) - secret_keys()
        assert "not-a-real-token" not in json.dumps(job)
        assert env["PREFECT_API_URL"]["value"] == os.environ["PREFECT_API_URL"]
        assert container["envFrom"] == [{"configMapRef": {"name": "dmops-config"}}]


def test_template_renders_without_a_server():
    """Every variable at its default (a run on CPUs: 0 GPUs) and every one set: both Jobs pass
    the schema."""
    from prefect.client.schemas.objects import FlowRun
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    everything = {"image": IMAGE, "gpus": 8, "node_selector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                  "cpu_request": "16", "cpu_limit": "32", "memory_request": "64Gi", "memory_limit": "128Gi",
                  "shm_size": "16Gi", "service_account_name": "dmops-runs", "finished_job_ttl": 3600,
                  "labels": {"team": "ml"}, "annotations": {"owner": "ml"}, "env": {"DMOPS_RETRY_ATTEMPTS": "6"}}
    for values in ({"image": IMAGE}, everything):
        config = run_async(KubernetesWorkerJobConfiguration.from_template_and_values(
            copy.deepcopy(template()), values))
        config.prepare_for_flow_run(FlowRun(flow_id=uuid.uuid4(), name="calm-otter"))
        assert_valid(config.job_manifest)
        spec = config.job_manifest["spec"]["template"]["spec"]
        assert ("nodeSelector" in spec) == ("node_selector" in values)
        assert spec["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == values.get("gpus", 0)

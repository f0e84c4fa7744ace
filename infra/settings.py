"""Where the local stack keeps its state and which loopback ports it serves on."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from infra.errors import StackError

# One environment variable per setting a user is likely to change; the CLI options mirror them.
ENV_STATE_DIR = "DMOPS_STACK_DIR"
ENV_PORTS = {"s3_port": "DMOPS_S3_PORT", "mlflow_port": "DMOPS_MLFLOW_PORT",
             "prefect_port": "DMOPS_PREFECT_PORT"}


@dataclass(frozen=True)
class StackSettings:
    """Settings of one local stack: its state folder, loopback host, public ports and buckets."""

    state_dir: Path = Path(".stack")
    host: str = "127.0.0.1"
    s3_port: int = 8333
    mlflow_port: int = 5000
    prefect_port: int = 4200
    artifacts_bucket: str = "dmops-mlflow"
    data_bucket: str = "dmops-dvc"
    releases_bucket: str = "dmops-releases"
    # The stack's own bucket: the readiness object every `up` reads back (infra/readiness.py).
    # Kept out of the other buckets, where `dvc gc` or a release listing could meet it.
    stack_bucket: str = "dmops-stack"

    @classmethod
    def from_env(cls) -> "StackSettings":
        """Defaults, overridden by DMOPS_STACK_DIR, DMOPS_S3_PORT, DMOPS_MLFLOW_PORT and
        DMOPS_PREFECT_PORT where set. A value that is not a port number raises StackError."""
        values: dict = {}
        if os.environ.get(ENV_STATE_DIR):
            values["state_dir"] = Path(os.environ[ENV_STATE_DIR])
        for field, var in ENV_PORTS.items():
            raw = os.environ.get(var)
            if raw:
                values[field] = parse_port(raw, var)
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

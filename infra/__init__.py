"""The local stack (SeaweedFS S3, MLflow server, Prefect server) on loopback: `dmops up/down/status`."""

from __future__ import annotations

from infra.errors import StackError
from infra.settings import StackSettings
from infra.stack import ServiceStatus, Stack

__all__ = ["Stack", "StackError", "StackSettings", "ServiceStatus"]

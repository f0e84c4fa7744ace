"""Readiness: a server is ready when it serves what it holds, not when its health URL answers.

Why (measured on SeaweedFS 4.48, `weed server` with master, volume, filer and S3 in one
process): after a restart the master recovers its Raft state and waits one election timeout
before it leads; the volume server, refused meanwhile, retries its heartbeat only every 5 s.
The filer and the S3 gateway start as soon as the master leads, so `/healthz` answers while the
master still knows no volume: a GET of an object written before the restart then fails with
`InternalError` ("volume id 1 not found") for up to one heartbeat period. The right condition
is that the master's topology holds every volume found on disk; an end-to-end read of a stored
object and a fresh write/read confirm it.

Each probe returns None when the server is ready, else a short reason (the last one goes into
the timeout message). MLflow and Prefect are probed through API calls that read their backend
stores (and, for MLflow, the artifact store in S3)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

from infra.credentials import Credentials
from infra.errors import StackError
from infra.health import basic_auth, http_problem
from infra.layout import StateLayout
from infra.services import ServiceSpec
from infra.settings import StackSettings
from infra.team import TeamCredentials

READINESS_KEY = "readiness/stored-object"
PROBE_PREFIX = "readiness/probe-"
_VOLUME_FILE = re.compile(r"^(?:.+_)?(\d+)\.dat$")   # <collection>_<id>.dat or <id>.dat


def on_disk_volume_ids(data_dir: Path) -> set[int]:
    """Ids of the SeaweedFS volumes stored in `data_dir` (the stack uses no erasure coding)."""
    if not data_dir.is_dir():
        return set()
    return {int(m.group(1)) for p in data_dir.iterdir() if (m := _VOLUME_FILE.match(p.name))}


def master_volume_ids(master_url: str, timeout: float = 5.0) -> set[int]:
    """Ids of the volumes the SeaweedFS master currently knows (its /vol/status topology:
    data centre -> rack -> volume server -> volumes).

    Raises OSError or ValueError when the master does not answer or answers something else."""
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"{master_url}/vol/status", timeout=timeout) as response:
        status = json.load(response)
    try:
        return {int(volume["Id"])
                for racks in (status["Volumes"].get("DataCenters") or {}).values()
                for servers in racks.values()
                for volumes in servers.values()
                for volume in volumes or []}
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"unexpected /vol/status answer from {master_url}: {e!r}") from None


@dataclass(frozen=True)
class ReadinessRecord:
    """The stored object that every start must read back: where it is and its sha256."""

    bucket: str
    key: str
    sha256: str
    size: int
    written_at: str


class S3Readiness:
    """Probe of the S3 store: all volumes on disk registered with the master, the readiness
    object written at first start reads back byte for byte, and a fresh PUT/GET/DELETE works."""

    def __init__(self, settings: StackSettings, layout: StateLayout, spec: ServiceSpec, client):
        self.settings, self.layout, self.client = settings, layout, client
        self.master_url = f"http://{settings.host}:{spec.internal_ports['master']}"

    def __call__(self) -> Optional[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        missing = self._unregistered_volumes()
        if missing:
            return missing
        try:
            record = self._load_record()
            if record is None:
                self._write_readiness_object()
            else:
                self._check_readiness_object(record)
            return self._round_trip()
        except ClientError as e:
            error = e.response.get("Error", {})
            return f"S3 {error.get('Code')}: {error.get('Message')}"
        except BotoCoreError as e:
            return f"S3: {e}"

    def _unregistered_volumes(self) -> Optional[str]:
        on_disk = on_disk_volume_ids(self.layout.seaweedfs_data)
        try:
            known = master_volume_ids(self.master_url)
        except (OSError, ValueError) as e:
            return f"master {self.master_url}: {e}"
        missing = on_disk - known
        if missing:
            return (f"master knows {len(known)} of the {len(on_disk)} volumes on disk "
                    f"(volume server not registered yet; missing e.g. volume {min(missing)})")
        return None

    def _load_record(self) -> Optional[ReadinessRecord]:
        path = self.layout.seaweedfs_readiness
        if not path.exists():
            return None
        try:
            return ReadinessRecord(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as e:
            raise StackError(f"{path} is not a readiness record ({e}); with the stack stopped, delete it "
                             f"and `dmops up` writes a new one") from None

    def _write_readiness_object(self) -> None:
        """First start (or a state folder from before readiness records): store the object,
        read it back, then record it, so a record always names an object that was served."""
        body = secrets.token_bytes(1024)
        bucket = self.settings.stack_bucket
        self.client.put_object(Bucket=bucket, Key=READINESS_KEY, Body=body)
        if self.client.get_object(Bucket=bucket, Key=READINESS_KEY)["Body"].read() != body:
            raise StackError(f"SeaweedFS at {self.settings.s3_url} returned other bytes than were just "
                             f"written to s3://{bucket}/{READINESS_KEY}")
        record = ReadinessRecord(bucket, READINESS_KEY, hashlib.sha256(body).hexdigest(), len(body),
                                 datetime.now(timezone.utc).isoformat(timespec="seconds"))
        path = self.layout.seaweedfs_readiness
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record.__dict__, indent=2) + "\n")
        os.replace(tmp, path)

    def _check_readiness_object(self, r: ReadinessRecord) -> None:
        from botocore.exceptions import ClientError

        try:
            body = self.client.get_object(Bucket=r.bucket, Key=r.key)["Body"].read()
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code"))
            if code not in ("NoSuchKey", "NoSuchBucket", "404"):
                raise
            # Every volume on disk is registered and the filer answers: the object is gone
            # for good, and waiting longer would not bring it back.
            raise StackError(
                f"SeaweedFS at {self.settings.s3_url} no longer holds s3://{r.bucket}/{r.key}, written "
                f"at {r.written_at} ({code}): the store in {self.layout.seaweedfs_data} lost data. "
                f"To start afresh: `dmops down`, then delete {self.layout.root}") from None
        if hashlib.sha256(body).hexdigest() != r.sha256:
            raise StackError(f"SeaweedFS at {self.settings.s3_url} serves s3://{r.bucket}/{r.key} with other "
                             f"bytes than were written at {r.written_at} ({len(body)} bytes, expected "
                             f"{r.size}): the store in {self.layout.seaweedfs_data} is damaged")

    def _round_trip(self) -> Optional[str]:
        key = f"{PROBE_PREFIX}{uuid.uuid4().hex}"
        body = secrets.token_bytes(256)
        bucket = self.settings.stack_bucket
        self.client.put_object(Bucket=bucket, Key=key, Body=body)
        try:
            back = self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        finally:
            self.client.delete_object(Bucket=bucket, Key=key)
        return None if back == body else f"fresh object s3://{bucket}/{key} read back with other bytes"


def mlflow_problem(settings: StackSettings, headers: Optional[dict[str, str]] = None) -> Optional[str]:
    """None when the MLflow server reads its backend store (search experiments) and lists its
    artifact root in S3 through its artifact proxy; else the first reason it does not.
    `headers`: credentials (the team stack's admin)."""
    api = f"{settings.mlflow_url}/api/2.0"
    return (http_problem(f"{api}/mlflow/experiments/search?max_results=1", headers=headers)
            or http_problem(f"{api}/mlflow-artifacts/artifacts", headers=headers))


def prefect_problem(settings: StackSettings, headers: Optional[dict[str, str]] = None) -> Optional[str]:
    """None when the Prefect server reaches its database (/api/ready) and answers a flows
    query; else the first reason it does not. `headers`: credentials (the team stack's)."""
    api = settings.prefect_api_url
    return (http_problem(f"{api}/ready", headers=headers)
            or http_problem(f"{api}/flows/filter", body={"limit": 1}, headers=headers))


def readiness_probe(name: str, settings: StackSettings, layout: StateLayout, spec: ServiceSpec,
                    creds: Credentials, team: Optional[TeamCredentials] = None
                    ) -> tuple[Callable[[], Optional[str]], str]:
    """(probe, what it waits for, as "did not <what>" reads) of server `name`; a team stack's
    (`team` given) are asked as its MLflow admin and with its Prefect auth string."""
    mlflow_auth = prefect_auth = None
    if team is not None:
        from infra.team import MLFLOW_ADMIN

        mlflow_auth = basic_auth(MLFLOW_ADMIN, team.mlflow_passwords[MLFLOW_ADMIN])
        prefect_auth = basic_auth(*team.prefect_auth_string.split(":", 1))
    if name == "seaweedfs":
        from infra.s3 import s3_client

        client = s3_client(settings.s3_url, creds, attempts=1, read_timeout=10)
        return S3Readiness(settings, layout, spec, client), "serve its stored objects"
    if name == "mlflow":
        return (lambda: mlflow_problem(settings, mlflow_auth)), "serve its tracking store and artifacts"
    if name == "prefect":
        return (lambda: prefect_problem(settings, prefect_auth)), "serve its API from its database"
    raise ValueError(f"unknown server {name!r}")

"""The local stack: SeaweedFS (S3), an MLflow tracking server and a Prefect server on loopback,
started as background processes with all their state under one folder.

    stack = Stack(StackSettings.from_env())
    stack.up()                      # idempotent; waits until every server is ready
    os.environ.update(stack.client_env())
    stack.down()                    # servers stop, state stays for the next up()
"""

from __future__ import annotations

import fcntl
import json
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

from infra.credentials import load_credentials, load_or_create_credentials, write_seaweedfs_identities
from infra.errors import StackError
from infra.health import http_ok, wait_healthy, wait_until
from infra.layout import StateLayout
from infra.preflight import check_ports
from infra.processes import (PidRecord, finish_stop, group_rss_bytes, is_running, read_pid_file,
                             signal_group, spawn, write_pid_file)
from infra.readiness import readiness_probe
from infra.s3 import ensure_buckets, s3_client
from infra.services import (PORT_FIELDS, REGION, SERVICES, STOP_GRACE, endpoints, remove_weed_sockets,
                            service_specs, weed_internal_ports)
from infra.settings import StackSettings

__all__ = ["Stack", "StackError", "StackSettings", "ServiceStatus"]


@dataclass(frozen=True)
class ServiceStatus:
    """One server as `status()` sees it."""

    name: str
    url: str
    pid: Optional[int]
    running: bool
    healthy: bool
    rss_bytes: Optional[int]   # resident memory of the server and its workers (Linux)
    log: Path


class Stack:
    """Start, stop and inspect the local servers described by `settings`."""

    def __init__(self, settings: StackSettings, log: Callable[[str], None] = print):
        self.settings = settings
        # Absolute, so the servers (each with its own working folder) and later calls from
        # another folder all mean the same place.
        self.layout = StateLayout(Path(settings.state_dir).expanduser().resolve())
        self._log = log

    @property
    def state_dir(self) -> Path:
        return self.layout.root

    # ---- start ---------------------------------------------------------------------------

    def up(self, timeout: float = 180, services: Sequence[str] = SERVICES) -> None:
        """Start whatever is not running, wait until every server is ready, print the URLs.
        Running servers are kept (a second up() only checks them again).

        Ready means serving what it holds (infra/readiness.py), not only answering a health
        URL: the S3 store has every stored volume registered, reads back the object written at
        its first start byte for byte and completes a fresh write and read; MLflow answers an
        experiment search and lists its artifact root; Prefect reaches its database and
        answers a flows query.

        Raises StackError, before anything starts, when a port is taken by another program;
        and, after stopping what this call started, when a server is not ready within
        `timeout` seconds (the message names the server and shows its log's tail), or when the
        S3 store no longer holds its readiness object (data lost).

        `services` limits the call to some servers (tests restart the S3 store alone); MLflow
        needs the S3 store for its artifacts."""
        unknown = set(services) - set(SERVICES)
        if unknown:
            raise ValueError(f"unknown services {sorted(unknown)}; the stack has {SERVICES}")
        t0 = time.monotonic()
        deadline = t0 + timeout
        self.layout.make_dirs()
        with self._locked():
            running = self._live_records()
            creds = load_or_create_credentials(self.layout.credentials)
            weed_ports = weed_internal_ports(self.layout, self.settings)
            specs = service_specs(self.settings, self.layout, creds, weed_ports)
            check_ports(self.settings, specs, running, self.layout)
            specs = {name: spec for name, spec in specs.items() if name in services}
            if "seaweedfs" not in running:
                write_seaweedfs_identities(self.layout.seaweedfs_identities, creds)
            started: dict[str, PidRecord] = {}
            try:
                for name, spec in specs.items():
                    if name not in running:
                        started[name] = spawn(spec.argv, spec.env, spec.cwd, self.layout.log(name), spec.port)
                        write_pid_file(self.layout.pid_file(name), started[name])
                records = running | started
                # In start order: MLflow's artifact probe needs a ready S3 store.
                for name, spec in specs.items():
                    wait_healthy(spec, records[name], self.layout, deadline, timeout)
                    if name == "seaweedfs":
                        ensure_buckets(s3_client(self.settings.s3_url, creds, attempts=1), self.settings,
                                       self.layout, deadline, timeout)
                    probe, what = readiness_probe(name, self.settings, self.layout, spec, creds)
                    wait_until(spec, records[name], self.layout, deadline, timeout, probe, what)
            except BaseException:
                # A failed start leaves no half-started stack behind (servers that were
                # already running before this call are left alone).
                self._stop(started, quiet=True)
                raise
        self._print_urls(started, services, time.monotonic() - t0)

    def _print_urls(self, started: dict[str, PidRecord], services: Sequence[str], seconds: float) -> None:
        s = self.settings
        what = f"started {', '.join(started)} in {seconds:.1f} s" if started else "already running"
        self._log(f"stack   {self.state_dir} ({what}; ready)")
        lines = {"seaweedfs": f"s3      {s.s3_url}  buckets: {', '.join(s.buckets)}",
                 "mlflow": f"mlflow  {s.mlflow_url}",
                 "prefect": f"prefect {s.prefect_url}  (API {s.prefect_api_url})"}
        for name in SERVICES:
            if name in services:
                self._log(lines[name])

    # ---- stop ----------------------------------------------------------------------------

    def down(self, services: Sequence[str] = SERVICES) -> None:
        """Stop every running server (SIGTERM, then SIGKILL after a grace period) and remove
        the pid files. Data, credentials and logs stay for the next up(). `services` limits
        the call to some servers."""
        if not self.layout.root.is_dir():
            self._log(f"no stack state in {self.state_dir}; nothing to stop")
            return
        with self._locked():
            running = {name: r for name, r in self._live_records().items() if name in services}
            if not running:
                self._log(f"stack in {self.state_dir} is not running")
                return
            self._stop(running)

    def _stop(self, records: dict[str, PidRecord], quiet: bool = False) -> None:
        t0 = time.monotonic()
        order = [name for name in reversed(SERVICES) if name in records]
        # Signal all first, then wait: shutdowns overlap, so down() takes as long as the
        # slowest server (SeaweedFS), not the sum.
        for name in order:
            signal_group(records[name], signal.SIGTERM)
        for name in order:
            killed = finish_stop(records[name], STOP_GRACE[name])
            self.layout.pid_file(name).unlink(missing_ok=True)
            if not quiet:
                how = f"killed after {STOP_GRACE[name]:.0f} s" if killed else "stopped"
                self._log(f"{how} {name} (pid {records[name].pid}) at {time.monotonic() - t0:.1f} s")
        if "seaweedfs" in records:
            remove_weed_sockets([records["seaweedfs"].port, *self._weed_ports()])

    def _weed_ports(self) -> list[int]:
        try:
            return [int(p) for p in json.loads(self.layout.seaweedfs_ports.read_text()).values()]
        except (OSError, ValueError, TypeError, AttributeError):
            return []

    # ---- inspect -------------------------------------------------------------------------

    def status(self) -> dict[str, ServiceStatus]:
        """Each server's pid, URL, whether it runs and whether it answers its health check."""
        out = {}
        records = self._running_now()
        for name, (url, health_url) in endpoints(self._effective_settings(records)).items():
            record = records.get(name)
            running = record is not None
            out[name] = ServiceStatus(
                name=name, url=url, pid=record.pid if running else None, running=running,
                healthy=running and http_ok(health_url),
                rss_bytes=group_rss_bytes(record.pid) if running else None,
                log=self.layout.log(name))
        return out

    def client_env(self) -> dict[str, str]:
        """Environment for clients of this stack (MLflow, Prefect, boto3, DVC). Holds the S3
        secret: export it, do not log it."""
        creds = load_credentials(self.layout.credentials)
        s = self._effective_settings(self._running_now())
        return {
            "MLFLOW_TRACKING_URI": s.mlflow_url,
            "PREFECT_API_URL": s.prefect_api_url,
            "AWS_ACCESS_KEY_ID": creds.access_key_id,
            "AWS_SECRET_ACCESS_KEY": creds.secret_access_key,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL_S3": s.s3_url,
            "MLFLOW_S3_ENDPOINT_URL": s.s3_url,
            # MLflow 3 clients report usage to the internet unless told not to; the stack is
            # loopback-only.
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }

    def s3_client(self):
        """A boto3 S3 client for this stack's endpoint and credentials (path-style addressing)."""
        url = self._effective_settings(self._running_now()).s3_url
        return s3_client(url, load_credentials(self.layout.credentials))

    # ---- bookkeeping ---------------------------------------------------------------------

    def _running_now(self) -> dict[str, PidRecord]:
        """Records of the running servers, read-only (stale pid files are left for up/down)."""
        records = {}
        for name in SERVICES:
            record = read_pid_file(self.layout.pid_file(name))
            if record is not None and is_running(record):
                records[name] = record
        return records

    def _effective_settings(self, running: dict[str, PidRecord]) -> StackSettings:
        """The settings with the ports the running servers really use: `dmops env` or
        `status` without port options still point at a stack started with other ports."""
        return replace(self.settings, **{PORT_FIELDS[name]: r.port for name, r in running.items()})

    def _live_records(self) -> dict[str, PidRecord]:
        """Pid records of the servers that run; pid files of servers that are gone are removed."""
        live = {}
        for name in SERVICES:
            path = self.layout.pid_file(name)
            if not path.exists():
                continue
            record = read_pid_file(path)
            if record is not None and is_running(record):
                live[name] = record
            else:
                gone = f"process {record.pid} is gone" if record else "unreadable"
                self._log(f"removed stale pid file {path} ({gone})")
                path.unlink(missing_ok=True)
        return live

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One up()/down() at a time per state folder (two shells, or a test and a user)."""
        with open(self.layout.lock, "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._log(f"waiting for another `dmops up/down` on {self.state_dir} ...")
                fcntl.flock(f, fcntl.LOCK_EX)
            yield

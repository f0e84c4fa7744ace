"""The local stack: SeaweedFS (S3), an MLflow tracking server and a Prefect server on loopback,
started as background processes with all their state under one folder.

    stack = Stack(StackSettings.from_env())
    stack.up()                      # idempotent; waits until every server is ready
    os.environ.update(stack.client_env())
    stack.down()                    # servers stop, state stays for the next up()

The team stack (`StackSettings(team=True)`, `dmops up --team`) adds the stack's own PostgreSQL
(infra/postgres.py), started first, as the database of MLflow and Prefect; MLflow runs its
basic-auth app (infra/mlflow_auth.py), Prefect's API wants its auth string, and the S3 store
knows one identity per role (infra/team.py). `client_env(role)` gives one role's settings.
"""

from __future__ import annotations

import fcntl
import json
import os
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
from infra.postgres import STOP_SIGNAL as POSTGRES_STOP_SIGNAL
from infra.postgres import PostgresServer
from infra.preflight import check_new_stack_ports, check_ports
from infra.processes import (Memory, PidRecord, finish_stop, group_memory, is_running, read_pid_file,
                             signal_group, spawn, write_pid_file)
from infra.readiness import readiness_probe
from infra.s3 import ensure_buckets, s3_client
from infra.services import (PORT_FIELDS, REGION, STOP_GRACE, endpoints, remove_weed_sockets,
                            service_specs, stack_services, weed_internal_ports)
from infra.settings import StackSettings
from infra.team import TeamCredentials, load_or_create_team_credentials, load_team_credentials, role_env, s3_identities

__all__ = ["Stack", "StackError", "StackSettings", "ServiceStatus"]


@dataclass(frozen=True)
class ServiceStatus:
    """One server as `status()` sees it."""

    name: str
    url: str
    pid: Optional[int]
    running: bool
    healthy: bool
    memory: Optional[Memory]   # of the server and its workers (infra/processes.py); None stopped
    log: Path
    problem: Optional[str] = None   # why a running server does not answer (PostgreSQL's login check)


class Stack:
    """Start, stop and inspect the local servers described by `settings`."""

    def __init__(self, settings: StackSettings, log: Callable[[str], None] = print):
        self.settings = settings
        # Absolute, so the servers (each with its own working folder) and later calls from
        # another folder all mean the same place.
        self.layout = StateLayout(Path(settings.state_dir).expanduser().resolve())
        self._log = log
        self.services = stack_services(settings)   # start order

    @property
    def postgres(self) -> PostgresServer:
        """The team stack's PostgreSQL (its cluster in <state>/postgres)."""
        return PostgresServer(self.layout.root, self.settings.postgres_port, self.settings.host)

    @property
    def state_dir(self) -> Path:
        return self.layout.root

    # ---- start ---------------------------------------------------------------------------

    def up(self, timeout: float = 180, services: Optional[Sequence[str]] = None) -> None:
        """Start whatever is not running, wait until every server is ready, print the URLs.
        Running servers are kept (a second up() only checks them again).

        Ready means serving what it holds (infra/readiness.py), not only answering a health
        URL: the S3 store has every stored volume registered, reads back the object written at
        its first start byte for byte and completes a fresh write and read; MLflow answers an
        experiment search and lists its artifact root; Prefect reaches its database and
        answers a flows query.

        Raises StackError, before anything starts, when ports are taken by another program
        (every taken public port in one message; for a folder that holds no stack yet, before
        anything is written there: no folders, no credentials);
        and, after stopping what this call started, when a server is not ready within
        `timeout` seconds (the message names the server and shows its log's tail), or when the
        S3 store no longer holds its readiness object (data lost).

        `services` limits the call to some servers (tests restart the S3 store alone); MLflow
        needs the S3 store for its artifacts, and on the team stack PostgreSQL.

        The team stack starts PostgreSQL first (initdb once, then its roles and databases) and
        MLflow and Prefect only once it accepts logins; after MLflow is ready its accounts and
        roles are made (infra/mlflow_auth.py). A state folder that holds the other kind of
        stack is refused (StackError) before anything starts."""
        services = self.services if services is None else tuple(services)
        unknown = set(services) - set(self.services)
        if unknown:
            raise ValueError(f"unknown services {sorted(unknown)}; the stack has {self.services}")
        self._check_kind()
        if not self.layout.holds_stack():   # nothing created before the ports are known free
            check_new_stack_ports(self.settings, services)
        t0 = time.monotonic()
        deadline = t0 + timeout
        self.layout.make_dirs()
        team = self.settings.team
        with self._locked():
            running = self._live_records()
            self.settings = self._following_running(running)
            accounts = load_or_create_team_credentials(self.layout.team_credentials) if team else None
            creds = load_or_create_credentials(self.layout.credentials)
            if team and "postgres" not in running:
                self.postgres.initialise()     # once; the role passwords the specs hold come with it
            weed_ports = weed_internal_ports(self.layout, self.settings)
            specs = service_specs(self.settings, self.layout, creds, weed_ports, accounts)
            check_ports(self.settings, specs, running, self.layout, self._bound_ports(running))
            specs = {name: spec for name, spec in specs.items() if name in services}
            if "seaweedfs" not in running:
                write_seaweedfs_identities(self.layout.seaweedfs_identities, creds,
                                           s3_identities(accounts, self.settings) if accounts else ())
            started: dict[str, PidRecord] = {}
            try:
                if "postgres" in specs:
                    self._start_postgres(specs["postgres"], running, started, deadline, timeout)
                if team and "mlflow" in specs and "mlflow" not in running:
                    from infra.mlflow_auth import AUTH_DATABASE, write_auth_config

                    write_auth_config(self.layout.mlflow_auth_config,
                                      self.postgres.database_url(AUTH_DATABASE, role="mlflow"))
                others = {name: spec for name, spec in specs.items() if name != "postgres"}
                for name, spec in others.items():
                    if name not in running:
                        started[name] = spawn(spec.argv, spec.env, spec.cwd, self.layout.log(name), spec.port)
                        write_pid_file(self.layout.pid_file(name), started[name])
                records = running | started
                # In start order: MLflow's artifact probe needs a ready S3 store.
                for name, spec in others.items():
                    wait_healthy(spec, records[name], self.layout, deadline, timeout)
                    if name == "seaweedfs":
                        ensure_buckets(s3_client(self.settings.s3_url, creds, attempts=1), self.settings,
                                       self.layout, deadline, timeout)
                    probe, what = readiness_probe(name, self.settings, self.layout, spec, creds, accounts)
                    wait_until(spec, records[name], self.layout, deadline, timeout, probe, what)
                    if name == "mlflow" and accounts is not None:
                        from infra.mlflow_auth import ensure_accounts

                        ensure_accounts(self.settings.mlflow_url, accounts)
            except BaseException:
                # A failed start leaves no half-started stack behind (servers that were
                # already running before this call are left alone).
                self._stop(started, quiet=True)
                raise
        self._print_urls(started, services, time.monotonic() - t0)

    def _start_postgres(self, spec, running: dict[str, PidRecord], started: dict[str, PidRecord],
                        deadline: float, timeout: float) -> None:
        """Spawn the team stack's PostgreSQL unless it runs, wait until the superuser can log in
        (it answers no HTTP), then make its roles and databases (idempotent)."""
        from infra.mlflow_auth import AUTH_DATABASE
        from infra.postgres_db import TEAM_DATABASES

        pg = self.postgres
        record = running.get("postgres")
        if record is None:
            record = started["postgres"] = spawn(spec.argv, spec.env, spec.cwd, self.layout.log("postgres"), spec.port)
            write_pid_file(self.layout.pid_file("postgres"), record)
        wait_until(spec, record, self.layout, deadline, timeout, pg.problem, "accept connections")
        pg.ensure_databases({**TEAM_DATABASES, AUTH_DATABASE: TEAM_DATABASES["mlflow"]})

    def _check_kind(self) -> None:
        """StackError when the state folder holds the other kind of stack (local vs team): MLflow
        and Prefect would start on other databases and the folder's data would seem lost."""
        has_local = self.layout.holds_stack() and not self.layout.holds_team_stack()
        if self.settings.team and has_local:
            raise StackError(f"{self.state_dir} holds a local stack (`dmops up`), not a team stack: give the "
                             f"team stack its own folder (default .stack-team, or --state-dir)")
        if not self.settings.team and self.layout.holds_team_stack():
            raise StackError(f"{self.state_dir} holds a team stack: use `dmops up --team` (and --team for "
                             f"status, env, down), or give the local stack another folder")

    def _print_urls(self, started: dict[str, PidRecord], services: Sequence[str], seconds: float) -> None:
        s = self.settings
        what = f"started {', '.join(started)} in {seconds:.1f} s" if started else "already running"
        self._log(f"stack   {self.state_dir} ({what}; ready)")
        lines = {"postgres": f"postgres {s.postgres_url}  databases: mlflow, mlflow_auth, prefect",
                 "seaweedfs": f"s3      {s.s3_url}  buckets: {', '.join(s.buckets)}",
                 "mlflow": f"mlflow  {s.mlflow_url}" + ("  (basic-auth: sign in)" if s.team else ""),
                 "prefect": f"prefect {s.prefect_url}  (API {s.prefect_api_url})"}
        for name in self.services:
            if name in services:
                self._log(lines[name])
        if s.team:
            self._log("roles   pipeline, viewer, reader: `dmops env --team --role ROLE` prints one's settings")

    # ---- stop ----------------------------------------------------------------------------

    def down(self, services: Optional[Sequence[str]] = None) -> None:
        """Stop every running server (SIGTERM, then SIGKILL after a grace period) and remove
        the pid files. Data, credentials and logs stay for the next up(). `services` limits
        the call to some servers."""
        if not self.layout.root.is_dir():
            self._log(f"no stack state in {self.state_dir}; nothing to stop")
            return
        services = self.services if services is None else tuple(services)
        with self._locked():
            running = {name: r for name, r in self._live_records().items() if name in services}
            if not running:
                self._log(f"stack in {self.state_dir} is not running")
                return
            self._stop(running)

    def _stop(self, records: dict[str, PidRecord], quiet: bool = False) -> None:
        t0 = time.monotonic()
        order = [name for name in reversed(self.services) if name in records and name != "postgres"]
        # Signal all first, then wait: shutdowns overlap, so down() takes as long as the
        # slowest server (SeaweedFS), not the sum. PostgreSQL stops once its clients (MLflow,
        # Prefect) are gone, while SeaweedFS still stops, with its fast shutdown (SIGINT to the postmaster only:
        # each of its children is a process group of its own).
        for name in order:
            signal_group(records[name], signal.SIGTERM)
        clients = [name for name in order if name in ("prefect", "mlflow")]
        waits = [*clients, *(["postgres"] if "postgres" in records else []),
                 *(name for name in order if name not in clients)]
        for name in waits:
            if name == "postgres":
                try:
                    os.kill(records[name].pid, POSTGRES_STOP_SIGNAL)
                except ProcessLookupError:
                    pass
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
        settings = self._effective_settings(records)
        for name, (url, health_url) in endpoints(settings).items():
            record = records.get(name)
            running = record is not None
            problem = None
            if name == "postgres":
                # no HTTP: a login and a query; its children are process groups of their own
                pg = PostgresServer(self.layout.root, settings.postgres_port, settings.host)
                # stopped too: the line names the server and the fix (`dmops up --team`)
                problem = pg.problem() if pg.credentials_path.exists() else None
                healthy, memory = running and problem is None, pg.memory() if running else None
            else:
                healthy = running and http_ok(health_url)
                memory = group_memory(record.pid) if running else None
            out[name] = ServiceStatus(name=name, url=url, pid=record.pid if running else None, running=running,
                                      healthy=healthy, memory=memory, log=self.layout.log(name), problem=problem)
        database = out.get("postgres")
        if database is not None and not database.healthy:
            # their health pages answer without the database; every request of a client fails
            for name in ("mlflow", "prefect"):
                if out[name].running:
                    out[name] = replace(out[name], healthy=False,
                                        problem="its database, PostgreSQL, does not answer (see its line)")
        return out

    def client_env(self, role: Optional[str] = None) -> dict[str, str]:
        """Environment for clients of this stack (MLflow, Prefect, boto3, DVC). Holds secrets:
        export it, do not log it. The team stack's is one role's (infra/team.py ROLES;
        default `pipeline`); the local stack has no roles (ValueError for one)."""
        s = self._effective_settings(self._running_now())
        if self.settings.team:
            return role_env(role or "pipeline", s, self.team_credentials())
        if role is not None:
            raise ValueError(f"the local stack has no roles (asked for {role!r}); roles are the team stack's")
        creds = load_credentials(self.layout.credentials)
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

    def team_credentials(self) -> TeamCredentials:
        """The team stack's accounts; StackError when this folder holds no team stack."""
        return load_team_credentials(self.layout.team_credentials)

    def s3_client(self):
        """A boto3 S3 client for this stack's endpoint and its own (admin) credentials
        (path-style addressing)."""
        url = self._effective_settings(self._running_now()).s3_url
        return s3_client(url, load_credentials(self.layout.credentials))

    # ---- bookkeeping ---------------------------------------------------------------------

    def _running_now(self) -> dict[str, PidRecord]:
        """Records of the running servers, read-only (stale pid files are left for up/down)."""
        records = {}
        for name in self.services:
            record = read_pid_file(self.layout.pid_file(name))
            if record is not None and is_running(record):
                records[name] = record
        return records

    def _bound_ports(self, running: dict[str, PidRecord]) -> dict[str, int]:
        """{port field: port} of the servers that hold one: each running server's, and a
        stopped PostgreSQL's last port while MLflow or Prefect run (they were started against
        it and reconnect there, so that is where it must come back)."""
        ports = {PORT_FIELDS[name]: r.port for name, r in running.items()}
        if ("postgres" in self.services and "postgres" not in running
                and {"mlflow", "prefect"} & running.keys()):
            last = self.postgres.last_port()
            if last is not None:
                ports["postgres_port"] = last
        return ports

    def _following_running(self, running: dict[str, PidRecord]) -> StackSettings:
        """The settings with a bound port (`_bound_ports`) wherever nobody chose that port
        (StackSettings.default_ports); a chosen port that differs is check_ports' error."""
        return replace(self.settings, **{field: port for field, port in self._bound_ports(running).items()
                                         if field in self.settings.default_ports})

    def _effective_settings(self, running: dict[str, PidRecord]) -> StackSettings:
        """The settings with the ports the running servers really use (`_bound_ports`):
        `dmops env` or `status` without port options still point at a stack started with
        other ports, and at a stopped PostgreSQL where its clients expect it."""
        bound = self._bound_ports(running)
        if "postgres" not in running and "postgres_port" not in self.settings.default_ports:
            bound.pop("postgres_port", None)   # a chosen port is shown as chosen
        return replace(self.settings, **bound)

    def _live_records(self) -> dict[str, PidRecord]:
        """Pid records of the servers that run; pid files of servers that are gone are removed."""
        live = {}
        for name in self.services:
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

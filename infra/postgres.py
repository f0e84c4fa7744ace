"""The project's own PostgreSQL server: its binaries, its cluster under the stack's state folder,
start on a loopback port, readiness, fast shutdown.

The binaries are the machine's PostgreSQL server package (Debian's `postgresql`, PostgreSQL 15
on the build image, with the contrib modules: Prefect's migrations need `pg_trgm`); `make test`
installs it as root when it is missing, and `DMOPS_POSTGRES_BIN` points at any other PostgreSQL
bin folder. Only the binaries are used, never the machine's cluster: this server has its own
data folder, port and passwords, and runs as one more detached process of infra/processes.py,
with a pid file and a log like the stack's other servers.

initdb and postgres refuse to run as root. As root, both run as the unprivileged OS user
`postgres` (made by the Debian package; `DMOPS_POSTGRES_OS_USER` names another) through
`setpriv`, which execs in place: the recorded pid is the postmaster's own, so pid files,
liveness checks and signals work unchanged. That user owns the data folder (0700) and must be
able to enter every folder above it.

    server = PostgresServer(state_dir, port=5433)
    record = server.start(timeout=60)      # initdb once, spawn, wait until it accepts logins
    server.ensure_databases()              # roles and databases `mlflow`, `prefect`
    server.stop()                          # fast shutdown: clients disconnected, checkpoint written

State: <state>/postgres/data/ (the cluster), <state>/postgres/credentials.json (0600, the
superuser's and roles' passwords, infra/postgres_db.py), <state>/logs/postgres.log,
<state>/pids/postgres.pid."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from infra.errors import StackError
from infra.health import wait_until
from infra.layout import StateLayout
from infra.ports import port_in_use
from infra.postgres_bin import ENV_BIN, find_bin_dir, os_user, server_major, unreachable_folder
from infra.postgres_db import (SUPERUSER, TEAM_DATABASES, TEAM_EXTENSIONS, connect, connection_problem,
                               ensure_database, ensure_extension, ensure_role,
                               load_or_create_postgres_credentials, load_postgres_credentials, role_password,
                               sqlalchemy_url)
from infra.processes import (Memory, PidRecord, finish_stop, is_running, read_pid_file, spawn,
                             tree_memory, write_pid_file)
from infra.services import ServiceSpec

NAME = "postgres"
PORT_OPTION = "--postgres-port / DMOPS_POSTGRES_PORT"
# SIGINT is PostgreSQL's fast shutdown: clients are disconnected, a checkpoint is written, the
# server exits. SIGTERM (what the other servers get) is its smart shutdown, which waits for
# every client to leave: MLflow's and Prefect's connection pools never do.
STOP_SIGNAL = signal.SIGINT
STOP_GRACE = 30.0               # then SIGKILL (the next start then runs crash recovery)


@dataclass(frozen=True)
class PostgresServer:
    """One PostgreSQL cluster under `state_dir`, served on `host:port` (loopback), password
    (scram-sha-256) authentication only, no unix socket."""

    state_dir: Path
    port: int
    host: str = "127.0.0.1"

    @property
    def layout(self) -> StateLayout:
        return StateLayout(Path(self.state_dir).expanduser().resolve())

    @property
    def root(self) -> Path:
        return self.layout.root / NAME

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def credentials_path(self) -> Path:
        return self.root / "credentials.json"

    @property
    def url(self) -> str:
        """Where it serves, without credentials (for messages and status lines)."""
        return f"postgresql://{self.host}:{self.port}"

    def last_port(self) -> Optional[int]:
        """The port the cluster was last started on (PostgreSQL writes that start's command
        line to postmaster.opts), None before its first start: where a stopped server is to
        be found again when nobody names its port."""
        try:
            found = re.search(r'"port=(\d+)"', (self.data_dir / "postmaster.opts").read_text())
        except OSError:
            return None
        return int(found.group(1)) if found else None

    # ---- the cluster ----------------------------------------------------------------------

    def cluster_major(self) -> Optional[int]:
        """The PostgreSQL major version that made the cluster (its PG_VERSION), None before initdb."""
        try:
            return int((self.data_dir / "PG_VERSION").read_text().strip())
        except (OSError, ValueError):
            return None

    def bin_dir(self) -> Path:
        """The binaries that serve this cluster (`find_bin_dir`, preferring the cluster's version)."""
        return find_bin_dir(self.cluster_major())

    def initialise(self) -> bool:
        """Create the cluster once (initdb: UTF8, C locale, scram-sha-256 for every connection,
        superuser `postgres` with the generated password of credentials.json). True when it
        was created now, False when it existed.

        Raises StackError when the binaries are missing, when the data folder holds a cluster of
        another PostgreSQL major version, or (as root) when the OS user cannot reach it."""
        bin_dir = self.bin_dir()
        major = server_major(bin_dir)
        made_by = self.cluster_major()
        if made_by is not None:
            if not self.credentials_path.exists():
                raise StackError(f"{NAME}: the cluster in {self.data_dir} has no credentials file "
                                 f"{self.credentials_path}, so its superuser password is lost: stop the "
                                 f"stack and delete {self.root} to start afresh (its data goes with it)")
            if made_by != major:
                raise StackError(
                    f"{NAME}: the cluster in {self.data_dir} was made by PostgreSQL {made_by}, but the server "
                    f"binaries ({bin_dir}) are PostgreSQL {major}: set {ENV_BIN} to a PostgreSQL {made_by} bin "
                    f"folder, or (losing its data) stop the stack and delete {self.data_dir}")
            return False
        user = os_user()
        fresh = not self.data_dir.exists() or not any(self.data_dir.iterdir())
        self._prepare_data_dir(user, bin_dir)
        creds = load_or_create_postgres_credentials(self.credentials_path)
        # initdb reads the password from a file (never argv); the server's OS user must read it
        pwfile = self.root / ".initdb-password"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)   # 0600 from the start
        try:
            os.write(fd, (creds.superuser_password + "\n").encode())
            if user is not None:
                os.fchown(fd, user.pw_uid, user.pw_gid)
        finally:
            os.close(fd)
        try:
            done = subprocess.run(
                [*self._as_user(user), str(bin_dir / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER,
                 f"--pwfile={pwfile}", "--auth=scram-sha-256", "--encoding=UTF8", "--no-locale"],
                cwd=self.root, env=_server_env(), capture_output=True, text=True, timeout=300)
        finally:
            pwfile.unlink(missing_ok=True)
        if done.returncode != 0:
            tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
            if fresh:   # a half-made cluster would be taken for a whole one by the next start
                shutil.rmtree(self.data_dir, ignore_errors=True)
            raise StackError(f"{NAME}: initdb failed (exit {done.returncode}) for {self.data_dir}:\n{tail}")
        return True

    def _prepare_data_dir(self, user: Optional[pwd.struct_passwd], bin_dir: Path) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        if user is None:
            return
        # the server's OS user enters <state>/postgres (it holds credentials.json, 0600 to root)
        # and owns data/, which PostgreSQL requires to be 0700 and its own
        self.root.chmod(0o711)
        os.chown(self.data_dir, user.pw_uid, user.pw_gid)
        self._check_reachable(user, bin_dir)

    def _check_reachable(self, user: Optional[pwd.struct_passwd], bin_dir: Path) -> None:
        """StackError when the server's OS user cannot reach its data folder or binaries."""
        if user is None:
            return
        for path, what in ((self.data_dir, "the data folder"), (bin_dir, "the server binaries")):
            blocked = unreachable_folder(path, user)
            if blocked is not None:
                mode = stat.S_IMODE(blocked.stat().st_mode)
                raise StackError(
                    f"{NAME} runs as the OS user {user.pw_name!r} (it refuses root), which cannot enter "
                    f"{blocked} (mode {mode:o}) on the way to {what} {path}: keep the stack's state folder "
                    f"where every user may enter (not under /root or a 0700 temporary folder), or "
                    f"`chmod o+x {blocked}`")

    # ---- the process ----------------------------------------------------------------------

    def spec(self) -> ServiceSpec:
        """How the server is started, in the form of the stack's other servers (infra/services.py).
        `health_url` is not HTTP: use `problem()` to check it (psycopg login + SELECT 1)."""
        bin_dir = self.bin_dir()
        argv = [*self._as_user(os_user()), str(bin_dir / "postgres"), "-D", str(self.data_dir),
                "-c", f"listen_addresses={self.host}", "-c", f"port={self.port}",
                # TCP with a password only: no socket file in /tmp or /var/run to collide with
                # another cluster's, and no connection that skips authentication
                "-c", "unix_socket_directories="]
        return ServiceSpec(NAME, self.port, self.url, self.url, argv, self.root, _server_env(), PORT_OPTION)

    def problem(self) -> Optional[str]:
        """Readiness probe: None when the superuser can log in and run a query, else a short reason."""
        password = load_postgres_credentials(self.credentials_path).superuser_password
        return connection_problem(self.host, self.port, SUPERUSER, password, "postgres")

    # ---- inside the server ------------------------------------------------------------------

    def connect(self, database: str = "postgres", role: str = SUPERUSER, password: Optional[str] = None):
        """A psycopg connection (autocommit) as `role` (its stored password unless `password` is
        given). StackError, one line naming the server and the fix, when the server is not
        running, refuses the password or lacks the database."""
        if password is None:
            password = self._password(role)
        return connect(self.host, self.port, role, password, database,
                       password_hint=f"{self.credentials_path} (0600)")

    def ensure_databases(self, databases: Optional[dict[str, str]] = None) -> list[str]:
        """Each database (name -> owning role; default TEAM_DATABASES: `mlflow`, `prefect`) and
        its role, with the role's stored password (generated on first use), and the extensions
        of TEAM_EXTENSIONS (`pg_trgm` in `prefect`). Idempotent; returns the databases created
        now. The server must be running; StackError when an extension is not installed."""
        databases = TEAM_DATABASES if databases is None else databases
        created = []
        with self.connect() as conn:
            for database, owner in databases.items():
                ensure_role(conn, owner, role_password(self.credentials_path, owner))
                if ensure_database(conn, database, owner):
                    created.append(database)
        for database in databases:
            for extension in TEAM_EXTENSIONS.get(database, ()):
                with self.connect(database) as conn:
                    ensure_extension(conn, extension, f"{self.host}:{self.port}")
        return created

    def database_url(self, database: str, role: Optional[str] = None, driver: str = "psycopg") -> str:
        """SQLAlchemy URL of `database` as `role` (default: the role named like the database):
        `postgresql+psycopg://...` for MLflow, driver="asyncpg" for Prefect. Holds the password."""
        role = role or database
        return sqlalchemy_url(self.host, self.port, role, self._password(role), database, driver)

    def _password(self, role: str) -> str:
        if role == SUPERUSER:
            return load_postgres_credentials(self.credentials_path).superuser_password
        return role_password(self.credentials_path, role)

    def running(self) -> Optional[PidRecord]:
        """The pid record of this server while it runs, else None."""
        record = read_pid_file(self.layout.pid_file(NAME))
        return record if record is not None and is_running(record) else None

    def start(self, timeout: float = 60) -> PidRecord:
        """Initialise the cluster if needed, start the server, return when it accepts logins.
        A running server is kept (on the same port) and only checked again.

        Raises StackError: port taken by another program, binaries missing, cluster of another
        version, server exited during start-up (with its log's tail), or not ready in `timeout` s."""
        t0 = time.monotonic()
        record = self.running()
        if record is not None and record.port != self.port:
            raise StackError(f"{NAME} of the stack in {self.layout.root} is running on port {record.port}, "
                             f"not {self.port}; stop it first to change its port")
        if record is None and port_in_use(self.host, self.port):
            raise StackError(f"port {self.port} ({NAME}) on {self.host} is in use by another program; "
                             f"stop it or choose another port with {PORT_OPTION}")
        self.initialise()
        self._check_reachable(os_user(), self.bin_dir())   # the state folder may have moved since
        spec = self.spec()
        if record is None:
            record = spawn(spec.argv, spec.env, spec.cwd, self.layout.log(NAME), self.port)
            write_pid_file(self.layout.pid_file(NAME), record)
        try:
            wait_until(spec, record, self.layout, t0 + timeout, timeout, self.problem, "accept connections")
        except BaseException:
            self.stop()
            raise
        return record

    def stop(self, grace: float = STOP_GRACE) -> bool:
        """Fast shutdown (SIGINT to the postmaster), SIGKILL after `grace` s; removes the pid file.
        True when the server was running."""
        record = self.running()
        if record is None:
            self.layout.pid_file(NAME).unlink(missing_ok=True)
            return False
        try:
            os.kill(record.pid, STOP_SIGNAL)
        except ProcessLookupError:
            pass
        finish_stop(record, grace)
        self.layout.pid_file(NAME).unlink(missing_ok=True)
        return True

    def memory(self) -> Optional[Memory]:
        """Memory of the postmaster and its children (each child of PostgreSQL is its own
        process group, so a process-group sum would see the postmaster alone); None when
        stopped."""
        record = self.running()
        return None if record is None else tree_memory(record.pid)

    @staticmethod
    def _as_user(user: Optional[pwd.struct_passwd]) -> list[str]:
        if user is None:
            return []
        return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--"]


def _server_env() -> dict[str, str]:
    """This environment without libpq/PostgreSQL variables (PGDATA, PGPORT, ... would override
    what the command line says), with C messages so the log reads the same everywhere."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_MESSAGES"] = "C"
    return env

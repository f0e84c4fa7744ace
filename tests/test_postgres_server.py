"""The project's own PostgreSQL server (infra/postgres.py): a real server on a free loopback
port with its cluster in a temporary state folder, password logins, the team databases, a
restart that keeps data, and one-line errors for what stops it."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
import time
from pathlib import Path

import pytest

from infra.errors import StackError
from infra.ports import free_ports
from infra.postgres import PostgresServer
from infra.postgres_bin import ENV_BIN, find_bin_dir, os_user, server_major


def reachable_state_dir() -> Path:
    """A fresh state folder every user may enter: as root the server runs as the `postgres`
    OS user, which cannot pass pytest's 0700 temporary folders."""
    path = Path(tempfile.mkdtemp(prefix="dmops-pg-test-"))
    path.chmod(0o711)
    return path


@pytest.fixture(scope="module")
def server():
    state = reachable_state_dir()
    pg = PostgresServer(state, port=free_ports(1)[0])
    pg.start(timeout=90)
    try:
        yield pg
    finally:
        pg.stop()
        shutil.rmtree(state, ignore_errors=True)


def test_the_team_databases_are_made_once_with_generated_passwords(server):
    assert server.ensure_databases() in (["mlflow", "prefect"], [])
    assert server.ensure_databases() == []                # idempotent
    with server.connect("mlflow", role="mlflow") as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == ("mlflow", "mlflow")
    with server.connect("prefect", role="prefect") as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("prefect",)
    # each role sees its own database only
    with pytest.raises(StackError, match=r"PostgreSQL at 127\.0\.0\.1:\d+: .*permission denied"):
        server.connect("prefect", role="mlflow")
    creds = server.credentials_path
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    secrets = [server._password(role) for role in ("postgres", "mlflow", "prefect")]
    log = server.layout.log("postgres").read_text()
    for secret in secrets:
        assert len(secret) >= 32 and secret not in log and secret not in server.layout.pid_file("postgres").read_text()
    assert server.database_url("prefect", driver="asyncpg").startswith("postgresql+asyncpg://prefect:")
    assert server.database_url("mlflow").startswith("postgresql+psycopg://mlflow:")
    with server.connect("prefect", role="prefect") as conn:   # Prefect's migrations need it
        assert conn.execute("SELECT extname FROM pg_extension WHERE extname = 'pg_trgm'").fetchone()


def test_the_server_runs_unprivileged_on_loopback_only(server):
    record = server.running()
    uid = int(next(line.split()[1] for line in Path(f"/proc/{record.pid}/status").read_text().splitlines()
                   if line.startswith("Uid:")))
    assert uid != 0 and (os.geteuid() != 0 or uid == os_user().pw_uid)
    with server.connect() as conn:
        assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
        assert conn.execute("SHOW unix_socket_directories").fetchone() == ("",)
        assert conn.execute("SHOW password_encryption").fetchone() == ("scram-sha-256",)
    hba = [line.split() for line in (server.data_dir / "pg_hba.conf").read_text().splitlines()
           if line.strip() and not line.startswith("#")]
    assert hba and all(rule[-1] == "scram-sha-256" for rule in hba)


def test_its_memory_counts_the_postmaster_and_its_children_with_shared_pages_once(server):
    """The backends are children of the postmaster in process groups of their own, and all map
    the shared buffers: summed RSS counts those pages once per process, PSS once in all."""
    memory = server.memory()
    # the postmaster, checkpointer, background writer, WAL writer, autovacuum launcher, ...
    assert memory is not None and memory.processes >= 3
    assert memory.pss is not None and 0 < memory.pss < memory.rss and memory.bytes == memory.pss


def test_a_wrong_password_is_one_line_naming_the_server_and_where_the_password_is(server):
    server.ensure_databases()
    with pytest.raises(StackError) as refused:
        server.connect("mlflow", role="mlflow", password="not-the-password")
    message = str(refused.value)
    assert message == (f"PostgreSQL at 127.0.0.1:{server.port} refused the password of role 'mlflow' "
                       f"(password authentication failed): use the role's password kept in "
                       f"{server.credentials_path} (0600)")


def test_a_restart_keeps_the_data_and_shuts_down_cleanly(server):
    server.ensure_databases()
    with server.connect("mlflow", role="mlflow") as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS kept (k text PRIMARY KEY, v int)")
        conn.execute("INSERT INTO kept VALUES ('before-restart', 7) ON CONFLICT (k) DO UPDATE SET v = 7")
        # an open client session, as MLflow's and Prefect's pools hold: a smart shutdown would
        # wait for it forever; the fast shutdown ends it
        t0 = time.monotonic()
        assert server.stop() is True
        stop_s = time.monotonic() - t0
    assert stop_s < 10 and server.running() is None
    server.start(timeout=60)
    with server.connect("mlflow", role="mlflow") as conn:
        assert conn.execute("SELECT v FROM kept WHERE k = 'before-restart'").fetchone() == (7,)
    log = server.layout.log("postgres").read_text()
    last_start = log.rsplit("===== ", 1)[1]
    assert "database system was shut down at" in last_start   # clean: no crash recovery
    assert "database system was interrupted" not in last_start


def test_a_stopped_server_is_one_line_naming_the_server_and_the_fix(server):
    server.stop()
    try:
        with pytest.raises(StackError) as down:
            server.connect("mlflow", role="mlflow")
        assert str(down.value) == (f"PostgreSQL at 127.0.0.1:{server.port} is not running "
                                   f"(connection refused): start it with `dmops up --team`")
        assert server.problem() == str(down.value)
    finally:
        server.start(timeout=60)


def test_a_taken_port_is_refused_before_anything_starts(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        pg = PostgresServer(tmp_path / "state", port=port)
        with pytest.raises(StackError, match=rf"^port {port} \(postgres\) on 127\.0\.0\.1 is in use by another "
                                             rf"program; stop it or choose another port with --postgres-port"):
            pg.start()
    assert not pg.data_dir.exists()


def test_a_cluster_of_another_major_version_is_refused_naming_both(tmp_path):
    installed = server_major(find_bin_dir())
    pg = PostgresServer(tmp_path / "state", port=free_ports(1)[0])
    pg.data_dir.mkdir(parents=True)
    (pg.data_dir / "PG_VERSION").write_text(f"{installed - 1}\n")     # a version not installed here
    (pg.credentials_path).write_text('{"superuser_password": "x", "roles": {}}')
    with pytest.raises(StackError, match=rf"made by PostgreSQL {installed - 1}, but the server binaries .* are "
                                         rf"PostgreSQL {installed}: set DMOPS_POSTGRES_BIN to a PostgreSQL "
                                         rf"{installed - 1} bin folder"):
        pg.start()


def test_missing_binaries_name_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_BIN, str(tmp_path / "no-bin"))
    with pytest.raises(StackError, match=r"^DMOPS_POSTGRES_BIN=.*no-bin holds no executable initdb and postgres: "
                                         r"point it at a PostgreSQL server's bin folder"):
        PostgresServer(tmp_path / "state", port=free_ports(1)[0]).start()
    monkeypatch.delenv(ENV_BIN)
    monkeypatch.setattr("infra.postgres_bin.DEBIAN_BINS", tmp_path / "no-debian")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(StackError, match=r"^PostgreSQL server binaries \(initdb, postgres\) not found .*: install "
                                         r"the server \(`sudo apt-get install -y postgresql`, which `make team` and `make test` run"):
        PostgresServer(tmp_path / "state", port=free_ports(1)[0]).start()


@pytest.mark.skipif(os.geteuid() != 0, reason="as another user the server runs as that user")
def test_as_root_a_folder_the_server_user_cannot_enter_is_named(tmp_path):
    # pytest's temporary folders are 0700: the `postgres` OS user cannot pass them
    pg = PostgresServer(tmp_path / "state", port=free_ports(1)[0])
    with pytest.raises(StackError, match=r"runs as the OS user '\w+' \(it refuses root\), which cannot enter "
                                         r"/.* \(mode 700\)"):
        pg.start()


def test_a_privileged_port_is_refused_before_any_server_starts():
    """PostgreSQL never runs as root, and no other user may bind a port below the kernel's
    unprivileged start (1024 by default): said before any server starts, not as a start-up
    failure with a log to read."""
    from infra.preflight import unprivileged_port_start
    from infra.settings import StackSettings
    from infra.stack import Stack

    low = unprivileged_port_start() - 1
    if low < 1:
        pytest.fail("this kernel lets every user bind every port (ip_unprivileged_port_start 0): "
                    "no privileged port to try")
    s3, mlflow, prefect = free_ports(3)
    state = reachable_state_dir()
    try:
        stack = Stack(StackSettings(state_dir=state / "state", team=True, s3_port=s3, mlflow_port=mlflow,
                                    prefect_port=prefect, postgres_port=low))
        with pytest.raises(StackError, match=rf"^port {low} \(postgres\) is a privileged port \(below "
                                             rf"{low + 1}\), .* choose one of {low + 1}-65535 with --postgres-port"):
            stack.up()
        assert not any(s.running for s in stack.status().values())   # no server was started
    finally:
        shutil.rmtree(state, ignore_errors=True)

"""Inside the project's PostgreSQL server: its passwords, logins with one-line errors, and the
roles and databases the team stack's servers use (`mlflow`, `prefect`), made idempotently.

Passwords are random (`secrets.token_hex`), kept in one 0600 JSON file in the stack's state
folder (like the S3 keys of infra/credentials.py) and never printed or put on a command line.
A role's password reaches the server only as a SCRAM-SHA-256 verifier computed here (libpq's
PQencryptPasswordConn), so not even a failed statement in the server's log shows it."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from infra.credentials import write_private_json
from infra.errors import StackError

SUPERUSER = "postgres"
# database -> owning role, for the team stack's servers (MLflow: postgresql+psycopg, Prefect:
# postgresql+asyncpg). Each server logs in as its own role, which owns its database only.
TEAM_DATABASES = {"mlflow": "mlflow", "prefect": "prefect"}
# extensions a database needs before its server's migrations run (Prefect's create pg_trgm
# indexes); made here as the superuser, so a server without them fails at `up`, saying so
TEAM_EXTENSIONS = {"prefect": ("pg_trgm",)}
DRIVERS = {"psycopg": "postgresql+psycopg", "asyncpg": "postgresql+asyncpg", "libpq": "postgresql"}
CONNECT_TIMEOUT_S = 5


@dataclass(frozen=True)
class PostgresCredentials:
    """The superuser's password and each role's, as stored in credentials.json."""

    superuser_password: str = field(repr=False)
    roles: dict[str, str] = field(default_factory=dict, repr=False)


def load_postgres_credentials(path: Path) -> PostgresCredentials:
    """The stored passwords; StackError (naming the fix) when the file is missing or damaged."""
    from infra.credentials import load_secrets

    return load_secrets(
        path, lambda data: PostgresCredentials(
            str(data["superuser_password"]),
            {str(k): str(v) for k, v in dict(data.get("roles", {})).items()}),
        f"no PostgreSQL credentials at {path}: the server of this state folder was never "
        f"initialised; start it first (`dmops up --team`)",
        lambda e: f"{path} is not a valid PostgreSQL credentials file ({e}); the cluster's "
                  f"passwords are lost with it: stop the stack and delete {path.parent} to start afresh")


def load_or_create_postgres_credentials(path: Path) -> PostgresCredentials:
    """Stored passwords, or a new superuser password written to `path` (0600) on first use."""
    if path.exists():
        return load_postgres_credentials(path)
    creds = PostgresCredentials(secrets.token_hex(24))
    _save(path, creds)
    return creds


def role_password(path: Path, role: str) -> str:
    """The stored password of `role`, generated and stored (0600) the first time it is asked for."""
    creds = load_postgres_credentials(path)
    if role not in creds.roles:
        creds = PostgresCredentials(creds.superuser_password, {**creds.roles, role: secrets.token_hex(24)})
        _save(path, creds)
    return creds.roles[role]


def _save(path: Path, creds: PostgresCredentials) -> None:
    write_private_json(path, {"superuser_password": creds.superuser_password, "roles": creds.roles})


def sqlalchemy_url(host: str, port: int, role: str, password: str, database: str,
                   driver: str = "psycopg") -> str:
    """`postgresql+<driver>://role:password@host:port/database`. Holds the password: pass it in
    an environment variable or a 0600 file, never log it. Passwords made here are hex, so
    they need no URL quoting."""
    from urllib.parse import quote

    return f"{DRIVERS[driver]}://{quote(role, safe='')}:{quote(password, safe='')}@{host}:{port}/{database}"


def describe_connect_error(error: Exception, host: str, port: int, user: str, database: str,
                           password_hint: str = "the stack's postgres/credentials.json") -> str:
    """One line: which server refused what, and what to do, from a psycopg connection error.
    `password_hint` says where the right password is kept."""
    text = " ".join(str(error).split())
    where = f"PostgreSQL at {host}:{port}"
    if "password authentication failed" in text:
        return (f"{where} refused the password of role {user!r} (password authentication failed): "
                f"use the role's password kept in {password_hint}")
    if "Connection refused" in text:
        return f"{where} is not running (connection refused): start it with `dmops up --team`"
    if f'database "{database}" does not exist' in text:
        return f"{where} has no database {database!r}: `dmops up --team` creates the stack's databases"
    if "starting up" in text or "shutting down" in text or "recovery" in text:
        return f"{where} is not accepting connections yet ({text[-120:]}); wait and retry"
    if "timeout expired" in text:
        return f"{where} did not answer within {CONNECT_TIMEOUT_S} s: check that the server runs and the port is its"
    return f"{where}: cannot log in as {user!r} to {database!r}: {text[-200:]}"


def connect(host: str, port: int, user: str, password: str, database: str = "postgres",
            autocommit: bool = True, password_hint: str = "the stack's postgres/credentials.json"):
    """A psycopg connection; StackError with one line naming the server and the fix when the
    server is down, refuses the password, lacks the database or does not answer in 5 s."""
    import psycopg

    try:
        return psycopg.connect(host=host, port=port, user=user, password=password, dbname=database,
                               connect_timeout=CONNECT_TIMEOUT_S, autocommit=autocommit)
    except psycopg.OperationalError as e:
        raise StackError(describe_connect_error(e, host, port, user, database, password_hint)) from None


def connection_problem(host: str, port: int, user: str, password: str, database: str) -> Optional[str]:
    """None when `user` logs in to `database` and `SELECT 1` answers; else the reason in one line."""
    try:
        with connect(host, port, user, password, database) as conn:
            conn.execute("SELECT 1").fetchone()
    except StackError as e:
        return str(e)
    return None


def ensure_role(conn, role: str, password: str) -> None:
    """Role `role` (LOGIN, no other attribute) with `password`; an existing role gets the password
    again, so the stored file and the server never disagree."""
    from psycopg import sql

    verifier = conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256").decode()
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
    verb = "ALTER" if exists else "CREATE"
    conn.execute(sql.SQL(verb + " ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(verifier)))


def ensure_database(conn, database: str, owner: str) -> bool:
    """Database `database` owned by `owner` (which must exist), which no other role (PUBLIC)
    may connect to; True when it was created now. `conn` must be in autocommit mode (CREATE
    DATABASE runs outside a transaction)."""
    from psycopg import sql

    name, role = sql.Identifier(database), sql.Identifier(owner)
    exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
    if exists:
        conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(name, role))
    else:
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(name, role))
    # by default every role may connect to every database; the stack's roles see their own only
    conn.execute(sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(name))
    return not exists


def ensure_extension(conn, extension: str, where: str) -> None:
    """`CREATE EXTENSION IF NOT EXISTS` in the database of `conn` (a superuser's); StackError
    naming the package to install when the server's installation lacks the extension."""
    import psycopg
    from psycopg import sql

    try:
        conn.execute(sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(sql.Identifier(extension)))
    except psycopg.Error as e:
        if "is not available" not in str(e):
            raise
        raise StackError(f"PostgreSQL at {where} lacks the extension {extension!r} (the contrib modules), which "
                         f"{conn.info.dbname} needs: install them (Debian: `apt-get install postgresql-contrib`) "
                         f"or set DMOPS_POSTGRES_BIN to a PostgreSQL installation that has them") from None

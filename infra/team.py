"""The team stack's accounts: who may do what, their generated secrets, and each role's client
settings.

Roles (what `dmops env --team --role ROLE` prints):

| role       | MLflow (basic-auth)                         | Prefect API      | S3 (SeaweedFS)                   |
|------------|---------------------------------------------|------------------|----------------------------------|
| `pipeline` | logs runs, registers versions, moves aliases | the auth string  | read/write on every bucket       |
| `viewer`   | reads everything, changes nothing            | none             | none (artifacts via MLflow)      |
| `reader`   | none                                         | none             | read-only on the releases bucket |

The stack itself uses two more accounts that no role gets: MLflow's `admin` (makes the other
accounts) and the S3 identity of `credentials.json` (makes the buckets; MLflow's artifact proxy).
Prefect's open-source server knows one credential only (`PREFECT_SERVER_API_AUTH_STRING`), so
only `pipeline` (flows, worker, `dmops deploy`) gets it.

Every secret is random, written once to `<state>/team-credentials.json` (0600) and never printed
or put on a command line: servers get theirs through their environment or a 0600 file."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path

from infra.credentials import Credentials, load_secrets, write_private_json
from infra.settings import StackSettings

ROLES = ("pipeline", "viewer", "reader")
MLFLOW_ADMIN = "admin"
MLFLOW_USERS = ("pipeline", "viewer")          # MLflow accounts besides the admin
S3_USERS = ("pipeline", "reader")              # S3 identities besides the stack's own
PREFECT_USER = "pipeline"                      # the user part of Prefect's auth string


@dataclass(frozen=True)
class TeamCredentials:
    """The team stack's generated secrets, as kept in team-credentials.json."""

    mlflow_passwords: dict[str, str] = field(repr=False)    # admin, pipeline, viewer
    mlflow_flask_secret: str = field(repr=False)            # MLflow's CSRF key (basic-auth app)
    prefect_auth_string: str = field(repr=False)            # "pipeline:<token>"
    s3: dict[str, Credentials] = field(repr=False)          # pipeline, reader


def _token() -> str:
    return secrets.token_hex(24)


def load_team_credentials(path: Path) -> TeamCredentials:
    """The stored team secrets; StackError naming the fix when the file is missing or damaged."""
    def parse(data: dict) -> TeamCredentials:
        return TeamCredentials(
            {str(k): str(v) for k, v in data["mlflow_passwords"].items()}, str(data["mlflow_flask_secret"]),
            str(data["prefect_auth_string"]),
            {name: Credentials(str(c["access_key_id"]), str(c["secret_access_key"]))
             for name, c in data["s3"].items()})

    return load_secrets(
        path, parse,
        f"no team accounts at {path}: no team stack was started in {path.parent}; "
        f"start one with `dmops up --team` (or name its folder with --state-dir)",
        lambda e: f"{path} is not a valid team accounts file ({e}): the MLflow accounts in the "
                  f"stack's PostgreSQL keep the old passwords; stop the stack (`dmops down --team`) "
                  f"and delete {path.parent} to start the team stack afresh")


def load_or_create_team_credentials(path: Path) -> TeamCredentials:
    """Stored team secrets, or new random ones written to `path` (0600) on the first start."""
    if path.exists():
        return load_team_credentials(path)
    creds = TeamCredentials(
        {name: _token() for name in (MLFLOW_ADMIN, *MLFLOW_USERS)}, _token(), f"{PREFECT_USER}:{_token()}",
        {name: Credentials("DMOPS" + name.upper() + secrets.token_hex(6).upper(), secrets.token_hex(20))
         for name in S3_USERS})
    write_private_json(path, {
        "mlflow_passwords": creds.mlflow_passwords, "mlflow_flask_secret": creds.mlflow_flask_secret,
        "prefect_auth_string": creds.prefect_auth_string,
        "s3": {name: {"access_key_id": c.access_key_id, "secret_access_key": c.secret_access_key}
               for name, c in creds.s3.items()}})
    return creds


def s3_identities(team: TeamCredentials, s: StackSettings) -> list[dict]:
    """SeaweedFS identities of the roles (`-s3.config` format): `pipeline` reads and writes
    every bucket, `reader` reads and lists the releases bucket only."""
    def identity(name: str, actions: list[str]) -> dict:
        c = team.s3[name]
        return {"name": name, "credentials": [{"accessKey": c.access_key_id, "secretKey": c.secret_access_key}],
                "actions": actions}

    return [identity("pipeline", ["Read", "Write", "List", "Tagging"]),
            identity("reader", [f"Read:{s.releases_bucket}", f"List:{s.releases_bucket}"])]


def role_env(role: str, s: StackSettings, team: TeamCredentials) -> dict[str, str]:
    """Client settings of `role` (ROLES) for the team stack served as `s` says. Holds secrets:
    export them, do not log them. ValueError for an unknown role."""
    from infra.services import REGION

    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; the team stack's roles are {', '.join(ROLES)}")
    env: dict[str, str] = {}
    if role in MLFLOW_USERS:
        env |= {"MLFLOW_TRACKING_URI": s.mlflow_url, "MLFLOW_TRACKING_USERNAME": role,
                "MLFLOW_TRACKING_PASSWORD": team.mlflow_passwords[role],
                # MLflow 3 clients report usage to the internet unless told not to
                "MLFLOW_DISABLE_TELEMETRY": "true"}
    if role == PREFECT_USER:
        env |= {"PREFECT_API_URL": s.prefect_api_url, "PREFECT_API_AUTH_STRING": team.prefect_auth_string}
    if role in S3_USERS:
        c = team.s3[role]
        env |= {"AWS_ACCESS_KEY_ID": c.access_key_id, "AWS_SECRET_ACCESS_KEY": c.secret_access_key,
                "AWS_DEFAULT_REGION": REGION, "AWS_ENDPOINT_URL_S3": s.s3_url}
        if role == "pipeline":
            env["MLFLOW_S3_ENDPOINT_URL"] = s.s3_url
    return env

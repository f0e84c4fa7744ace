"""The team MLflow's basic-auth app: its config file and the accounts and roles of infra/team.py.

Why workspaces are switched on (`--enable-workspaces`, one workspace, `default`, which clients
reach without naming it): with them off, MLflow 3.17's basic-auth lets every signed-in user
create experiments and registered models (`_can_create_in_workspace` answers yes), and a
creator gets MANAGE on what it made, so a `viewer` could make, and then own, the registered
model name the pipeline is about to use. With them on, creating needs a workspace-wide grant
(USE), which only `pipeline` gets:

- `pipeline`: role `dmops-pipeline` in `default`: (workspace, *, USE) to create, and EDIT on
  every experiment and registered model (runs, versions, tags, aliases), including those another
  account made; MANAGE on what it creates.
- `viewer`: role `dmops-viewer`: READ on every experiment and registered model, no workspace
  grant: it reads runs, versions and artifacts and is refused (403) every create and change.
- `default_permission = READ`; anonymous requests are refused (401).

The auth database lives in the stack's PostgreSQL (`mlflow_auth`, owned by the `mlflow` role)
beside the tracking data, so one server holds the whole registry state and its accounts (one
thing to back up; the Kubernetes setup runs it the same way). Its URL, password included, is in
the config file, which is therefore written 0600 at every start. The admin password reaches the
server only through MLFLOW_AUTH_ADMIN_PASSWORD (used at the first start); the accounts are made
and their passwords set again at every `up` over the REST API as `admin`, so the stored file
and the server never disagree."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Optional

from infra.errors import StackError
from infra.health import basic_auth
from infra.team import MLFLOW_ADMIN, TeamCredentials

AUTH_DATABASE = "mlflow_auth"
AUTH_CACHE_TTL_S = 300
WORKSPACE = "default"
# role name -> (MLflow account, grants: (resource type, pattern, permission))
ROLE_GRANTS = {
    "dmops-pipeline": ("pipeline", [("workspace", "*", "USE"), ("experiment", "*", "EDIT"),
                                    ("registered_model", "*", "EDIT")]),
    "dmops-viewer": ("viewer", [("experiment", "*", "READ"), ("registered_model", "*", "READ")]),
}
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def write_auth_config(path: Path, database_url: str) -> None:
    """MLflow's basic_auth.ini at `path` (0600: `database_url` holds a password)."""
    from infra.credentials import write_private_text

    write_private_text(path, "\n".join([
        "[mlflow]",
        "default_permission = READ",
        f"database_uri = {database_url}",
        f"admin_username = {MLFLOW_ADMIN}",
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
        # with workspaces on, only an explicit role grant lets a user into `default`
        "grant_default_workspace_access = false",
        # Every request's password is checked with PBKDF2 (0.3-0.6 s of CPU on the 2-core
        # build machine); the pipeline sends thousands. The cache is per worker and the server
        # runs one, which is also where password changes go, so nothing stale is ever accepted
        # for longer than the TTL after a change made outside the API.
        f"auth_cache_ttl_seconds = {AUTH_CACHE_TTL_S}",
        ""]))


class MlflowAdmin:
    """REST calls to the basic-auth app as `admin`. Every failure is a StackError of one line
    naming the server and the call (never the password)."""

    def __init__(self, url: str, password: str, timeout: float = 10):
        self.url, self.timeout = url.rstrip("/"), timeout
        self._headers = basic_auth(MLFLOW_ADMIN, password)

    def call(self, method: str, path: str, body: Optional[dict] = None, query: Optional[dict] = None,
             missing_ok: bool = False) -> Optional[dict]:
        """JSON answer of `method path`; None for a 404 when `missing_ok`."""
        url = f"{self.url}{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        data = None if body is None else json.dumps(body).encode()
        headers = self._headers | ({"Content-Type": "application/json"} if data else {})
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with _OPENER.open(request, timeout=self.timeout) as answer:
                text = answer.read()
        except urllib.error.HTTPError as e:
            if e.code == 404 and missing_ok:
                return None
            if e.code == 401:
                raise StackError(f"MLflow at {self.url} refused the admin password of the team stack's "
                                 f"team-credentials.json (401): its auth database was made with another one; "
                                 f"stop the stack and delete its state folder to start afresh") from None
            raise StackError(f"MLflow at {self.url}: {method} {path} answered HTTP {e.code}: "
                             f"{e.read()[:200].decode(errors='replace')}") from None
        except (urllib.error.URLError, OSError) as e:
            raise StackError(f"MLflow at {self.url}: {method} {path} failed: {getattr(e, 'reason', e)}") from None
        return json.loads(text) if text.strip() else {}


def ensure_accounts(url: str, team: TeamCredentials) -> None:
    """The `pipeline` and `viewer` accounts with their stored passwords, and their roles and
    grants (ROLE_GRANTS) in workspace `default`. Idempotent; the server must be ready."""
    admin = MlflowAdmin(url, team.mlflow_passwords[MLFLOW_ADMIN])
    roles = {r["name"]: r for r in admin.call("GET", "/api/3.0/mlflow/roles/list",
                                              query={"workspace": WORKSPACE})["roles"]}
    for role_name, (user, grants) in ROLE_GRANTS.items():
        password = team.mlflow_passwords[user]
        if admin.call("GET", "/api/2.0/mlflow/users/get", query={"username": user}, missing_ok=True) is None:
            admin.call("POST", "/api/2.0/mlflow/users/create", {"username": user, "password": password})
        else:
            admin.call("PATCH", "/api/2.0/mlflow/users/update-password", {"username": user, "password": password})
        role = roles.get(role_name) or admin.call("POST", "/api/3.0/mlflow/roles/create",
                                                  {"workspace": WORKSPACE, "name": role_name})["role"]
        held = {(p["resource_type"], p["resource_pattern"], p["permission"])
                for p in admin.call("GET", "/api/3.0/mlflow/roles/permissions/list",
                                    query={"role_id": str(role["id"])})["role_permissions"]}
        for resource_type, pattern, permission in grants:
            if (resource_type, pattern, permission) not in held:
                admin.call("POST", "/api/3.0/mlflow/roles/permissions/add",
                           {"role_id": role["id"], "resource_type": resource_type,
                            "resource_pattern": pattern, "permission": permission})
        assigned = {r["name"] for r in admin.call("GET", "/api/3.0/mlflow/users/roles/list",
                                                  query={"username": user})["roles"]}
        if role_name not in assigned:
            admin.call("POST", "/api/3.0/mlflow/roles/assign", {"username": user, "role_id": role["id"]})

"""Which servers a `dmops` command talks to, found one way for every command.

A command names the variables it needs (`MLFLOW`, `PREFECT`, `S3`).  When the caller's
environment sets all of them (a team stack, or a shell that ran `eval "$(dmops env)"`), it is
used as it is; when it sets none of them, the running local stack's client environment is used
(`dmops up`, state folder `$DMOPS_STACK_DIR` or `.stack` in the dmops checkout:
`infra.settings.default_state_dir`); anything else is a `MissingStackEnv`
whose one-line message names the missing variables and the fix.  Every error a missing
environment causes goes through `fix_for_missing` so that each says the same thing.

Servers the caller's environment names may want credentials (a team stack, a team's own
servers): before a command starts, `check_credentials` asks MLflow and Prefect one cheap
question each with the credentials the environment holds, so that a missing or wrong password
is one line naming the server, the account and the fix (tasks/adapters/servers.py
`ServerRefused`) instead of a failure halfway through a flow run.

Imports nothing heavy: `infra` (the local stack's bookkeeping) only when it has to look.
"""

from __future__ import annotations

import os
from typing import Mapping, Optional

from tasks.adapters.missing_env import (MLFLOW, PREFECT, S3, SERVERS, fix_for_missing, holds_team_account,
                                       missing_message)

__all__ = ["MLFLOW", "PREFECT", "S3", "SERVERS", "MissingStackEnv", "client_env",
           "fix_for_missing", "missing_message", "server_env_or_exit"]


class MissingStackEnv(RuntimeError):
    """The environment names none (or only some) of the servers a command needs, and no local
    stack runs to stand in; the message ends with the fix."""


def client_env(*needed: str, environ: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """The environment for a command that talks to the servers named by `needed` (variable
    names such as MLFLOW, PREFECT, S3): `environ` (default os.environ) when it sets all of them,
    else, when it sets none, `environ` plus the running local stack's client environment.
    Raises MissingStackEnv (message with the fix) when only some are set, or none while
    `environ` holds a team account's settings (TEAM_MARKERS: the fix is another role's, never
    the local stack), or none and no local stack is running (healthy); infra's StackError for
    an unreadable stack state or bad DMOPS_* settings."""
    environ = dict(os.environ if environ is None else environ)
    missing = [name for name in needed if not environ.get(name)]
    if not missing:
        return environ
    present = [name for name in needed if name not in missing]
    team = holds_team_account(environ)
    if present or team:   # mixing a team's server with the local stack's would split one run's records
        raise MissingStackEnv(missing_message(missing, present, team=team))
    from infra.settings import StackSettings
    from infra.stack import Stack

    settings = StackSettings.from_env()
    stack = Stack(settings)
    status = stack.status()
    down = [name for name, s in status.items() if not s.healthy]
    if down:
        why = (f"the local stack in {settings.state_dir} is not running" if len(down) == len(status) else
               f"the local stack in {settings.state_dir} is not healthy ({', '.join(down)} down)")
        raise MissingStackEnv(missing_message(missing, why=why))
    return {**environ, **stack.client_env()}


# one cheap read per server that refuses it without valid credentials (both answer 401) and
# that reads the server's database (so a database that is down shows as a server error)
_PROBES = {MLFLOW: ("/api/2.0/mlflow/experiments/search?max_results=1", None),
           PREFECT: ("/flows/filter", b'{"limit": 1}')}


def check_credentials(env: Mapping[str, str], needed) -> None:
    """Raise ServerRefused (tasks/adapters/servers.py) when the MLflow or Prefect server that
    `env` names for `needed` refuses the credentials `env` holds (MLFLOW_TRACKING_USERNAME /
    PASSWORD or MLFLOW_TRACKING_TOKEN; PREFECT_API_AUTH_STRING) with 401; infra's StackError
    when one answers a server error and is the team stack's, whose PostgreSQL is down
    (`team_database_problem`).  A server that does
    not answer within 5 s, or answers anything else, passes: the command's own requests then
    report it with their retries.  Not asked: Prefect Cloud (PREFECT_API_KEY set) and S3 (a
    probe would need a bucket the role may read); their refusals are worded where they
    happen."""
    import base64
    import urllib.error
    import urllib.request

    from tasks.adapters.servers import MLFLOW as MLFLOW_SERVER
    from tasks.adapters.servers import PREFECT as PREFECT_SERVER
    from tasks.adapters.servers import refusal

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for variable, server in ((MLFLOW, MLFLOW_SERVER), (PREFECT, PREFECT_SERVER)):
        base = env.get(variable, "")
        if variable not in needed or not base.startswith(("http://", "https://")):
            continue
        headers = {}
        if variable == MLFLOW and env.get("MLFLOW_TRACKING_USERNAME"):
            pair = f"{env['MLFLOW_TRACKING_USERNAME']}:{env.get('MLFLOW_TRACKING_PASSWORD', '')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        elif variable == MLFLOW and env.get("MLFLOW_TRACKING_TOKEN"):
            headers["Authorization"] = f"Bearer {env['MLFLOW_TRACKING_TOKEN']}"
        elif variable == PREFECT and env.get("PREFECT_API_AUTH_STRING"):
            headers["Authorization"] = "Basic " + base64.b64encode(env["PREFECT_API_AUTH_STRING"].encode()).decode()
        elif variable == PREFECT and env.get("PREFECT_API_KEY"):
            continue   # Prefect Cloud: its workspace API has no route that every key may read
        path, body = _PROBES[variable]
        if body is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(base.rstrip("/") + path, data=body, headers=headers)
        try:
            with opener.open(request, timeout=5):
                pass
        except urllib.error.HTTPError as e:
            # 401 only: a 403 on these reads may be a narrow grant that still allows the
            # command's own requests, which then word their refusal themselves
            if e.code == 401:
                raise refusal(server, e.code, e, environ=env) from None
            if e.code >= 500:   # a server error: when it is the team stack's database, say so
                down = team_database_problem(base)
                if down:
                    from infra.errors import StackError

                    raise StackError(f"{server} at {base} answers {e.code} ({e.reason}): its "
                                     f"database is down: {down}") from None
        except (OSError, ValueError):   # not answering, or not a URL: the command says so itself
            pass


def team_database_problem(url: str) -> Optional[str]:
    """When `url` (an MLflow or Prefect server's) is a server of the team stack of this checkout
    (or of $DMOPS_TEAM_STACK_DIR) and that stack's PostgreSQL does not answer: the one line
    that says so and names the fix (infra/postgres.py); else None.  For a server that answers
    with a server error: its own answer says nothing about why."""
    from infra.errors import StackError
    from infra.settings import StackSettings
    from infra.stack import Stack

    try:
        stack = Stack(StackSettings.from_env(team=True))
        if not stack.layout.holds_team_stack():
            return None
        status = stack.status()
    except (StackError, OSError):
        return None
    # the status URLs are the servers' own; a client's Prefect URL ends in /api
    ours = {status[name].url.rstrip("/") for name in ("mlflow", "prefect") if name in status}
    if url.rstrip("/").removesuffix("/api") not in ours:
        return None
    postgres = status.get("postgres")
    return None if postgres is None or postgres.healthy else postgres.problem


def server_env_or_exit(*needed: str) -> dict[str, str]:
    """`client_env(*needed)` for a command: a missing environment (or unreadable local stack
    state) is `error: <message with the fix>` on stderr and exit code 1, no traceback; so are
    credentials that a server the caller's environment names refuses, and a team stack's
    server whose database is down (`check_credentials`)."""
    import typer

    from infra.errors import StackError
    from tasks.adapters.servers import ServerRefused

    given = all(os.environ.get(name) for name in needed)
    try:
        env = client_env(*needed)
        if given:   # the local stack that stands in for a missing environment wants none
            check_credentials(env, needed)
        return env
    except (MissingStackEnv, StackError, ServerRefused) as e:
        typer.secho(f"error: {' '.join(str(e).split())}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None

"""Which servers a `dmops` command talks to, found one way for every command.

A command names the variables it needs (`MLFLOW`, `PREFECT`, `S3`).  When the caller's
environment sets all of them (a team stack, or a shell that ran `eval "$(dmops env)"`), it is
used as it is; when it sets none of them, the running local stack's client environment is used
(`dmops up`, state folder `$DMOPS_STACK_DIR` or `.stack` in the dmops checkout:
`infra.settings.default_state_dir`); anything else is a `MissingStackEnv`
whose one-line message names the missing variables and the fix.  Every error a missing
environment causes goes through `fix_for_missing` so that each says the same thing.

Imports nothing heavy: `infra` (the local stack's bookkeeping) only when it has to look.
"""

from __future__ import annotations

import os
from typing import Mapping, Optional

from tasks.adapters.missing_env import MLFLOW, PREFECT, S3, SERVERS, fix_for_missing, missing_message

__all__ = ["MLFLOW", "PREFECT", "S3", "SERVERS", "MissingStackEnv", "client_env",
           "fix_for_missing", "missing_message", "server_env_or_exit"]


class MissingStackEnv(RuntimeError):
    """The environment names none (or only some) of the servers a command needs, and no local
    stack runs to stand in; the message ends with the fix."""


def client_env(*needed: str, environ: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """The environment for a command that talks to the servers named by `needed` (variable
    names such as MLFLOW, PREFECT, S3): `environ` (default os.environ) when it sets all of them,
    else, when it sets none, `environ` plus the running local stack's client environment.
    Raises MissingStackEnv (message with the fix) when only some are set, or none and no local
    stack is running (healthy); infra's StackError for an unreadable stack state or bad
    DMOPS_* settings."""
    environ = dict(os.environ if environ is None else environ)
    missing = [name for name in needed if not environ.get(name)]
    if not missing:
        return environ
    present = [name for name in needed if name not in missing]
    if present:   # mixing a team's server with the local stack's would split one run's records
        raise MissingStackEnv(missing_message(missing, present))
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


def server_env_or_exit(*needed: str) -> dict[str, str]:
    """`client_env(*needed)` for a command: a missing environment (or unreadable local stack
    state) is `error: <message with the fix>` on stderr and exit code 1, no traceback."""
    import typer

    from infra.errors import StackError

    try:
        return client_env(*needed)
    except (MissingStackEnv, StackError) as e:
        typer.secho(f"error: {' '.join(str(e).split())}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None

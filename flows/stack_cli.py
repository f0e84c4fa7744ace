"""`dmops up | down | status | env`: the local stack from the command line; with `--team`, the
team stack (infra/team.py: PostgreSQL, authentication, one account per role), whose state folder
is its own (--state-dir, else $DMOPS_TEAM_STACK_DIR, else `.stack-team` in the dmops checkout).
`dmops env --team --role pipeline|viewer|reader` prints one role's client settings: the only
command that prints a secret.

`register(app)` adds the four commands to the main `dmops` app. Errors print one
`error: ...` line (a start-up failure adds the server's log tail) and exit with code 1.

The state folder: --state-dir, else $DMOPS_STACK_DIR, else `.stack` in the dmops checkout
(infra.settings.default_state_dir), the same from every working folder.  A folder the user
named (option or variable) is checked before anything is read or started, exit code 2: its
parent must exist (`up` creates the folder itself, never a chain of folders), and `status`,
`env` and `down` refuse one that holds no stack instead of reporting an empty one as
"stopped".  The default folder without a stack: `status` and `env` say to run `dmops up`
(exit 1), `down` has nothing to stop (exit 0)."""

from __future__ import annotations

import shlex
import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Iterator, Optional

import typer

StateDirOpt = typer.Option(None, "--state-dir", help="Folder of the stack's state (default: "
                           "$DMOPS_STACK_DIR, else .stack in the dmops checkout, from any working "
                           "folder; with --team: $DMOPS_TEAM_STACK_DIR, else .stack-team).")
# a port out of range is the user's to fix (exit 2) before anything is read or started
S3PortOpt = typer.Option(None, "--s3-port", min=1, max=65535,
                         help="S3 port (default: $DMOPS_S3_PORT or 8333).")
MlflowPortOpt = typer.Option(None, "--mlflow-port", min=1, max=65535,
                             help="MLflow port (default: $DMOPS_MLFLOW_PORT or 5000).")
PrefectPortOpt = typer.Option(None, "--prefect-port", min=1, max=65535,
                              help="Prefect port (default: $DMOPS_PREFECT_PORT or 4200).")
PostgresPortOpt = typer.Option(None, "--postgres-port", min=1, max=65535,
                               help="The team stack's PostgreSQL port (default: $DMOPS_POSTGRES_PORT or 5433).")
TeamOpt = typer.Option(False, "--team", help="The team stack: PostgreSQL behind MLflow and Prefect, "
                       "authentication, roles (state: $DMOPS_TEAM_STACK_DIR, else .stack-team).")


@contextmanager
def _stack_errors() -> Iterator[None]:
    """StackError becomes `error: ...` on stderr and exit code 1, without a traceback."""
    from infra.errors import StackError

    try:
        yield
    except StackError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        raise typer.Exit(130) from None


# what a command does with a state folder that holds no stack
CREATE, REFUSE, NOTHING_TO_DO = "create", "refuse", "nothing to do"
# `dmops status` exit status when a server is stopped or not answering (LSB: "not running")
NOT_HEALTHY = 3
STACK_COMMANDS = ("up", "down", "status", "env")


def _stack(state_dir: Optional[Path], s3_port: Optional[int], mlflow_port: Optional[int],
           prefect_port: Optional[int], without_stack: str = REFUSE, team: bool = False,
           postgres_port: Optional[int] = None):
    """The Stack for these options; unset options come from the environment, then defaults.
    The state folder is checked first (module docstring): `without_stack` says what a folder
    holding no stack means to the command (CREATE: `up`; REFUSE: an error; NOTHING_TO_DO:
    None is returned after saying so). `team`: the team stack, whose folder must hold one."""
    import os

    from flows.cli_options import usage_error
    from infra.settings import StackSettings, default_state_dir, state_dir_variable
    from infra.stack import Stack

    ENV_STATE_DIR = state_dir_variable(team)
    overrides = {k: v for k, v in {"state_dir": state_dir, "s3_port": s3_port, "mlflow_port": mlflow_port,
                                   "prefect_port": prefect_port, "postgres_port": postgres_port}.items()
                 if v is not None}
    settings = replace(StackSettings.from_env(team=team), **overrides)
    settings = replace(settings, default_ports=settings.default_ports - overrides.keys())
    ports = {"--s3-port": settings.s3_port, "--mlflow-port": settings.mlflow_port,
             "--prefect-port": settings.prefect_port}
    if team:
        from infra.preflight import privileged_port_problem

        ports["--postgres-port"] = settings.postgres_port
        problem = privileged_port_problem(settings.postgres_port)
        if problem:
            usage_error(f"--postgres-port {settings.postgres_port}: {problem}")
    if len(set(ports.values())) < len(ports):
        usage_error(f"two servers cannot share a port ({', '.join(f'{k} {v}' for k, v in ports.items())}): "
                    "give each its own")
    stack = Stack(settings, log=typer.echo)
    folder = stack.state_dir
    # who named the folder: the user (a mistake there is theirs, exit 2), or the default
    named = (f"--state-dir {state_dir}" if state_dir is not None else
             f"{ENV_STATE_DIR}={os.environ[ENV_STATE_DIR]}" if os.environ.get(ENV_STATE_DIR) else None)
    if named is not None:
        if not folder.parent.is_dir():
            up_command = "dmops up --team" if team else "dmops up"
            usage_error(f"{named}: the folder {folder.parent} does not exist; give the stack's "
                        f"state folder (default {default_state_dir(team)}), or a new folder inside an "
                        f"existing one for `{up_command}` to start a new stack in")
        if folder.exists() and not folder.is_dir():
            usage_error(f"{named}: {folder} is a file, not a stack's state folder")
    # a folder of the other kind of stack: the user typed the wrong command (or folder)
    if not team and stack.layout.holds_team_stack():
        usage_error(f"{folder} holds a team stack: add --team (`{_team_command()}`)")
    if team and stack.layout.holds_stack() and not stack.layout.holds_team_stack():
        usage_error(f"{folder} holds a local stack, not a team stack: drop --team, or give the team "
                    f"stack its own folder (default {default_state_dir(team=True)})")
    held = stack.layout.holds_team_stack() if team else stack.layout.holds_stack()
    if without_stack == CREATE or held:
        return stack
    up_command = "dmops up --team" if team else "dmops up"
    kind = "team stack" if team else "stack"
    hint = "" if team else _team_stack_hint()
    if named is not None:
        marker = "team-credentials.json" if team else "credentials.json"
        usage_error(f"{named}: no {kind} was ever started in {folder} (it has no {marker}); give the folder `{up_command}` "
                    f"used (default {default_state_dir(team)}), or start one there with "
                    f"`{up_command} --state-dir {folder}`{hint}")
    if without_stack == NOTHING_TO_DO:
        typer.echo(f"no {kind} in {folder}; nothing to stop")
        return None
    typer.secho(f"error: no {'team' if team else 'local'} stack has been started in {folder} (the state "
                f"folder of this dmops checkout): start it with `{up_command}`, or name another with "
                f"--state-dir or {ENV_STATE_DIR}{hint}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def _team_stack_hint() -> str:
    """For a command about the local stack that found none: "; ... add --team" when the team
    stack's folder ($DMOPS_TEAM_STACK_DIR, else .stack-team) holds one (the user meant it)."""
    from infra.layout import StateLayout
    from infra.settings import StackSettings

    folder = StackSettings.from_env(team=True).state_dir
    if not StateLayout(folder).holds_team_stack():
        return ""
    return f"; a team stack is in {folder}: add --team (`{_team_command()}`)"


def _team_command() -> str:
    """This command for the team stack (`env` also needs a role: its settings are a role's)."""
    command = _command()
    return "dmops env --team --role pipeline|viewer|reader" if command == "env" else f"dmops {command} --team"


def _command() -> str:
    """The `dmops` sub-command being run (for messages)."""
    import click

    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.info_name in STACK_COMMANDS:
        return ctx.info_name
    # no click context where a command is run through its function: the command line says
    return next((word for word in sys.argv[1:] if word in STACK_COMMANDS), "status")


def _runs_line(mlflow_url: str, params: Path = Path("params.yaml"), stack=None) -> str | None:
    """`mlflow runs <url>`: the pipeline experiment's runs list in the machine-learning view
    (MLflow's bare address opens its GenAI home in a fresh browser), or None when the
    experiment (pipeline.experiment of `params`, else of the dmops checkout's params.yaml, else
    `dmops`) does not exist yet or the
    server does not answer in 3 s.  Plain HTTP: `dmops up` does not import MLflow.  `stack`:
    a team stack, whose MLflow answers only an account: the lookup signs in as `viewer`
    (read-only; nothing secret is printed)."""
    import json
    import urllib.parse
    import urllib.request

    import yaml

    from infra.errors import StackError
    from tasks.adapters.ui_links import RUNS_VIEW, runs_url

    name = "dmops"
    if not params.is_file():   # run outside a repository: the dmops checkout's settings
        from infra.settings import project_root

        params = (project_root() or Path(".")) / "params.yaml"
    if params.is_file():
        try:
            name = (yaml.safe_load(params.read_text()) or {}).get("pipeline", {}).get("experiment", name)
        except (yaml.YAMLError, AttributeError):
            pass
    query = urllib.parse.urlencode({"experiment_name": name})
    request = urllib.request.Request(f"{mlflow_url}/api/2.0/mlflow/experiments/get-by-name?{query}")
    try:
        if stack is not None and stack.settings.team:
            from infra.health import basic_auth

            request.headers.update(basic_auth("viewer", stack.team_credentials().mlflow_passwords["viewer"]))
        with urllib.request.urlopen(request, timeout=3) as answer:
            experiment = json.load(answer)["experiment"]
    except (OSError, ValueError, KeyError, StackError):
        return None
    tags = {t["key"]: t["value"] for t in experiment.get("tags", [])}
    view = RUNS_VIEW if f"mlflow.sharedViewState.{RUNS_VIEW}" in tags else None
    return f"runs    {runs_url(experiment['experiment_id'], mlflow_url, view=view)}"


def up(state_dir: Optional[Path] = StateDirOpt, s3_port: Optional[int] = S3PortOpt,
       mlflow_port: Optional[int] = MlflowPortOpt, prefect_port: Optional[int] = PrefectPortOpt,
       timeout: float = typer.Option(180, "--timeout", min=1, help="Seconds to wait for the servers to be ready."),
       team: bool = TeamOpt, postgres_port: Optional[int] = PostgresPortOpt):
    """Start the local stack (--team: the team stack) on loopback, in the background.

    SeaweedFS (S3), the MLflow server and the Prefect server; return once each serves what it
    holds (a stored object reads back, API reads succeed).  --team: first the stack's own
    PostgreSQL, then the three with authentication and roles."""
    with _stack_errors():
        stack = _stack(state_dir, s3_port, mlflow_port, prefect_port, without_stack=CREATE, team=team,
                       postgres_port=postgres_port)
        stack.up(timeout=timeout)
        runs = _runs_line(stack.settings.mlflow_url, stack=stack)
        if runs:
            typer.echo(runs)
        if team:
            typer.echo('clients: eval "$(dmops env --team --role pipeline)"   stop: dmops down --team')
            return
        typer.echo('clients: eval "$(dmops env)"   stop: dmops down')


def down(state_dir: Optional[Path] = StateDirOpt, s3_port: Optional[int] = S3PortOpt,
         mlflow_port: Optional[int] = MlflowPortOpt, prefect_port: Optional[int] = PrefectPortOpt,
         team: bool = TeamOpt, postgres_port: Optional[int] = PostgresPortOpt):
    """Stop the local stack's servers (--team: the team stack's). Data, credentials and logs
    stay in the state folder."""
    with _stack_errors():
        stack = _stack(state_dir, s3_port, mlflow_port, prefect_port, without_stack=NOTHING_TO_DO, team=team,
                       postgres_port=postgres_port)
        if stack is not None:
            stack.down()


def status(state_dir: Optional[Path] = StateDirOpt, s3_port: Optional[int] = S3PortOpt,
           mlflow_port: Optional[int] = MlflowPortOpt, prefect_port: Optional[int] = PrefectPortOpt,
           team: bool = TeamOpt, postgres_port: Optional[int] = PostgresPortOpt):
    """Show each server of the local stack (--team: the team stack): running or not, healthy
    or not, pid, URL, memory (PSS), log file.
    Exit status 0 when every server is healthy, 3 when one is stopped or not answering (as
    `systemctl status` does), so that a script can tell a working stack from a broken one."""
    with _stack_errors():
        stack = _stack(state_dir, s3_port, mlflow_port, prefect_port, team=team, postgres_port=postgres_port)
        typer.echo(f"stack in {stack.state_dir}")
        servers = stack.status()   # with the ports the running servers really use
        for s in servers.values():
            state = "healthy" if s.healthy else "running, not answering" if s.running else "stopped"
            pid = f"pid {s.pid}" if s.pid else ""
            # PSS (shared pages divided among the processes sharing them), else RSS, said so
            m = s.memory
            mem = f"{m.bytes / 2**20:.0f} MiB{'' if m.pss is not None else ' RSS'}" if m else ""
            typer.echo(f"{s.name:<10} {state:<23} {s.url:<24} {pid:<10} {mem:<9} {s.log}")
            if s.problem:
                typer.echo(f"{'':<10} {s.problem}")
        runs = _runs_line(servers["mlflow"].url, stack=stack)
        if runs:
            typer.echo(runs)
    if not all(s.healthy for s in servers.values()):
        raise typer.Exit(NOT_HEALTHY)


def env(state_dir: Optional[Path] = StateDirOpt, s3_port: Optional[int] = S3PortOpt,
        mlflow_port: Optional[int] = MlflowPortOpt, prefect_port: Optional[int] = PrefectPortOpt,
        team: bool = TeamOpt, postgres_port: Optional[int] = PostgresPortOpt,
        role: Optional[str] = typer.Option(None, "--role", help="With --team: whose settings to print, "
                                           "pipeline, viewer or reader.")):
    """Print `export ...` lines for clients of the local stack, S3 secret included:
    eval "$(dmops env)".  --team --role ROLE: one team role's settings (its MLflow account,
    Prefect auth string, S3 keys)."""
    from flows.cli_options import usage_error
    from infra.team import ROLES

    if role is not None and not team:
        usage_error(f"--role {role}: roles are the team stack's accounts; add --team")
    if team and role not in ROLES:
        given = "none given" if role is None else f"got {role!r}"
        usage_error(f"--team needs --role {'|'.join(ROLES)} ({given}): pipeline runs flows and "
                    "registers models, viewer reads MLflow, reader reads releases from S3")
    with _stack_errors():
        stack = _stack(state_dir, s3_port, mlflow_port, prefect_port, team=team, postgres_port=postgres_port)
        for key, value in stack.client_env(role).items():
            typer.echo(f"export {key}={shlex.quote(value)}")


def register(app: typer.Typer) -> None:
    """Add `up`, `down`, `status` and `env` to the `dmops` app."""
    for command in (up, down, status, env):
        app.command(command.__name__)(command)


if __name__ == "__main__":   # python -m flows.stack_cli up: the four commands without the rest
    from flows.cli_options import APP_SETTINGS

    _app = typer.Typer(**APP_SETTINGS, help="The local stack.")
    register(_app)
    _app()

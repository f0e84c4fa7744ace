"""`dmops up | down | status | env`: the local stack from the command line.

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
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Iterator, Optional

import typer

StateDirOpt = typer.Option(None, "--state-dir", help="Folder of the stack's state (default: "
                           "$DMOPS_STACK_DIR, else .stack in the dmops checkout, from any working "
                           "folder).")
# a port out of range is the user's to fix (exit 2) before anything is read or started
S3PortOpt = typer.Option(None, "--s3-port", min=1, max=65535,
                         help="S3 port (default: $DMOPS_S3_PORT or 8333).")
MlflowPortOpt = typer.Option(None, "--mlflow-port", min=1, max=65535,
                             help="MLflow port (default: $DMOPS_MLFLOW_PORT or 5000).")
PrefectPortOpt = typer.Option(None, "--prefect-port", min=1, max=65535,
                              help="Prefect port (default: $DMOPS_PREFECT_PORT or 4200).")


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


def _stack(state_dir: Optional[Path], s3_port: Optional[int], mlflow_port: Optional[int],
           prefect_port: Optional[int], without_stack: str = REFUSE):
    """The Stack for these options; unset options come from the environment, then defaults.
    The state folder is checked first (module docstring): `without_stack` says what a folder
    holding no stack means to the command (CREATE: `up`; REFUSE: an error; NOTHING_TO_DO:
    None is returned after saying so)."""
    import os

    from flows.cli_options import usage_error
    from infra.settings import ENV_STATE_DIR, StackSettings, default_state_dir
    from infra.stack import Stack

    overrides = {k: v for k, v in {"state_dir": state_dir, "s3_port": s3_port, "mlflow_port": mlflow_port,
                                   "prefect_port": prefect_port}.items() if v is not None}
    settings = replace(StackSettings.from_env(), **overrides)
    ports = {"--s3-port": settings.s3_port, "--mlflow-port": settings.mlflow_port,
             "--prefect-port": settings.prefect_port}
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
            usage_error(f"{named}: the folder {folder.parent} does not exist; give the stack's "
                        f"state folder (default {default_state_dir()}), or a new folder inside an "
                        "existing one for `dmops up` to start a new stack in")
        if folder.exists() and not folder.is_dir():
            usage_error(f"{named}: {folder} is a file, not a stack's state folder")
    if without_stack == CREATE or stack.layout.holds_stack():
        return stack
    if named is not None:
        usage_error(f"{named}: no stack was ever started in {folder} (it has no credentials.json); "
                    f"give the folder `dmops up` used (default {default_state_dir()}), or start "
                    f"a stack there with `dmops up --state-dir {folder}`")
    if without_stack == NOTHING_TO_DO:
        typer.echo(f"no stack in {folder}; nothing to stop")
        return None
    typer.secho(f"error: no local stack has been started in {folder} (the state folder of this "
                "dmops checkout): start it with `dmops up`, or name another with --state-dir or "
                f"{ENV_STATE_DIR}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


def _runs_line(mlflow_url: str, params: Path = Path("params.yaml")) -> str | None:
    """`mlflow runs <url>`: the pipeline experiment's runs list in the machine-learning view
    (MLflow's bare address opens its GenAI home in a fresh browser), or None when the
    experiment (pipeline.experiment of `params`, else of the dmops checkout's params.yaml, else
    `dmops`) does not exist yet or the
    server does not answer in 3 s.  Plain HTTP: `dmops up` does not import MLflow."""
    import json
    import urllib.parse
    import urllib.request

    import yaml

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
    try:
        with urllib.request.urlopen(f"{mlflow_url}/api/2.0/mlflow/experiments/get-by-name?{query}",
                                    timeout=3) as answer:
            experiment = json.load(answer)["experiment"]
    except (OSError, ValueError, KeyError):
        return None
    tags = {t["key"]: t["value"] for t in experiment.get("tags", [])}
    view = RUNS_VIEW if f"mlflow.sharedViewState.{RUNS_VIEW}" in tags else None
    return f"runs    {runs_url(experiment['experiment_id'], mlflow_url, view=view)}"


def up(state_dir: Optional[Path] = StateDirOpt, s3_port: Optional[int] = S3PortOpt,
       mlflow_port: Optional[int] = MlflowPortOpt, prefect_port: Optional[int] = PrefectPortOpt,
       timeout: float = typer.Option(180, "--timeout", min=1, help="Seconds to wait for the servers to be ready.")):
    """Start SeaweedFS (S3), the MLflow server and the Prefect server on loopback, in the background;
    return once each serves what it holds (a stored object reads back, API reads succeed)."""
    with _stack_errors():
        stack = _stack(state_dir, s3_port, mlflow_port, prefect_port, without_stack=CREATE)
        stack.up(timeout=timeout)
        runs = _runs_line(stack.settings.mlflow_url)
        if runs:
            typer.echo(runs)
        typer.echo('clients: eval "$(dmops env)"   stop: dmops down')


def down(state_dir: Optional[Path] = StateDirOpt, s3_port: Optional[int] = S3PortOpt,
         mlflow_port: Optional[int] = MlflowPortOpt, prefect_port: Optional[int] = PrefectPortOpt):
    """Stop the stack's servers. Data, credentials and logs stay in the state folder."""
    with _stack_errors():
        stack = _stack(state_dir, s3_port, mlflow_port, prefect_port, without_stack=NOTHING_TO_DO)
        if stack is not None:
            stack.down()


def status(state_dir: Optional[Path] = StateDirOpt, s3_port: Optional[int] = S3PortOpt,
           mlflow_port: Optional[int] = MlflowPortOpt, prefect_port: Optional[int] = PrefectPortOpt):
    """Show each server: running or not, healthy or not, pid, URL, memory, log file."""
    with _stack_errors():
        stack = _stack(state_dir, s3_port, mlflow_port, prefect_port)
        typer.echo(f"stack in {stack.state_dir}")
        for s in stack.status().values():
            state = "healthy" if s.healthy else "running, not answering" if s.running else "stopped"
            pid = f"pid {s.pid}" if s.pid else ""
            rss = f"{s.rss_bytes / 2**20:.0f} MiB" if s.rss_bytes else ""
            typer.echo(f"{s.name:<10} {state:<23} {s.url:<24} {pid:<10} {rss:<9} {s.log}")
        runs = _runs_line(stack.settings.mlflow_url)
        if runs:
            typer.echo(runs)


def env(state_dir: Optional[Path] = StateDirOpt, s3_port: Optional[int] = S3PortOpt,
        mlflow_port: Optional[int] = MlflowPortOpt, prefect_port: Optional[int] = PrefectPortOpt):
    """Print `export ...` lines for clients of the stack, S3 secret included: eval "$(dmops env)"."""
    with _stack_errors():
        for key, value in _stack(state_dir, s3_port, mlflow_port, prefect_port).client_env().items():
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

"""`dmops run`, `dmops deploy`, `dmops worker`: the pipeline from the command line.

They talk to the servers named in the environment (MLFLOW_TRACKING_URI, PREFECT_API_URL,
AWS_*): a team stack when those are set, else the local stack that `dmops up` started.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from flows.cli_options import ConfigOpt, ProfileOpt, SetOpt
from tasks.adapters.servers import (PREFECT, ServerUnavailable, bound_client_env, is_transient,
                                    raised_by)

WORK_POOL = "dmops-process"
PREFECT_FILE = Path("infra/prefect.yaml")


def stack_env() -> dict[str, str]:
    """The client environment: the caller's own when it names a tracking server, else the
    running local stack's (with a clear error when it is not running)."""
    if os.environ.get("MLFLOW_TRACKING_URI") and os.environ.get("PREFECT_API_URL"):
        return dict(os.environ)
    from infra.stack import Stack, StackSettings

    stack = Stack(StackSettings.from_env())
    status = stack.status()
    down = [name for name, s in status.items() if not s.healthy]
    if down:
        raise typer.BadParameter(f"the local stack is not running ({', '.join(down)} down): "
                                 "start it with `dmops up` (or `make run`)")
    return {**os.environ, **stack.client_env()}


def _fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _prefect(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "prefect", *args], env=env,
                          capture_output=True, text=True)
    if check and proc.returncode != 0:
        _fail(f"`prefect {' '.join(args)}` failed:\n{(proc.stdout + proc.stderr).strip()[-2000:]}")
    return proc


def prefect_unavailable(e: BaseException, url: Optional[str] = None) -> Optional[ServerUnavailable]:
    """A ServerUnavailable naming the Prefect server (`url`, default PREFECT_API_URL) for `e`,
    an error of a Prefect client request (httpx) that already used Prefect's own retries, when
    it is transient; None for any other error."""
    if (isinstance(e, ServerUnavailable) or not is_transient(e)
            or not raised_by(e, ("httpx", "httpcore", "prefect"))):
        return None
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES

    return ServerUnavailable(PREFECT, url or os.environ.get("PREFECT_API_URL", "(PREFECT_API_URL not set)"),
                             PREFECT_CLIENT_MAX_RETRIES.value() + 1, None, e)


def register(app: typer.Typer) -> None:
    @app.command()
    def run(config: Path = ConfigOpt, profile: Optional[str] = ProfileOpt,
            set_: Optional[list[str]] = SetOpt,
            repo: Path = typer.Option(Path("."), help="The git + DVC repo holding params.yaml and dvc.yaml."),
            refresh: bool = typer.Option(False, "--refresh",
                                         help="Recompute every step instead of reusing cached results.")):
        """Run the training pipeline once: dataset -> gate -> teacher -> students -> evaluation ->
        registry -> promotion + S3 release. Prints the outcome and where to look at it."""
        try:
            env = stack_env()
        except typer.BadParameter as e:
            _fail(str(e))
        os.environ.update(env)
        bound_client_env()   # before Prefect is imported: it reads its client settings then
        from diffusion.config import ConfigError
        from flows.pipeline import training_pipeline
        from tasks.pipeline_settings import load_pipeline_config

        try:  # settings are checked before the flow starts: a typo is one line, exit code 2
            load_pipeline_config(repo.resolve() / config, profile, list(set_ or []))
        except ConfigError as e:
            _fail(" ".join(str(e).split()), 2)

        t0 = time.perf_counter()
        try:
            result = training_pipeline(config=str(config), profile=profile, overrides=list(set_ or []),
                                       repo=str(repo), refresh=refresh)
        except ConfigError as e:  # found only once the data is known (its sample shape)
            _fail(f"the pipeline stopped: {' '.join(str(e).split())}", 2)
        except Exception as e:  # the flow run is recorded as failed in Prefect and MLflow
            from tasks.adapters.servers import mlflow_unavailable

            _fail(f"the pipeline failed: {prefect_unavailable(e) or mlflow_unavailable(e) or e}")
        minutes = (time.perf_counter() - t0) / 60
        mlflow_ui = env["MLFLOW_TRACKING_URI"].rstrip("/")
        prefect_ui = env["PREFECT_API_URL"].removesuffix("/api")
        typer.echo("")
        typer.echo(f"pipeline finished in {minutes:.1f} min")
        typer.echo(f"registered:  {result['model']} version {result['version']} ({result['candidate']})")
        typer.echo(f"promotion:   {'PROMOTED to champion' if result['promoted'] else 'not promoted'}: "
                   f"{result['reason']}")
        typer.echo(f"release:     {result['release'] or '(none)'}")
        typer.echo(f"cached:      {', '.join(result['cached_steps']) or 'no step (all ran)'}")
        typer.echo(f"MLflow UI:   {mlflow_ui}/#/models/{result['model']}  "
                   f"(run {mlflow_ui}/#/experiments/{result['mlflow_experiment_id']}/runs/"
                   f"{result['mlflow_run_id']})")
        typer.echo(f"Prefect UI:  {prefect_ui}/runs")

    @app.command()
    def deploy(prefect_file: Path = typer.Option(PREFECT_FILE, help="The deployments file."),
               pool: str = typer.Option(WORK_POOL, help="Process work pool to create / use.")):
        """Create the nightly (cron) and on-demand deployments from infra/prefect.yaml on the
        Prefect server, and their process work pool. Serve them with `dmops worker`."""
        try:
            env = stack_env()
            bound_client_env(env)   # the flow runs it starts inherit the bounds
        except typer.BadParameter as e:
            _fail(str(e))
        if not prefect_file.exists():
            _fail(f"{prefect_file} not found; run from the repository root")
        if _prefect("work-pool", "inspect", pool, env=env, check=False).returncode != 0:
            _prefect("work-pool", "create", pool, "--type", "process", env=env)
        out = _prefect("--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file), env=env)
        typer.echo(out.stdout.strip()[-1500:])
        typer.echo(f"deployments created; start a worker with `dmops worker` (pool {pool})")

    @app.command()
    def worker(pool: str = typer.Option(WORK_POOL, help="Work pool to serve."),
               run_once: bool = typer.Option(False, "--run-once", help="Exit after one round of runs.")):
        """Serve the deployments: a Prefect process worker that runs scheduled and on-demand flow runs."""
        try:
            env = stack_env()
            bound_client_env(env)   # the flow runs it starts inherit the bounds
        except typer.BadParameter as e:
            _fail(str(e))
        cmd = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process"]
        if run_once:
            cmd.append("--run-once")
        raise typer.Exit(subprocess.call(cmd, env=env))

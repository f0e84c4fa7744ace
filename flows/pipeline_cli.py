"""`dmops run`, `dmops deploy`, `dmops worker`: the pipeline from the command line.

They talk to the servers named in the environment (MLFLOW_TRACKING_URI, PREFECT_API_URL,
AWS_*): a team stack when those are set, else the local stack that `dmops up` started
(flows/client_env.py).  Each checks its arguments and the config before Prefect or torch is
imported.

`dmops worker` becomes the Prefect worker (exec): killing its pid, with any signal, stops the
worker itself, so none is left polling the work pool (tests/test_worker.py).

A fault of the user's data or settings (DataError, ConfigError, and a dataset the data gate
failed: DataValidationError, whose report the gate step prints once) is one `error: ...` line
and exit code 2, said once: `dmops run` checks the dataset's entry before anything starts
(tasks/steps/dataset_entry.py, `check_dataset`), and one found inside the flow (a declared
schema the data does not fit, met by the DVC stage) is kept off the console's Prefect lines
(`QuietUserErrors`: Prefect's server still records the failure with its traceback).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import typer

from flows.cli_options import ConfigOpt, ProfileOpt, SetOpt, usage_error
from flows.client_env import MLFLOW, S3, server_env_or_exit
from flows.client_env import PREFECT as PREFECT_ENV
from tasks.adapters.servers import (PREFECT, ServerUnavailable, bound_client_env, is_transient,
                                    raised_by)

WORK_POOL = "dmops-process"
PREFECT_FILE = Path("infra/prefect.yaml")


# what a flow run needs: the pipeline talks to all three servers
PIPELINE_SERVERS = (MLFLOW, PREFECT_ENV, S3)


def _fail(message: str, code: int = 1) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _user_errors() -> tuple[type[BaseException], ...]:
    """The faults that are the user's to fix (the data, the settings): exit code 2, said once
    (a data gate's report keeps its lines: one per failed expectation)."""
    from diffusion.config import ConfigError
    from diffusion.data_errors import DataError
    from tasks.adapters.gx.report import DataValidationError

    return (ConfigError, DataError, DataValidationError)


class QuietUserErrors(logging.Filter):
    """A console handler's filter for one `dmops run`: Prefect's records of a flow or task run
    that failed on a user error (`kinds`) are dropped -- its "failed with exception" line with
    the traceback, the retry notice, "Encountered exception", and the "Finished in state
    Failed(... <Kind>: ...)" lines that repeat the message -- since the command prints that
    error itself, once.  Every other record passes, and Prefect's API handler, which is not
    filtered, still sends all of them to the flow run's logs on the server."""

    RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs")

    def __init__(self, kinds: tuple[type[BaseException], ...]):
        super().__init__()
        # a "Finished in state Failed(...)" line can come before any record carrying the
        # error itself (no retry), so every user-error class's name is known from the start
        self.kinds, self.seen = kinds, set(_class_names(kinds))

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.RUN_LOGGERS):
            return True
        carried = [record.exc_info[1] if record.exc_info else None,
                   *(record.args if isinstance(record.args, tuple) else ())]
        errors = [e for e in carried if isinstance(e, self.kinds)]
        if errors:
            self.seen.update(type(e).__name__ for e in errors)
            return False
        message = record.getMessage()
        return not any(f"{kind}: " in message for kind in self.seen)


def _class_names(kinds) -> list[str]:
    """The names of `kinds` and of all their subclasses (StageRefused is a DataError)."""
    names = []
    for kind in kinds:
        names += [kind.__name__, *_class_names(kind.__subclasses__())]
    return names


def _quiet_console(kinds: tuple[type[BaseException], ...]) -> list[tuple[logging.Handler, QuietUserErrors]]:
    """Put a QuietUserErrors on each of Prefect's console handlers (set up when Prefect is
    imported); returns them, for _loud_console."""
    from prefect.logging.handlers import PrefectConsoleHandler

    handlers = {h for name in ("", "prefect", *QuietUserErrors.RUN_LOGGERS)
                for h in logging.getLogger(name).handlers if isinstance(h, PrefectConsoleHandler)}
    added = [(handler, QuietUserErrors(kinds)) for handler in handlers]
    for handler, quiet in added:
        handler.addFilter(quiet)
    return added


def _loud_console(added: list[tuple[logging.Handler, QuietUserErrors]]) -> None:
    for handler, quiet in added:
        handler.removeFilter(quiet)


def _tail_lines(text: str, lines: int = 30) -> str:
    """The last `lines` whole lines of `text`: a transcript is never cut inside a line."""
    return "\n".join(text.strip().splitlines()[-lines:])


def _prefect(*args: str, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    # COLUMNS: Prefect's console wraps at the terminal's width, else 80 columns, which breaks
    # names and ids across lines of a transcript shown on failure
    proc = subprocess.run([sys.executable, "-m", "prefect", *args], env={**env, "COLUMNS": "200"},
                          capture_output=True, text=True)
    if check and proc.returncode != 0:
        _fail(f"`prefect {' '.join(args)}` failed:\n{_tail_lines(proc.stdout + proc.stderr)}")
    return proc


def _check_process_pool(pool: str, env: dict[str, str]) -> None:
    """Exit 1 unless the Prefect server holds work pool `pool` of type process.  Prefect's
    worker would create a missing pool itself: a misspelt --pool then polls an empty pool for
    ever, with nothing said; a pool of another type is served by that type's worker."""
    import json

    proc = _prefect("work-pool", "inspect", pool, "--output", "json", env=env, check=False)
    try:
        kind = json.loads(proc.stdout).get("type") if proc.returncode == 0 else None
    except ValueError:
        kind = None
    if proc.returncode != 0 or kind is None:
        if "not found" not in (proc.stdout + proc.stderr).lower():
            _fail(f"`prefect work-pool inspect {pool}` failed:\n{_tail_lines(proc.stdout + proc.stderr)}")
        _fail(f"the Prefect server at {env[PREFECT_ENV]} has no work pool {pool!r}: create it "
              f"and its deployments with `dmops deploy`, or name an existing pool with --pool")
    if kind != "process":
        _fail(f"work pool {pool!r} on {env[PREFECT_ENV]} is of type {kind}, and `dmops worker` "
              "serves process pools; a pool of another type is served by its own worker "
              "(a kubernetes pool: infra/k8s/worker.yaml)")


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


def _ui_links(result: dict, env: dict[str, str]) -> list[tuple[str, str]]:
    """(label, URL) of what a finished run is looked at in: the MLflow runs list (machine
    learning mode, headline columns), the parent run, the registered model (versions and
    aliases) and the Prefect flow run. A link the environment cannot give is left out."""
    from tasks.adapters import ui_links

    uri, api = env.get("MLFLOW_TRACKING_URI"), env.get("PREFECT_API_URL", "")
    flow_run_id = result.get("prefect_flow_run_id") or _flow_run_tag(result["mlflow_run_id"])
    prefect = ui_links.prefect_ui(api)
    links = [("MLflow runs", ui_links.runs_url(result["mlflow_experiment_id"], uri)),
             ("MLflow run", ui_links.run_url(result["mlflow_experiment_id"], result["mlflow_run_id"], uri)),
             ("MLflow model", ui_links.model_url(result["model"], tracking_uri=uri)),
             ("Prefect run", ui_links.flow_run_url(flow_run_id, api) if flow_run_id
              else prefect and f"{prefect}/runs")]
    return [(label, url) for label, url in links if url]


def _flow_run_tag(run_id: str) -> str | None:
    """The parent run's `prefect_flow_run_id` tag; None when MLflow cannot say (the links are
    printed after the run's outcome, so they never turn a finished run into a failure)."""
    import mlflow

    from tasks.adapters.servers import mlflow_call

    try:
        return mlflow_call(mlflow.MlflowClient().get_run, run_id).data.tags.get("prefect_flow_run_id")
    except Exception:
        return None


def register(app: typer.Typer) -> None:
    @app.command()
    def run(config: Path = ConfigOpt, profile: Optional[str] = ProfileOpt,
            set_: Optional[list[str]] = SetOpt,
            repo: Path = typer.Option(Path("."), help="The git + DVC repo holding params.yaml and dvc.yaml."),
            refresh: bool = typer.Option(False, "--refresh",
                                         help="Recompute every step instead of reusing cached results: the teacher and "
                                              "students train again from step 0 (no finished checkpoint or "
                                              "student is reused) and the evaluation is scored again (its feature "
                                              "extractor, keyed by the dataset's content, is still reused)."),
            accept_data_change: bool = typer.Option(
                False, "--accept-data-change",
                help="The data changed on purpose (a new category, a column dropped, added or retyped, a "
                     "shifted distribution): validate this version on its own checks only, without "
                     "comparing it with the last validated version, and make it the gate's reference "
                     "for the next runs. Every other check still applies. A table of other columns or "
                     "categories is another model: it also needs a pipeline.model_name of its own.")):
        """Run the training pipeline once: dataset -> gate -> teacher -> students -> evaluation ->
        registry -> promotion + S3 release. Prints the outcome and where to look at it."""
        if not repo.is_dir():
            usage_error(f"--repo {repo} is not a folder: give the git + DVC repository that holds "
                        "params.yaml and dvc.yaml (default: the current folder)")
        from tasks.pipeline_settings import load_pipeline_config
        from tasks.steps.dataset_entry import check_dataset

        user_errors = _user_errors()
        try:  # settings and the dataset's entry are checked before servers or the flow: a
            # typo or a missing file is one line at once, exit code 2
            cfg = load_pipeline_config(repo.resolve() / config, profile, list(set_ or []))
            check_dataset(cfg.data, cfg.dataset or cfg.data.name, repo.resolve())
        except user_errors as e:
            _fail(" ".join(str(e).split()), 2)
        env = server_env_or_exit(*PIPELINE_SERVERS)
        os.environ.update(env)
        bound_client_env()   # before Prefect is imported: it reads its client settings then
        from flows.pipeline import training_pipeline

        t0 = time.perf_counter()
        quiet = _quiet_console(user_errors)
        try:
            result = training_pipeline(config=str(config), profile=profile, overrides=list(set_ or []),
                                       repo=str(repo), refresh=refresh,
                                       accept_data_change=accept_data_change)
        except user_errors as e:  # found only inside: a stage's data fault, the gate, the shape
            from tasks.adapters.gx.report import DataValidationError

            if isinstance(e, DataValidationError):  # the gate step printed its report above
                head = str(e).splitlines()[0].rstrip(":")
                docs = e.report.docs_dir
                said = (f"{head} (the gate's report is above"
                        + (f"; Data Docs: {docs}/index.html)" if docs else ")"))
            else:
                said = " ".join(str(e).split())
            _fail(f"the pipeline stopped: {said}", 2)
        except Exception as e:  # the flow run is recorded as failed in Prefect and MLflow
            from tasks.adapters.servers import mlflow_unavailable, refused

            _fail(f"the pipeline failed: "
                  f"{prefect_unavailable(e) or mlflow_unavailable(e) or refused(e) or e}")
        finally:
            _loud_console(quiet)
        minutes = (time.perf_counter() - t0) / 60
        typer.echo("")
        typer.echo(f"pipeline finished in {minutes:.1f} min")
        if result.get("same_as_champion"):   # a rerun with nothing changed
            typer.echo(f"registered:  nothing: {result['model']} version {result['version']}, the "
                       f"champion, was made from the same inputs ({result['candidate']})")
        else:
            typer.echo(f"registered:  {result['model']} version {result['version']} ({result['candidate']})")
        if result.get("rows"):   # a table model: its served rows' scores, not only the FID above
            typer.echo(f"rows:        {result['rows']}")
        if result.get("same_as_champion"):
            typer.echo("promotion:   none: nothing was registered; the champion stays")
        else:
            typer.echo(f"promotion:   {'PROMOTED to champion' if result['promoted'] else 'not promoted'}: "
                       f"{result['reason']}")
        typer.echo(f"release:     {result['release'] or '(none)'}")
        typer.echo(f"cached:      {', '.join(result['cached_steps']) or 'no step (all ran)'}")
        for label, url in _ui_links(result, env):
            typer.echo(f"{label + ':':<12} {url}")

    @app.command()
    def deploy(prefect_file: Optional[Path] = typer.Option(
                   None, help=f"The deployments file (default: {PREFECT_FILE}; with --pool-type "
                              "kubernetes, infra/k8s/prefect.yaml)."),
               pool: Optional[str] = typer.Option(
                   None, help="Work pool to create / use: the one the deployments file "
                              f"names ({WORK_POOL}; with --pool-type kubernetes, dmops-kubernetes); "
                              "another name is refused."),
               pool_type: str = typer.Option(
                   "process", "--pool-type",
                   help="process (served by `dmops worker`) or kubernetes (a Job per flow run from "
                        "infra/k8s/work-pool.json with the image of $DMOPS_IMAGE, served by the "
                        "worker of infra/k8s/worker.yaml).")):
        """Create the nightly (cron) and on-demand deployments from infra/prefect.yaml on the
        Prefect server, and their process work pool. Serve them with `dmops worker`.
        `--pool-type kubernetes`: those of infra/k8s/prefect.yaml on a Kubernetes pool."""
        from flows.deployments import (POOL_TYPES, DeploymentsFileError, planned_deployments,
                                       pool_create_args)

        try:
            create_args = pool_create_args(pool_type, dict(os.environ))
            prefect_file = prefect_file or POOL_TYPES[pool_type].deployments_file
            planned = planned_deployments(prefect_file)
        except DeploymentsFileError as e:
            usage_error(str(e))
        pools = sorted({d.pool for d in planned})
        if pool is not None and pools != [pool]:
            usage_error(f"--pool {pool!r}: {prefect_file}'s deployments use work pool "
                        f"{', '.join(map(repr, pools))}; leave --pool out, or change work_pool.name "
                        "in that file")
        env = server_env_or_exit(PREFECT_ENV)
        bound_client_env(env)   # Prefect's bounded client retries for the `prefect` calls below
        from flows.deployments import describe_deployments, held_pools, moved_lines

        os.environ.update(env)
        before = held_pools(planned)   # which pool each name is on now, to say what moves
        for name in pools:
            if _prefect("work-pool", "inspect", name, env=env, check=False).returncode != 0:
                _prefect("work-pool", "create", name, *create_args, env=env)
            elif "--base-job-template" in create_args:   # the template file may have changed
                _prefect("work-pool", "update", name, *create_args[2:], env=env)
        _prefect("--no-prompt", "deploy", "--all", "--prefect-file", str(prefect_file), env=env)
        # Prefect's own transcript is boxes wrapped at 80 columns and advice to start a bare
        # `prefect worker` (without the bounded client settings): say what the server now holds
        typer.echo(f"deployed to the Prefect server at {env[PREFECT_ENV]}:")
        for line in describe_deployments(planned, env[PREFECT_ENV]):
            typer.echo(f"  {line}")
        for line in moved_lines(planned, before):
            typer.echo(line)
        serve = ("`dmops worker`" if pool_type == "process"
                 else "the worker of infra/k8s/worker.yaml (`kubectl apply -k infra/k8s`)")
        typer.echo(f"deployments created; serve them with {serve} (pool {', '.join(pools)})")

    @app.command()
    def worker(pool: str = typer.Option(WORK_POOL, help="Work pool to serve."),
               run_once: bool = typer.Option(False, "--run-once", help="Exit after one round of runs.")):
        """Serve the deployments: a Prefect process worker that runs scheduled and on-demand flow
        runs. This process becomes the worker, so its pid is the worker's: Ctrl-C or `kill PID`
        stops it polling (Prefect's own handling; a second one kills it at once), and no worker
        is left behind, also after `kill -9`."""
        if not pool.strip():
            usage_error(f"--pool {pool!r} is not a work pool name; leave it out for {WORK_POOL}")
        env = server_env_or_exit(*PIPELINE_SERVERS)
        bound_client_env(env)   # the flow runs it starts inherit the bounds
        _check_process_pool(pool, env)
        cmd = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process"]
        if run_once:
            cmd.append("--run-once")
        typer.echo(f"Prefect process worker for pool {pool} at {env[PREFECT_ENV]}, pid {os.getpid()}; "
                   f"stop it with Ctrl-C or `kill {os.getpid()}`")
        sys.stdout.flush()
        sys.stderr.flush()
        # exec, not a child process: a child outlives a parent killed with SIGKILL (no handler
        # runs), re-parented and still polling, and would run the 02:00 deployment; with exec the
        # pid the user kills is the worker, and Prefect's own handlers stop it cleanly on
        # SIGTERM / SIGINT.  (PR_SET_PDEATHSIG would also cover SIGKILL, but Linux only, racy at
        # start, and signalled on the death of the thread that forked, not of the process.)
        # A job started with `&` by a non-interactive shell inherits SIGINT ignored, and exec
        # keeps an ignored disposition: Prefect turns SIGTERM into a SIGINT to itself, which
        # would then be dropped and leave the worker polling.  Default dispositions for both.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        os.execve(sys.executable, cmd, env)

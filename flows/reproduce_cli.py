"""`dmops reproduce MODEL@ALIAS | MODEL/VERSION`: rebuild a registered version from its lineage
(tasks/steps/reproduce.py) and say whether its weights and metrics come out the same.

Exit codes: 0 reproduced (identical weights, equal metrics), 1 differences (listed), a server or
run failure, or a version the registry does not hold (as every command: flows/cli.py), 2 what
was typed (a malformed reference, a --repo that is no folder) or a lineage or repository that
cannot support a reproduction."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

from flows.cli_options import model_ref_problem, usage_error
from flows.client_env import MLFLOW, S3, server_env_or_exit


def register(app: typer.Typer) -> None:
    @app.command()
    def reproduce(ref: str = typer.Argument(..., metavar="MODEL@ALIAS|MODEL/VERSION",
                                            help="The registered version, e.g.\n\n\b\ndigits-diffusion@champion\n"
                                                 "digits-diffusion/3"),
                  repo: Path = typer.Option(Path("."), help="The git repository the pipeline ran in."),
                  keep: bool = typer.Option(False, "--keep",
                                            help="Keep the worktree and the run's files (printed)."),
                  as_json: bool = typer.Option(False, "--json",
                                               help="Print the result as JSON (progress goes to stderr).")):
        """Check the version's commit out in a temporary git worktree, pull its dataset version from
        the DVC remote by md5, train, distil and evaluate again with the recorded settings and the
        commit's code, and print the registered and reproduced metrics and weights' sha256 side by
        side. Exit 0 when they agree, 1 with the differences listed."""
        # what was typed is checked first: before any server is asked, before MLflow or torch
        if (problem := model_ref_problem(ref)) is not None:
            usage_error(problem)
        if not repo.is_dir():
            usage_error(f"--repo {repo} is not a folder: give the git repository the pipeline ran "
                        "in (default: the current folder)")
        os.environ.update(server_env_or_exit(MLFLOW, S3))

        def fail(message: str, code: int) -> None:
            typer.secho(f"error: {' '.join(message.split())}", fg=typer.colors.RED, err=True)
            raise typer.Exit(code)

        # MLflow's default (7 retries, doubling waits) keeps a user waiting ~4 minutes for a
        # server that is down; the project's bounded settings (user settings win)
        from tasks.adapters.servers import MLFLOW_RETRY_ENV, ServerUnavailable

        for key, value in {**MLFLOW_RETRY_ENV, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}.items():
            os.environ.setdefault(key, value)
        # the version first, before the reproduction's imports: a name, alias or version the
        # registry does not hold, or a server away, is exit 1 as in `dmops sample --model`
        from mlflow.exceptions import MlflowException

        from tasks.adapters.registry import RegistryError, resolve_version

        try:
            resolve_version(ref)
        except (RegistryError, ServerUnavailable) as e:
            fail(str(e), 1)
        except MlflowException as e:
            fail(f"the MLflow registry could not serve {ref}: {e.message}", 1)
        from tasks.steps.reproduce import ReproduceError, reproduce as reproduce_version
        from tasks.steps.reproduce_compare import render
        out = sys.stderr if as_json else sys.stdout

        def log(text: str) -> None:
            print(text, file=out, flush=True)

        try:
            verdict, kept = reproduce_version(ref, repo, keep=keep, log=log, stdout=out)
        except ReproduceError as e:
            fail(str(e), e.exit_code)
        if as_json:
            typer.echo(json.dumps({**verdict.as_json(), "kept": str(kept) if kept else None},
                                  indent=2, default=str))
        else:
            for line in render(verdict):
                typer.echo(line)
            if kept:
                typer.echo(f"files kept in {kept}")
        raise typer.Exit(0 if verdict.reproduced else 1)

"""The options that several `dmops` commands share, declared once: each name means one thing
in every command that takes it.

    --config/-c PATH       the params.yaml to read
    --profile/-p NAME      a profile of that file
    --set/-s KEY=VALUE     one override (repeatable)
    --model-dir/-d PATH    a model on this machine: a model folder, a training run folder or a
                           checkpoint folder
    --model NAME@ALIAS|NAME/VERSION   a registered model version in the MLflow registry
    --release S3_URI       a release in the S3 store
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from typer.core import TyperGroup

try:  # the Click that Typer runs on: vendored as typer._click since Typer 0.29, else Click itself
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older Typer
    from click import exceptions as click_exceptions

ConfigOpt = typer.Option(Path("params.yaml"), "--config", "-c", help="Config file (params.yaml).")
ProfileOpt = typer.Option(None, "--profile", "-p",
                          help="Named profile from the config (params.yaml's `profiles`): quick "
                               "(digits on 2 CPU cores), churn and diamonds (the built-in tables on "
                               "2 CPU cores), full (GPU), tiny (tests: seconds). Default: the "
                               "file's `profile` key.")
SetOpt = typer.Option(None, "--set", "-s", metavar="KEY=VALUE",
                      help="Override one setting (repeatable), e.g.\n\n\b\n--set train.steps=200")
MODEL_DIR_HELP = "A model on this machine: a model folder, a training run folder or a checkpoint folder."
ModelDirOpt = typer.Option(None, "--model-dir", "-d", help=MODEL_DIR_HELP)
RequiredModelDirOpt = typer.Option(..., "--model-dir", "-d", help=MODEL_DIR_HELP)
RegisteredModelOpt = typer.Option(None, "--model", metavar="NAME@ALIAS|NAME/VERSION",
                                  help="A registered model version from the MLflow registry at "
                                       "MLFLOW_TRACKING_URI, e.g.\n\n\b\ndigits-diffusion@champion\n"
                                       "digits-diffusion/3")
ReleaseOpt = typer.Option(None, "--release", metavar="S3_URI",
                          help="A release, every file checked against its manifest (endpoint and "
                               "credentials: AWS_* variables), e.g.\n\n\b\n"
                               "s3://dmops-releases/digits-diffusion/3/")


# --- the app's error and help conventions ------------------------------------------------------

class OneLineErrors(TyperGroup):
    """A `dmops` app whose usage errors read like its own: Click's errors (a number out of
    range, a missing argument, an unknown option, a bad choice) print one line,
    `error: <Click's message>; see `dmops CMD --help``, on stderr and exit with Click's code (2
    for usage errors), instead of a usage block and a Rich box.  Everything else is Click's and
    Typer's own handling, run with `standalone_mode=False` so the exception reaches this place;
    `dmops` with no command still prints the help (`no_args_is_help`)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not sys.stdout.isatty():   # help into a pipe, a file or a log: lines are not wrapped
            extra.setdefault("terminal_width", NO_WRAP)
            extra.setdefault("max_content_width", NO_WRAP)
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click_exceptions.NoArgsIsHelpError as e:   # `dmops` alone: the help
            e.show()
            sys.exit(e.exit_code)
        except click_exceptions.ClickException as e:
            typer.secho(f"error: {click_error_line(e)}", fg=typer.colors.RED, err=True)
            sys.exit(e.exit_code)
        except (typer.Abort, getattr(click_exceptions, "Abort", typer.Abort)):   # end of input at a prompt
            typer.secho("error: aborted", fg=typer.colors.RED, err=True)
            sys.exit(1)
        # without standalone mode a command's typer.Exit(code) comes back as its code
        sys.exit(code if isinstance(code, int) else 0)


def click_error_line(e) -> str:
    """Click's message for `e` on one line, with where to read more for a usage error."""
    message = " ".join(e.format_message().split()).rstrip(".")
    ctx = getattr(e, "ctx", None)
    if isinstance(e, click_exceptions.UsageError) and ctx is not None:
        message += f"; see `{ctx.command_path} --help`"
    return message


# Help is plain text (Click's formatter, not Rich panels, which cut a long token with "…").
# Click wraps it at the terminal's width and breaks words at hyphens; when stdout is no terminal
# it would wrap at 80 columns, so there (a pipe, a file, a log) it does not wrap at all.  In a
# terminal every example a user may copy -- a URI, a model reference, a command line -- sits in
# a `\\b` paragraph, which Click never rewraps (tests/test_cli_help.py checks both).
NO_WRAP = 10_000
APP_SETTINGS = dict(cls=OneLineErrors, rich_markup_mode=None, add_completion=False,
                    no_args_is_help=True)


# --- argument checks that run before any heavy import ---------------------------------------
# A command checks what the user typed first, then imports torch / MLflow / Prefect: a typo is
# answered in a fraction of a second, not after seconds of imports (benchmarks/cli_latency.py).

def usage_error(message: str) -> None:
    """Print `error: <message>` (one line) on stderr and exit with code 2: the user's input."""
    typer.secho(f"error: {' '.join(message.split())}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def model_ref_problem(ref: str) -> str | None:
    """Why `ref` is not NAME@ALIAS or NAME/VERSION (optionally after "models:/"), or None when it
    is one (tasks/adapters/model_ref.py: the registry's own grammar, without MLflow)."""
    from tasks.adapters.model_ref import RegistryError, parse_model_ref

    try:
        parse_model_ref(ref)
    except RegistryError as e:
        return str(e)
    return None


def sampler_names() -> tuple[str, ...]:
    """The samplers a model folder may name (the `sample.sampler` setting's choices)."""
    from typing import get_args

    from diffusion.sampler_settings import SampleConfig

    return get_args(SampleConfig.model_fields["sampler"].annotation)


def check_samplers(names: list[str], option: str) -> None:
    """Exit 2 naming the allowed samplers when one of `names` is none of them."""
    allowed = sampler_names()
    unknown = [name for name in names if name not in allowed]
    if unknown:
        usage_error(f"{option}: unknown sampler(s) {', '.join(map(repr, unknown))}; use one of "
                    f"{', '.join(allowed)}")


def check_device(device: str) -> None:
    """Exit 2 unless `device` is a torch device this command can use: cpu, cuda, cuda:N, mps."""
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda", "mps") or (index and (kind != "cuda" or not index.isdigit())):
        usage_error(f"--device {device!r} is not a device; use cpu, cuda, cuda:N or mps")


def check_model_source(path, option: str) -> None:
    """Exit 2 unless `path` is something a model loads from, by the rule of
    diffusion.model.resolve_model_path (a test holds the two equal), checked without torch:
    a model folder (model.json), a training run (model/model.json or checkpoints/latest) or a
    checkpoint (ema.safetensors)."""
    check_exists(path, option, "a model, training run or checkpoint folder",
                 "give a folder that `dmops train` or `dmops distill` wrote")
    path = Path(path)
    if not any((path / marker).exists() for marker in MODEL_MARKERS):
        usage_error(f"{option} {path} holds no model: expected model.json (a model folder), model/ "
                    "or checkpoints/latest (a training run), or ema.safetensors (a checkpoint); "
                    "give a folder that `dmops train` or `dmops distill` wrote")


# what makes a folder a model source (diffusion.model.resolve_model_path)
MODEL_MARKERS = ("model.json", "ema.safetensors", "model/model.json", "checkpoints/latest")


def check_exists(path, option: str, what: str, fix: str) -> None:
    """Exit 2 when `path` does not exist: `<option> <path> does not exist: <fix>`."""
    from pathlib import Path

    if not Path(path).exists():
        usage_error(f"{option} {path} does not exist ({what}); {fix}")


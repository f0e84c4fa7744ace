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

from pathlib import Path

import typer

ConfigOpt = typer.Option(Path("params.yaml"), "--config", "-c", help="Config file (params.yaml).")
ProfileOpt = typer.Option(None, "--profile", "-p",
                          help="Named profile from the config, e.g. quick (2 CPU cores) or full "
                               "(GPU). Default: the file's `profile` key.")
SetOpt = typer.Option(None, "--set", "-s", metavar="KEY=VALUE",
                      help="Override one setting, e.g. --set train.steps=200 (repeatable).")
MODEL_DIR_HELP = "A model on this machine: a model folder, a training run folder or a checkpoint folder."
ModelDirOpt = typer.Option(None, "--model-dir", "-d", help=MODEL_DIR_HELP)
RequiredModelDirOpt = typer.Option(..., "--model-dir", "-d", help=MODEL_DIR_HELP)
RegisteredModelOpt = typer.Option(None, "--model", metavar="NAME@ALIAS|NAME/VERSION",
                                  help="A registered model version, e.g. digits-diffusion@champion "
                                       "or digits-diffusion/3, from the MLflow registry at "
                                       "MLFLOW_TRACKING_URI.")
ReleaseOpt = typer.Option(None, "--release", metavar="S3_URI",
                          help="A release, e.g. s3://dmops-releases/digits-diffusion/3/, every file "
                               "checked against its manifest (endpoint and credentials: AWS_* "
                               "variables).")


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


def check_exists(path, option: str, what: str, fix: str) -> None:
    """Exit 2 when `path` does not exist: `<option> <path> does not exist: <fix>`."""
    from pathlib import Path

    if not Path(path).exists():
        usage_error(f"{option} {path} does not exist ({what}); {fix}")


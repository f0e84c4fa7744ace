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

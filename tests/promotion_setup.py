"""What the promotion tests share: a tiny digits model scored on its versioned dataset folder
(`promotion_setup`, module-scoped), and one-line ways to register and promote it under a fresh
model name."""

from __future__ import annotations

import uuid
from pathlib import Path

import mlflow
import pytest

from diffusion.config import load_config
from tasks.steps.evaluate import score_model
from tasks.steps.prepare_dataset import prepare_dataset
from tasks.steps.promote import Challenger, promote
from tasks.adapters.registry import register_model
from tasks.steps.promote_settings import PromoteSettings
from tasks.steps.train_teacher import train_teacher

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
SETTINGS = PromoteSettings(metric="fid", tolerance=0.02)


def model_name() -> str:
    return f"digits-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def promotion_setup(stack, tmp_path_factory, one_torch_thread):
    """A tiny digits model, the versioned dataset folder it is evaluated on, its score there."""
    root = tmp_path_factory.mktemp("promotion")
    cfg = load_config(PARAMS, "tiny", [f"out_dir={root / 'run'}",
                                       f"evaluate.feature_cache={root / 'features'}"])
    model_dir = train_teacher(cfg, resume=False).model_dir
    data_dir = prepare_dataset(cfg.data, root / "processed")
    metrics = score_model(model_dir, cfg, root / "score", data_dir=data_dir)
    mlflow.set_experiment(f"test-promotion-{uuid.uuid4().hex[:6]}")
    return {"cfg": cfg, "model_dir": model_dir, "data_dir": data_dir, "metrics": metrics,
            "root": root}


def register(model_dir: Path, name: str) -> str:
    with mlflow.start_run():
        return register_model(model_dir, name, {"git_commit": "0123abc"})


def promote_version(setup, name: str, version: str, metrics: dict, work: Path, bucket: str,
                    log=print, model_dir: Path | None = None, **kwargs):
    return promote(Challenger(version, model_dir or setup["model_dir"], metrics), name, SETTINGS,
                   bucket, setup["data_dir"], setup["cfg"], work, {"git_commit": "0123abc"},
                   f"flow-run-{version}", log=log, **kwargs)

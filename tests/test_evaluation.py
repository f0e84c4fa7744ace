"""The quality-versus-NFE report: settings, table, files, filmstrip, and the CLI."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from diffusion.evaluation import (Setting, best_rows, denoising_filmstrip, quality_vs_nfe,
                                  settings_for)
from diffusion.gmm import GaussianMixture
from diffusion.samplers import generate

ROOT = Path(__file__).resolve().parents[1]
MIX = GaussianMixture.ring()


class Identity(torch.nn.Module):
    """2-D points are scored in their own coordinates."""

    num_features = 2
    kind = "identity"

    def forward(self, x):
        return x.to(torch.float64)


def test_settings_cover_each_budget_once():
    settings = settings_for(["heun", "ddim"], [1, 2, 3, 4, 8])
    assert Setting("heun", 1) in settings and Setting("ddim", 3) in settings
    # Heun spends 2N - 1: budgets 1 and 2 both give one step, 3 and 4 two steps, 8 four steps
    assert [s.nfe for s in settings if s.sampler == "heun"] == [1, 3, 7]
    assert [s.nfe for s in settings if s.sampler == "ddim"] == [1, 2, 3, 4, 8]


def _gmm_table(samplers, nfes, n=2000):
    g = torch.Generator().manual_seed(0)
    train, _ = MIX.sample(4000, g)
    test, _ = MIX.sample(2000, g)
    return quality_vs_nfe(MIX.denoiser, (2,), Identity(), train_x=train.float(), test_x=test.float(),
                          samplers=samplers, nfes=nfes, n=n, seed=1)


def test_exact_denoiser_reaches_the_real_data_floor_and_one_step_does_not():
    table = _gmm_table(["heun", "ddim"], [1, 32])
    assert set(table.columns) >= {"sampler", "steps", "nfe", "fid", "fid_floor", "fid_ratio", "kid_mean",
                                  "kid_std", "precision", "recall", "seconds", "samples_per_s"}
    fine = table[(table.sampler == "heun") & (table.nfe == 31)].iloc[0]
    coarse = table[(table.sampler == "ddim") & (table.nfe == 1)].iloc[0]
    # with the exact denoiser and a fine grid, samples are real draws: FID sits at the floor,
    # up to the noise of two finite-sample FIDs (a factor 2 is generous at n = 2000)
    assert fine["fid"] < 2 * fine["fid_floor"]
    # one DDIM step returns E[x0 | x_T] ~ the mixture mean for every sample: far from the data
    assert coarse["fid"] > 20 * coarse["fid_floor"]
    assert best_rows(table).iloc[0]["fid"] == table["fid"].min()


def test_settings_that_cannot_work_are_dropped_with_their_reason(caplog):
    """Heun's corrector multiplies the denoiser's error by (sigma_from - sigma_to) / (2 sigma_to):
    2e4 for 2 Karras steps from 80 (3 NFE), 117 for 4 steps (7 NFE), 8.3 for 8 (15 NFE)."""
    dropped: list = []
    with caplog.at_level("INFO", logger="diffusion.evaluation"):
        table = quality_vs_nfe(MIX.denoiser, (2,), Identity(), train_x=MIX.sample(500)[0].float(),
                               test_x=MIX.sample(500)[0].float(), samplers=["heun"],
                               nfes=[1, 4, 8, 16], n=200, seed=1, dropped=dropped, replicates=0)
    assert list(table["nfe"]) == [1, 15]
    assert [(d["nfe"], d["steps"]) for d in dropped] == [(3, 2), (7, 4)]
    assert "multiplies the denoiser's error by 2e+04" in dropped[0]["reason"]
    assert "from sigma 0.47 to 0.002 multiplies the denoiser's error by 117" in dropped[1]["reason"]
    assert sum("skipped: heun at" in r.getMessage() for r in caplog.records) == 2
    with pytest.raises(ValueError, match="no sampler setting left to evaluate: 1 dropped"):
        quality_vs_nfe(MIX.denoiser, (2,), Identity(), train_x=MIX.sample(500)[0].float(),
                       test_x=MIX.sample(500)[0].float(), samplers=["heun"], nfes=[4], n=50)


def test_filmstrip_ends_with_the_sample_of_the_same_seed():
    strip = denoising_filmstrip(MIX.denoiser, (2,), n=4, frames=5, sampler="heun", steps=6, seed=3)
    assert strip.shape == (4, 5, 2)
    final = generate(MIX.denoiser, (2,), 4, sampler="heun", steps=6, seed=3).x
    assert torch.equal(strip[:, -1], final)
    # early frames predict near the mixture mean, the last frame sits on a mode
    assert strip[:, 0].norm(dim=1).mean() < strip[:, -1].norm(dim=1).mean()


def test_cli_evaluate_writes_table_plot_grids_and_filmstrip(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "flows.cli"]
    env_args = dict(cwd=ROOT, capture_output=True, text=True, timeout=600)
    trained = subprocess.run(cmd + ["train", "-p", "tiny", "--out", str(run)], **env_args)
    assert trained.returncode == 0, trained.stderr
    result = subprocess.run(cmd + ["evaluate", "-d", str(run), "-p", "tiny", "--samplers", "heun,ddim",
                                   "--nfe", "1,3", "--n", "60",
                                   "--set", f"evaluate.feature_cache={tmp_path / 'features'}"],
                            **env_args)
    assert result.returncode == 0, result.stdout + result.stderr
    out = run / "evaluation"
    table = pd.read_csv(out / "quality_vs_nfe.csv")
    # Heun at 3 NFE (one Heun step from sigma 80 to 0.002) cannot work: dropped, with its reason
    assert sorted(set(zip(table.sampler, table.nfe))) == [("ddim", 1), ("ddim", 3), ("heun", 1)]
    report = json.loads((out / "quality_vs_nfe.json").read_text())
    (dropped,) = report["dropped"]
    assert (dropped["sampler"], dropped["nfe"]) == ("heun", 3)
    assert "skipped: heun at 3 NFE cannot work: its step from sigma 80 to 0.002" in result.stdout + result.stderr
    assert report["fid_floor"] > 0 and report["feature_extractor"]["kind"] == "classifier"
    for name in ("quality_vs_nfe.png", "samples_heun.png", "samples_ddim.png", "filmstrip.png"):
        assert (out / name).stat().st_size > 0, name
    assert "x the real-data floor" in result.stdout


def test_cli_evaluate_rejects_bad_arguments(tmp_path):
    cmd = [sys.executable, "-m", "flows.cli", "evaluate", "-d", str(tmp_path)]
    for extra, fragment in ((["--nfe", "1,x"], "comma-separated integers"),
                            (["--samplers", "euler"], "unknown sampler"),
                            ([], "holds no model")):
        result = subprocess.run(cmd + extra, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and fragment in result.stderr, result.stderr


def test_each_row_is_logged_with_its_rate_named_by_what_the_samples_are(caplog):
    g = torch.Generator().manual_seed(0)
    train, _ = MIX.sample(400, g)
    test, _ = MIX.sample(400, g)
    with caplog.at_level("INFO", logger="diffusion.evaluation"):
        quality_vs_nfe(MIX.denoiser, (2,), Identity(), train_x=train.float(), test_x=test.float(),
                       samplers=["ddim"], nfes=[1], n=100, noun="rows")
    said = [r.getMessage() for r in caplog.records if "NFE" in r.getMessage()]
    assert len(said) == 1 and said[0].endswith(" rows/s"), said

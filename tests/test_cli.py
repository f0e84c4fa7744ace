"""The `dmops` command line end to end: train -> model folder -> sample PNG, and bad input
that stops with one readable error line, exit code 2, and nothing written as if it worked."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def dmops(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "flows.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_every_command_has_help():
    from typer.main import get_command

    from flows.cli import app

    commands = sorted(get_command(app).commands)
    assert {"sample", "run", "deploy", "worker", "up", "reproduce"} <= set(commands)
    for command in ([], *([c] for c in commands)):
        result = dmops(*command, "--help")
        assert result.returncode == 0, result.stderr
        assert "Usage" in result.stdout
        # examples name what exists: the pipeline registers digits-diffusion, never `digits`
        assert "digits@" not in result.stdout and "digits/3" not in result.stdout, command


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    result = dmops("train", "--profile", "tiny", "--out", out)
    assert result.returncode == 0, result.stdout + result.stderr
    return out, result


def test_train_writes_model_checkpoints_and_grid(tiny_run):
    out, result = tiny_run
    assert (out / "model" / "model.json").exists()
    assert (out / "model" / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_00000020"
    grid = Image.open(out / "samples.png")
    assert grid.size[0] > 8 and grid.mode == "L"
    assert "trained 20 steps" in result.stdout


def test_sample_is_reproducible_for_a_seed(tiny_run, tmp_path):
    out, _ = tiny_run
    pictures = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        result = dmops("sample", "--model-dir", out, "--out", tmp_path / f"{name}.png", "--n", 9,
                       "--seed", seed, "--sampler", "dpmpp_2m", "--steps", 3)
        assert result.returncode == 0, result.stderr
        assert "3 NFE" in result.stdout
        pictures.append(np.asarray(Image.open(tmp_path / f"{name}.png")))
    assert np.array_equal(pictures[0], pictures[1])
    assert not np.array_equal(pictures[0], pictures[2])


def test_sampling_from_a_checkpoint_folder_uses_its_ema_weights(tiny_run, tmp_path):
    out, _ = tiny_run
    result = dmops("sample", "-d", out / "checkpoints" / "step_00000020", "--out", tmp_path / "c.png",
                   "--n", 4, "--steps", 2)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "c.png").exists()


def test_prepare_writes_arrays_and_manifest(tmp_path):
    result = dmops("prepare", "--root", tmp_path)
    assert result.returncode == 0, result.stderr
    manifest = (tmp_path / "digits" / "manifest.csv").read_text().splitlines()
    assert len(manifest) == 1797 + 1


def _fails_cleanly(result, *fragments):
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_corrupt_image_folder_stops_before_training(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "ok.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    out = tmp_path / "run"
    result = dmops("train", "-p", "tiny", "--out", out, "--set", "data.name=folder",
                   "--set", f"data.path={folder}")
    _fails_cleanly(result, "broken.png")
    assert not (out / "model").exists() and not (out / "checkpoints").exists()


def test_nan_dataset_never_trains(tmp_path):
    x = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
    x[5, 1] = np.nan
    np.savez(tmp_path / "bad.npz", x=x)
    out = tmp_path / "run"
    result = dmops("train", "-p", "tiny", "--out", out, "--set", "data.name=npz",
                   "--set", f"data.path={tmp_path / 'bad.npz'}", "--set", "model.net.kind=mlp")
    _fails_cleanly(result, "NaN")
    assert not out.exists() or not any(out.iterdir())


def test_unknown_config_key_and_bad_model_folder(tmp_path):
    _fails_cleanly(dmops("train", "-p", "tiny", "--set", "train.learning_rate=1"),
                   "train.learning_rate", "unknown key", "lr")
    _fails_cleanly(dmops("sample", "-d", tmp_path, "--out", tmp_path / "x.png"), "holds no model")
    assert not (tmp_path / "x.png").exists()


def test_a_folder_given_as_a_registry_reference_is_a_user_error_pointing_to_model_dir(tmp_path):
    result = dmops("sample", "--model", "runs/x", "--out", tmp_path / "x.png")
    _fails_cleanly(result, "--model 'runs/x' names no model version", "--model-dir")
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.png").exists()


def test_labelled_npz_without_class_names_evaluates(tiny_run, tmp_path):
    """An .npz with 'y' but no 'class_names' (valid input) crashed the evaluation with
    `len(None)` after training; the classes are the labels' range."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images[:400, None].astype(np.float32) / 8.0 - 1.0)
    np.savez(tmp_path / "d.npz", x=x, y=digits.target[:400].astype(np.int64))
    out, _ = tiny_run
    result = dmops("evaluate", "-p", "tiny", "-d", out, "--out", tmp_path / "eval",
                   "--set", "data.name=npz", "--set", f"data.path={tmp_path / 'd.npz'}",
                   "--set", f"evaluate.feature_cache={tmp_path / 'features'}")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert (tmp_path / "eval" / "quality_vs_nfe.csv").is_file()

"""`dmops distill` end to end on a tiny teacher: students of both methods are model folders
carrying their distillation and sampling blocks, `dmops sample` draws from them, `dmops
evaluate --students` puts them in the teacher's quality-vs-NFE table, and bad input stops
with one readable line and exit code 2.  The commands run in-process (typer's CliRunner):
one import of torch instead of one per command keeps the file well under a minute."""

import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


class Result:
    def __init__(self, invoked):
        self.returncode, self.stdout, self.stderr = invoked.exit_code, invoked.stdout, invoked.stderr
        self.exception = invoked.exception


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def dmops(command, *args):
    args = [command, *map(str, args)]
    if "--help" not in args and command != "sample":
        args += ["--config", str(PARAMS)]
    return Result(CliRunner().invoke(app, args))


def _ok(result):
    assert result.returncode == 0, (result.stdout + result.stderr, result.exception)
    return result


def _fails_cleanly(result, *fragments):
    assert result.returncode == 2, (result.stdout + result.stderr, result.exception)
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny digits teacher and every kind of student distilled from it."""
    out = tmp_path_factory.mktemp("run")
    _ok(dmops("train", "-p", "tiny", "--out", out))
    progressive = _ok(dmops("distill", "--method", "progressive", "-p", "tiny", "--teacher", out,
                            "--out", out))
    consistency = _ok(dmops("distill", "--method", "consistency", "-p", "tiny", "--teacher",
                            out / "model", "--out", out))
    _ok(dmops("distill", "--method", "dmd", "-p", "tiny", "--teacher", out, "--out", out))
    return out, progressive, consistency


def test_distill_help():
    result = _ok(dmops("distill", "--help"))
    assert "--method" in result.stdout and "--teacher" in result.stdout


def test_progressive_students_carry_their_round_and_sampling(run):
    out, result, _ = run
    work = out / "distill" / "progressive"
    # tiny profile: 4 -> 2 -> 1 teacher steps, one student per round
    for folder, steps in (("round_01_4_to_2", 2), ("round_02_2_to_1", 1)):
        spec = json.loads((work / folder / "model" / "model.json").read_text())
        assert spec["distillation"]["method"] == "progressive"
        assert spec["distillation"]["student_steps"] == steps
        assert (spec["sampling"]["sampler"], spec["sampling"]["grid"], spec["sampling"]["steps"]) == \
            ("ddim", "karras_nested", steps)
        assert Image.open(work / folder / "samples.png").size[0] > 8
        assert f"progressive-{steps}: ddim, {steps} step(s)" in result.stdout
    assert "2 student(s)" in result.stdout


def test_consistency_student_carries_its_sampling(run):
    out, _, result = run
    folder = out / "distill" / "consistency"
    spec = json.loads((folder / "model" / "model.json").read_text())
    assert spec["distillation"]["method"] == "consistency"
    assert spec["precond"]["kind"] == "consistency"
    assert (spec["sampling"]["sampler"], spec["sampling"]["steps"]) == ("consistency", 1)
    assert (folder / "samples.png").exists()
    assert "consistency: consistency, 1 step(s)" in result.stdout


def test_dmd_student_is_a_one_step_generator_at_its_sigma(run):
    out, _, _ = run
    folder = out / "distill" / "dmd"
    spec = json.loads((folder / "model" / "model.json").read_text())
    assert spec["distillation"]["method"] == "dmd" and spec["precond"]["kind"] == "edm"
    # G(z) = D(sigma_g z, sigma_g): one DDIM step from sigma_g, as the settings say
    assert (spec["sampling"]["sampler"], spec["sampling"]["steps"], spec["sampling"]["sigma_max"]) == \
        ("ddim", 1, 2.5)
    assert (folder / "samples.png").exists()


def test_sample_from_students_uses_their_own_sampling(run, tmp_path):
    out, _, _ = run
    work = out / "distill"
    result = _ok(dmops("sample", "-d", work / "progressive" / "round_01_4_to_2" / "model",
                       "--out", tmp_path / "p.png", "--n", 4))
    assert "ddim, 2 NFE" in result.stdout and (tmp_path / "p.png").exists()
    result = _ok(dmops("sample", "-d", work / "consistency", "--out", tmp_path / "c.png", "--n", 4))
    assert "consistency, 1 NFE" in result.stdout
    result = _ok(dmops("sample", "-d", work / "consistency", "--out", tmp_path / "c4.png", "--n", 4,
                       "--steps", 4))
    assert "consistency, 4 NFE" in result.stdout


def test_evaluate_puts_students_in_the_teachers_table(run, tmp_path):
    out, _, _ = run
    report = tmp_path / "report"
    result = _ok(dmops("evaluate", "-d", out, "-p", "tiny", "--students", out / "distill",
                       "--nfe", "1,2", "--n", 60, "--samplers", "heun", "--out", report,
                       "--set", f"evaluate.feature_cache={tmp_path / 'features'}"))
    table = pd.read_csv(report / "quality_vs_nfe.csv")
    rows = set(zip(table.model, table.sampler, table.nfe))
    assert rows == {("teacher", "heun", 1),  # Heun at budget 2 rounds down to 1 step = 1 NFE
                    ("progressive-2", "ddim", 2), ("progressive-1", "ddim", 1),
                    ("consistency", "consistency", 1), ("consistency", "consistency", 2),
                    ("consistency", "consistency", 4), ("dmd", "ddim", 1)}
    assert table["fid"].notna().all() and (table["fid_floor"] > 0).all()
    saved = json.loads((report / "quality_vs_nfe.json").read_text())
    assert {r["model"] for r in saved["rows"]} >= {"teacher", "consistency", "progressive-1"}
    for name in ("quality_vs_nfe.png", "samples_heun.png", "samples_consistency.png",
                 "samples_progressive-1.png"):
        assert (report / name).stat().st_size > 0, name
    assert "x the real-data floor" in result.stdout


def test_bad_method_and_bad_teachers_fail_with_one_line(run, tmp_path):
    out, _, _ = run
    _fails_cleanly(dmops("distill", "--method", "magic", "--teacher", out, "-p", "tiny"),
                   "--method", "progressive", "consistency", "'magic'")
    _fails_cleanly(dmops("distill", "--method", "progressive", "--teacher", tmp_path, "-p", "tiny",
                         "--out", tmp_path / "x"), "holds no model")
    # a digits teacher asked to distil on 2-D points
    _fails_cleanly(dmops("distill", "--method", "consistency", "--teacher", out, "-p", "tiny",
                         "--out", tmp_path / "y", "--set", "data.name=moons",
                         "--set", "model.net.kind=mlp"), "shape [1, 8, 8]", "[2]")
    # a consistency student is no diffusion teacher
    _fails_cleanly(dmops("distill", "--method", "progressive", "--teacher",
                         out / "distill" / "consistency", "-p", "tiny", "--out", tmp_path / "z"),
                   "cannot be distilled further")
    _fails_cleanly(dmops("evaluate", "-d", out, "-p", "tiny", "--students", tmp_path),
                   "no distilled students")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists() and not (tmp_path / "z").exists()

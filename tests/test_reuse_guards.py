"""Reuse is keyed by what made a result (issue: integrity).  A checkpoint, a finished
distillation round or student is reused only when its recorded provenance -- settings, data,
code, teacher -- matches the request; otherwise one line names the difference, exit code 2,
and nothing is written.  Unchanged inputs still reuse.  The code hash follows every project
module a step imports, and only those."""

import sys
import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cli_assertions import digest, fails_cleanly
from diffusion.model import ModelSpec, build_denoiser, read_spec
from diffusion.provenance import Lineage, ProvenanceError, code_files, code_sha256
from diffusion.train import TrainConfig, train
from flows.cli import app

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def dmops(*args):
    return CliRunner().invoke(app, [*map(str, args), "--config", str(PARAMS)])


def ok(result):
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result


# --- training resume (issue item 3) --------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    ok(dmops("train", "-p", "tiny", "--out", out))
    return out


def test_resume_under_other_settings_is_refused_and_writes_nothing(trained):
    before = digest(trained)
    result = dmops("train", "-p", "tiny", "--out", trained, "--set", "model.precond.kind=vp",
                   "--set", "train.steps=30")
    fails_cleanly(result, 2, "precond.kind", "'edm'", "'vp'", "new --out")
    assert digest(trained) == before
    assert read_spec(trained / "model").precond["kind"] == "edm"


def test_fewer_steps_than_the_checkpoint_are_refused_not_a_nan_loss(trained):
    before = digest(trained)
    fails_cleanly(dmops("train", "-p", "tiny", "--out", trained, "--set", "train.steps=10"), 2,
                  "step 20", "10 steps")
    assert digest(trained) == before


def test_a_finished_run_resumed_unchanged_reports_its_loss(trained):
    result = ok(dmops("train", "-p", "tiny", "--out", trained))
    assert "final loss nan" not in result.stdout
    assert "trained 20 steps" in result.stdout, result.stdout


def test_resume_with_other_data_is_refused(trained):
    fails_cleanly(dmops("train", "-p", "tiny", "--out", trained, "--set", "data.seed=1"), 2,
                  "training data")


def test_model_json_records_its_provenance(trained):
    spec = read_spec(trained / "model")
    p = spec.provenance
    assert p is not None and len(p.code_sha256) == 64 and len(p.data_sha256) == 64
    assert p.settings["precond"]["kind"] == "edm" and p.settings["train"]["lr"] > 0
    assert "steps" not in p.settings["train"]  # checked apart: more steps may continue a run


def _tiny_mlp():
    spec = ModelSpec(net={"kind": "mlp", "dim": 2, "hidden": 16, "depth": 1, "embed_dim": 8},
                     precond={"kind": "edm", "sigma_data": 1.0}, data={"shape": (2,)})
    torch.manual_seed(0)
    return build_denoiser(spec), spec


def test_resume_with_other_code_is_refused_and_the_same_code_resumes(tmp_path):
    data = torch.randn(32, 2, generator=torch.Generator().manual_seed(0))
    cfg = TrainConfig(steps=2, batch_size=8, device="cpu", progress=False, checkpoint_every=1)
    net, spec = _tiny_mlp()
    train(net, data, cfg, tmp_path, spec=spec, lineage=Lineage(code_sha256="a" * 64))
    longer = TrainConfig(**{**cfg.__dict__, "steps": 4})
    with pytest.raises(ProvenanceError, match="project code"):
        train(_tiny_mlp()[0], data, longer, tmp_path, spec=spec, lineage=Lineage(code_sha256="b" * 64))
    result = train(_tiny_mlp()[0], data, longer, tmp_path, spec=spec,
                   lineage=Lineage(code_sha256="a" * 64))
    assert result.step == 4


# --- distillation (issue item 4) -----------------------------------------------------------

@pytest.fixture(scope="module")
def two_teachers(tmp_path_factory, trained):
    other = tmp_path_factory.mktemp("teacher_b")
    ok(dmops("train", "-p", "tiny", "--out", other, "--set", "train.lr=0.001"))
    return trained, other


@pytest.mark.parametrize("method", ["progressive", "consistency"])
def test_distilling_another_teacher_into_the_same_folder_is_refused(two_teachers, tmp_path, method):
    teacher_a, teacher_b = two_teachers
    out = tmp_path / "D"
    ok(dmops("distill", "--method", method, "-p", "tiny", "--teacher", teacher_a, "--out", out))
    before = digest(out)
    result = dmops("distill", "--method", method, "-p", "tiny", "--teacher", teacher_b,
                   "--out", out)
    fails_cleanly(result, 2, "teacher weights", "new --out")
    assert digest(out) == before
    # the same teacher again: the finished students are reused as they are
    ok(dmops("distill", "--method", method, "-p", "tiny", "--teacher", teacher_a, "--out", out))
    assert digest(out) == before


def test_distilling_with_other_settings_into_the_same_folder_is_refused(two_teachers, tmp_path):
    teacher_a, _ = two_teachers
    out = tmp_path / "D"
    ok(dmops("distill", "--method", "consistency", "-p", "tiny", "--teacher", teacher_a,
             "--out", out))
    fails_cleanly(dmops("distill", "--method", "consistency", "-p", "tiny", "--teacher", teacher_a,
                        "--out", out, "--set", "distill.consistency.lr=0.0003"), 2, "config.lr")


def test_students_record_their_teachers_weights(two_teachers, tmp_path):
    from diffusion.model import load_model
    from diffusion.provenance import weights_sha256

    teacher_a, _ = two_teachers
    out = tmp_path / "D"
    ok(dmops("distill", "--method", "consistency", "-p", "tiny", "--teacher", teacher_a,
             "--out", out))
    student = read_spec(out / "distill" / "consistency" / "model")
    teacher_net = load_model(teacher_a / "model")[0].net
    assert student.provenance.teacher_sha256 == weights_sha256(teacher_net)


# --- the code hash -------------------------------------------------------------------------

def _package(root: Path, files: dict[str, str]) -> None:
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))


def test_code_hash_follows_every_imported_project_module_and_nothing_else(tmp_path, monkeypatch):
    _package(tmp_path, {
        "proj/__init__.py": "",
        "proj/step.py": "from .core import loss\n\ndef run():\n    from proj.lazy import helper\n",
        "proj/core.py": "import proj.weights as w\n\ndef loss():\n    return 1\n",
        "proj/weights.py": "EDM = 1.0\n",
        "proj/lazy.py": "def helper():\n    pass\n",
        "proj/release.py": "X = 1\n",   # not imported by the step
    })
    monkeypatch.syspath_prepend(str(tmp_path))
    files = code_files(["proj.step"], packages=("proj",))
    assert set(files) == {"proj", "proj.step", "proj.core", "proj.weights", "proj.lazy"}
    before = code_sha256(["proj.step"], packages=("proj",))
    (tmp_path / "proj/release.py").write_text("X = 2\n")
    assert code_sha256(["proj.step"], packages=("proj",)) == before
    (tmp_path / "proj/weights.py").write_text("EDM = 2.0\n")  # the example: a weighting
    assert code_sha256(["proj.step"], packages=("proj",)) != before


def test_the_training_steps_code_hash_covers_the_loss_weighting():
    modules = code_files(["tasks.steps.train_teacher"])
    assert {"diffusion.objectives", "diffusion.train", "diffusion.nets", "diffusion.data"} <= set(modules)
    assert "tasks.adapters.release" not in modules


def test_a_commit_missing_imported_code_is_marked_dirty(tmp_path):
    """The commit tag must hold the code that ran: a module the steps import that lies in the
    repository untracked (forgotten `git add`) makes the commit '-dirty'."""
    import shutil
    import subprocess

    root = Path(__file__).resolve().parents[1]
    for package in ("diffusion", "tasks"):
        shutil.copytree(root / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__"))

    def git(*args):
        subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=tmp_path,
                       check=True, capture_output=True)

    def commit_tag() -> str:  # run where `diffusion` and `tasks` import from the repository
        return subprocess.run([sys.executable, "-c", "from tasks.steps.lineage import git_commit; "
                               "print(git_commit('.'))"], cwd=tmp_path, capture_output=True,
                              text=True, check=True).stdout.strip()

    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "code")
    assert not commit_tag().endswith("-dirty")
    # the run's own `dvc repro` rewrites dvc.lock: the data version, tagged as dataset_md5
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    assert not commit_tag().endswith("-dirty")
    (tmp_path / "tasks" / "steps" / "sample.py").write_text("# edited\n")
    assert commit_tag().endswith("-dirty")
    git("checkout", "tasks/steps/sample.py")
    (tmp_path / "diffusion" / "weighting_extra.py").write_text("SCALE = 2.0\n")
    with open(tmp_path / "diffusion" / "objectives.py", "a") as f:
        f.write("\nfrom . import weighting_extra  # noqa: E402,F401\n")
    git("commit", "-qam", "import a module that was never added")
    assert commit_tag().endswith("-dirty")
    git("add", "diffusion/weighting_extra.py")
    git("commit", "-qm", "add it")
    assert not commit_tag().endswith("-dirty")

"""How the core reports: per-step numbers through `on_log(step, metrics)`, messages as records
of Python's `logging` (never `print`, never a `log`/`echo` hook of its own); and
`show_messages`, which puts those records on the console the way the core's prints did."""

from __future__ import annotations

import ast
import logging
import math
from pathlib import Path

import pytest
import torch

from diffusion.checksums import warn_unverified
from diffusion.data import load_digits
from diffusion.distill.progressive import ProgressiveConfig, progressive_distillation
from diffusion.evaluation import quality_vs_nfe
from diffusion.features import load_or_train_feature_extractor, train_feature_extractor
from diffusion.gmm import GaussianMixture
from diffusion.loop import optimise
from diffusion.messages import LOGGER, show_messages
from diffusion.model import ModelSpec, build_denoiser
from diffusion.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
HOOK_NAMES = {"log", "callback_log", "echo"}   # the hook's old names: `on_log` is the one kept


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- the scan ---------------------------------------------------------------------------

def print_uses(tree: ast.AST) -> list[int]:
    """Lines that call or pass the builtin `print` (a call, or `print` as a default value)."""
    return sorted(node.lineno for node in ast.walk(tree)
                  if isinstance(node, ast.Name) and node.id == "print"
                  and isinstance(node.ctx, ast.Load))


def public_hook_parameters(tree: ast.AST) -> list[str]:
    """'function(parameter)' for each public function (name without a leading underscore,
    methods and nested functions included) with a parameter named like an own logging hook."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            a = node.args
            for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]:
                if arg is not None and arg.arg in HOOK_NAMES:
                    found.append(f"{node.name}({arg.arg})")
    return found


def test_the_scan_sees_calls_defaults_and_hook_parameters():
    tree = ast.parse("def f(x, *, log=print):\n    print(x)\n"
                     "class C:\n    def run(self, echo=None):\n        def inner(callback_log): pass\n"
                     "def _private(log): pass\n"
                     "def g(on_log=None, callback=None): return 'print'\n")
    assert print_uses(tree) == [1, 2]
    assert public_hook_parameters(tree) == ["f(log)", "run(echo)", "inner(callback_log)"]


CORE = sorted((ROOT / "diffusion").rglob("*.py"))


@pytest.mark.parametrize("path", CORE, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_core_never_prints_and_has_no_hook_of_its_own(path):
    tree = ast.parse(path.read_text(), str(path))
    where = path.relative_to(ROOT)
    assert not print_uses(tree), (f"{where} uses print at lines {print_uses(tree)}: report "
                                  "messages through logging.getLogger(__name__)")
    assert not public_hook_parameters(tree), (
        f"{where}: {public_hook_parameters(tree)}: per-step numbers go to on_log(step, metrics), "
        "messages through logging")


# --- the records ------------------------------------------------------------------------

@pytest.fixture
def core_records(caplog):
    """caplog's handler on the "diffusion" logger itself, at INFO, whatever else is configured
    (show_messages stops propagation to the root, where caplog listens by default)."""
    logger = logging.getLogger(LOGGER)
    saved = logger.level, logger.propagate
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.addHandler(caplog.handler)
    try:
        yield caplog
    finally:
        logger.removeHandler(caplog.handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _records(caplog, name: str) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == name]


TINY_MLP = ModelSpec(net={"kind": "mlp", "dim": 2, "hidden": 16, "depth": 1, "embed_dim": 8},
                     precond={"kind": "edm", "sigma_data": 1.0}, data={"shape": (2,)})


def test_resuming_is_an_info_record_of_the_trainer(tmp_path, core_records):
    data = torch.randn(32, 2, generator=torch.Generator().manual_seed(0))

    def cfg(steps):
        return TrainConfig(batch_size=8, steps=steps, checkpoint_every=2, log_every=1,
                           lr_warmup_steps=1, device="cpu", progress=False)

    torch.manual_seed(0)
    train(build_denoiser(TINY_MLP), data, cfg(2), tmp_path, spec=TINY_MLP)
    assert _records(core_records, "diffusion.train") == []
    torch.manual_seed(0)
    train(build_denoiser(TINY_MLP), data, cfg(4), tmp_path, spec=TINY_MLP, resume=True)
    assert _records(core_records, "diffusion.train") == [
        (logging.INFO, f"resuming from {tmp_path / 'checkpoints' / 'step_00000002'} (step 2)")]


class _Stop(Exception):
    pass


def test_distillation_says_when_it_resumes_and_when_it_reuses_a_round(tmp_path, core_records):
    data = torch.randn(32, 2, generator=torch.Generator().manual_seed(0))
    cfg = ProgressiveConfig(start_steps=4, end_steps=2, steps_per_round=4, batch_size=8, lr=1e-3,
                            device="cpu", progress=False, checkpoint_every=2, log_every=1)

    def teacher():
        torch.manual_seed(0)
        return build_denoiser(TINY_MLP).eval()

    def stop_at_3(step, metrics):
        if step == 3:
            raise _Stop

    with pytest.raises(_Stop):  # interrupted after its checkpoint at step 2
        progressive_distillation(teacher(), TINY_MLP, data, cfg, tmp_path, on_log=stop_at_3)
    [folder] = progressive_distillation(teacher(), TINY_MLP, data, cfg, tmp_path)
    progressive_distillation(teacher(), TINY_MLP, data, cfg, tmp_path)
    round_dir = folder.parent
    assert _records(core_records, "diffusion.distill.shared") == [
        (logging.INFO, f"progressive round 1: resuming from "
                       f"{round_dir / 'checkpoints' / 'step_00000002'} (step 2)"),
        (logging.INFO, f"progressive round 1: reusing the finished student in {folder} "
                       "(made from the same inputs)")]


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def test_the_feature_cache_says_trained_reused_and_unusable_as_info_records(tmp_path, digits,
                                                                           core_records):
    _, report, reused = load_or_train_feature_extractor(digits, tmp_path, steps=2)
    folder = tmp_path / report["fingerprint"][:16]
    _, _, reused_again = load_or_train_feature_extractor(digits, tmp_path, steps=2)
    (folder / "weights.safetensors").write_bytes(b"garbage")
    load_or_train_feature_extractor(digits, tmp_path, steps=2)
    records = _records(core_records, "diffusion.features")
    assert not reused and reused_again
    assert [level for level, _ in records] == [logging.INFO] * 4
    trained, reuse, unusable, retrained = (message for _, message in records)
    assert trained.startswith("feature extractor: trained in ") and f"saved to {folder}" in trained
    assert reuse.startswith(f"feature extractor: reused {folder} (classifier")
    assert unusable.startswith("feature extractor: cached copy unusable (") and "retraining" in unusable
    assert retrained.startswith("feature extractor: trained in ")


def test_an_unverified_copy_is_one_warning_record_per_copy(core_records):
    what = f"test copy {id(core_records)} was saved without file checksums"
    warn_unverified(what)
    warn_unverified(what)
    assert _records(core_records, "diffusion.checksums") == [(logging.WARNING, what)]


class _Identity(torch.nn.Module):
    num_features = 2
    kind = "identity"

    def forward(self, x):
        return x.to(torch.float64)


def test_each_row_of_the_quality_table_is_an_info_record(core_records):
    mix = GaussianMixture.ring()
    g = torch.Generator().manual_seed(0)
    train_x, _ = mix.sample(200, g)
    test_x, _ = mix.sample(200, g)
    table = quality_vs_nfe(mix.denoiser, (2,), _Identity(), train_x=train_x.float(),
                           test_x=test_x.float(), samplers=["ddim"], nfes=[1, 2], n=100, seed=1,
                           kid_subsets=2)
    records = _records(core_records, "diffusion.evaluation")
    assert len(records) == len(table) == 2
    assert [m.split(" ")[0] for _, m in records] == ["[1/2]", "[2/2]"]
    assert all(level == logging.INFO and "FID" in m for level, m in records)


# --- the per-step numbers ---------------------------------------------------------------

def test_the_feature_extractor_reports_steps_through_on_log_of_the_shared_loop(digits):
    seen = []
    _, report = train_feature_extractor(digits, steps=20, on_log=lambda s, m: seen.append((s, m)))
    assert [s for s, _ in seen] == list(range(2, 21, 2))   # ten times per run
    assert all(math.isfinite(m["loss"]) and m["lr"] > 0 for _, m in seen)
    # warm-up to LR by step 1 (steps // 20 = 1), then the cosine decay towards 0 at the end
    assert seen[-1][1]["lr"] < seen[0][1]["lr"]
    assert report["steps"] == 20


def test_the_loop_runs_without_an_ema_and_decays_the_learning_rate():
    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    lrs = []
    result = optimise(net, opt, None, step=0, total=4, loss_at=lambda s: net(torch.ones(1, 2)).pow(2).sum(),
                      lr=0.1, lr_warmup_steps=1, lr_decay=lambda s: 1 / (s + 1), grad_clip=0.0,
                      log_every=1, checkpoint_every=4, samples_per_step=1, progress=False,
                      on_log=lambda s, m: lrs.append(m["lr"]))
    assert result.step == 4
    assert lrs == pytest.approx([0.1, 0.05, 0.1 / 3, 0.025], rel=1e-12)


# --- showing them -----------------------------------------------------------------------

@pytest.fixture
def shown():
    """show_messages() for one test; the "diffusion" logger put back as it was afterwards."""
    logger = logging.getLogger(LOGGER)
    saved = list(logger.handlers), logger.level, logger.propagate
    try:
        yield show_messages
    finally:
        logger.handlers[:] = saved[0]
        logger.setLevel(saved[1])
        logger.propagate = saved[2]


def test_show_messages_prints_info_bare_on_stdout_and_warnings_prefixed_on_stderr(shown, capsys):
    shown()
    shown()   # idempotent: still one line per record
    logging.getLogger("diffusion.train").info("resuming from %s (step %d)", "ckpt", 3)
    logging.getLogger("diffusion.checksums").warning("copy x is not verified")
    logging.getLogger("diffusion.features").debug("not shown")
    out, err = capsys.readouterr()
    assert out == "resuming from ckpt (step 3)\n"
    assert err == "warning: copy x is not verified\n"


def test_show_messages_writes_to_the_stream_of_the_moment(shown, capsys, monkeypatch):
    import io
    import sys

    shown(info="stderr")
    swapped = io.StringIO()   # what Typer's CliRunner does per invocation
    monkeypatch.setattr(sys, "stderr", swapped)
    logging.getLogger("diffusion.evaluation").info("[1/1] heun")
    assert swapped.getvalue() == "[1/1] heun\n"
    with pytest.raises(ValueError, match="accepted: 'stdout' or 'stderr'"):
        shown(info="file")

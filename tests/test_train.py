"""The training loop: it learns, it resumes exactly, it writes checkpoints and model folders
atomically, it refuses bad input, and data-parallel ranks stay in sync."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pydantic
import pytest
import torch
from diffusers import UNet2DModel
from safetensors.torch import load_file

from diffusion.gmm import GaussianMixture
from diffusion.model import ModelError, ModelSpec, build_denoiser, load_model
from diffusion.samplers import generate
from diffusion.train import ObjectiveConfig, TrainConfig, TrainingError, train

REPO = Path(__file__).resolve().parents[1]

TINY_MLP = ModelSpec(net={"kind": "mlp", "dim": 2, "hidden": 32, "depth": 2, "embed_dim": 16},
                     precond={"kind": "edm", "sigma_data": 1.0}, data={"shape": (2,)})
TINY_UNET = ModelSpec(net={"kind": "unet", "sample_size": 8, "in_channels": 1, "channels": [8, 16],
                           "norm_num_groups": 8},
                      precond={"kind": "vp", "schedule": "vp_cosine", "prediction": "v"},
                      data={"shape": (1, 8, 8)})
CKPT_FILES = {"model.safetensors", "ema.safetensors", "optimizer.safetensors", "rng.safetensors",
              "state.json"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(**overrides) -> TrainConfig:
    base = dict(batch_size=8, lr_warmup_steps=2, device="cpu", progress=False, log_every=1)
    return TrainConfig(**{**base, **overrides})


def _denoiser(spec, seed):
    torch.manual_seed(seed)
    return build_denoiser(spec)


def _data(spec, n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    if spec.net["kind"] == "unet":
        return torch.randn(n, 1, 8, 8, generator=g)
    return torch.randn(n, 2, generator=g)


def _assert_same_tree(a, b, where="state"):
    """Exact (torch.equal) equality of nested optimizer-state containers."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same_tree(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same_tree(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


def _latest(out: Path) -> Path:
    ckpt = out / "checkpoints"
    return ckpt / (ckpt / "latest").read_text().strip()


# --- learning ----------------------------------------------------------------------

LEARN_SPEC = ModelSpec(net={"kind": "mlp", "dim": 2, "hidden": 128, "depth": 3},
                       # per-axis std of the ring: sqrt(2 + 0.15^2)
                       precond={"kind": "edm", "sigma_data": 1.4}, data={"shape": (2,)})


def _quality(mix, denoiser, n, seed):
    x = generate(denoiser, (2,), n, sampler="heun", steps=32, seed=seed).x
    assert bool(torch.isfinite(x).all())
    weights = torch.bincount(mix.assign(x), minlength=8).double() / n
    return weights, float(mix.log_prob(x).mean())


@pytest.mark.slow
def test_training_learns_the_eight_gaussian_ring(tmp_path):
    mix = GaussianMixture.ring(8, 2.0, 0.15)
    data = mix.sample(8192, torch.Generator().manual_seed(0))[0].float()
    cfg = TrainConfig(steps=3000, batch_size=256, lr=2e-3, ema_decay=0.995, device="cpu",
                      checkpoint_every=3000, log_every=500, progress=False)
    result = train(_denoiser(LEARN_SPEC, 0), data, cfg, tmp_path, spec=LEARN_SPEC)
    assert result.step == 3000 and math.isfinite(result.loss)
    model, spec = load_model(result.model_dir)
    assert spec.trained_steps == 3000

    n = 8000
    weights, logp = _quality(mix, model, n, seed=1)
    true_logp = float(mix.log_prob(mix.sample(n, torch.Generator().manual_seed(2))[0]).mean())
    # Mode weights: the binomial standard error at n = 8000 is sqrt(1/8 * 7/8 / n) = 0.0037, so
    # sampling noise stays below 4 SE = 0.015; the model's own error, measured at 0.008-0.016
    # over seeds after 3000 steps, takes the rest of a 0.03 allowance (~ 1/4 of a mode).
    assert bool(((weights - 1 / 8).abs() < 0.03).all()), weights
    # Mean log-density under the true mixture: true draws give -1.10 (the mean's SE is ~0.01).
    # Trained models were measured at -1.25 .. -1.38 (three init/batch seeds x two sampler
    # seeds): a little mass between the modes and slightly widened modes.  0.5 nats is about
    # twice the worst gap seen; an untrained model sits ~33 nats below, and a 1500-step model
    # was measured at ~ -3.6, so the margin still separates "learned" from "half learned".
    assert logp > true_logp - 0.5, (logp, true_logp)

    # the measure can fail: the same network untrained is far off
    _, untrained_logp = _quality(mix, _denoiser(LEARN_SPEC, 0).eval(), 2000, seed=1)
    assert untrained_logp < true_logp - 5, untrained_logp
    assert logp > untrained_logp + 5


# --- exact resume ------------------------------------------------------------------

def _resume_case(tmp_path, spec, n_steps, objective=None):
    objective = objective or ObjectiveConfig()
    cfg = lambda steps: _cfg(steps=steps, checkpoint_every=n_steps // 2, lr_warmup_steps=3,  # noqa: E731
                             ema_decay=0.9, objective=objective)
    data = _data(spec)
    a_dir, b_dir = tmp_path / "A", tmp_path / "B"

    a = _denoiser(spec, 0)
    train(a, data, cfg(2 * n_steps), a_dir, spec=spec)

    b = _denoiser(spec, 0)
    train(b, data, cfg(n_steps), b_dir, spec=spec)
    assert (b_dir / "checkpoints" / f"step_{n_steps:08d}").is_dir()
    fresh = _denoiser(spec, 1)  # a different init: resume must overwrite every weight
    init = fresh.net.state_dict()
    assert any(not torch.equal(v, b.net.state_dict()[k]) for k, v in init.items())
    train(fresh, data, cfg(2 * n_steps), b_dir, spec=spec, resume=True)

    for k, v in a.net.state_dict().items():
        assert torch.equal(v, fresh.net.state_dict()[k]), k
    last = f"step_{2 * n_steps:08d}"
    ema_a = load_file(str(a_dir / "checkpoints" / last / "ema.safetensors"))
    ema_b = load_file(str(b_dir / "checkpoints" / last / "ema.safetensors"))
    assert ema_a.keys() == ema_b.keys()
    for k in ema_a:
        assert torch.equal(ema_a[k], ema_b[k]), k
    # the EMA is not just the weights again (so comparing it is a separate check)
    assert any(not torch.equal(ema_a[k], v.float()) for k, v in a.net.state_dict().items())
    state_a, state_b = (json.loads((d / "checkpoints" / last / "state.json").read_text())
                        for d in (a_dir, b_dir))
    assert state_a["step"] == state_b["step"] == 2 * n_steps
    assert state_a["optimizer"] == state_b["optimizer"]
    opt_a, opt_b = (load_file(str(d / "checkpoints" / last / "optimizer.safetensors"))
                    for d in (a_dir, b_dir))
    assert opt_a, "optimizer state is empty"
    _assert_same_tree(opt_a, opt_b, "optimizer")
    # the exported models are the same EMA weights
    model_a = load_file(str(next((a_dir / "model").glob("**/*.safetensors"))))
    model_b = load_file(str(next((b_dir / "model").glob("**/*.safetensors"))))
    for k in model_a:
        assert torch.equal(model_a[k], model_b[k]), k


def test_resume_is_exact_mlp(tmp_path):
    _resume_case(tmp_path, TINY_MLP, n_steps=6)


def test_resume_is_exact_unet_vp(tmp_path):
    _resume_case(tmp_path, TINY_UNET, n_steps=4, objective=ObjectiveConfig(weighting="min_snr"))


# --- checkpoints -------------------------------------------------------------------

def test_checkpoints_are_complete_and_pruned(tmp_path):
    train(_denoiser(TINY_MLP, 0), _data(TINY_MLP), _cfg(steps=5, checkpoint_every=1,
                                                        keep_checkpoints=2), tmp_path, spec=TINY_MLP)
    ckpt = tmp_path / "checkpoints"
    assert (ckpt / "latest").read_text().strip() == "step_00000005"
    steps = sorted(p.name for p in ckpt.iterdir() if p.is_dir())
    assert steps == ["step_00000004", "step_00000005"]  # keep_checkpoints = 2
    for name in steps:
        assert {p.name for p in (ckpt / name).iterdir()} == CKPT_FILES
    state = json.loads((_latest(tmp_path) / "state.json").read_text())
    assert state["step"] == 5 and ModelSpec.model_validate(state["model"]) == TINY_MLP
    assert state["provenance"]["settings"]["net"] == TINY_MLP.net
    leftovers = [p for p in tmp_path.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]
    assert leftovers == []


def test_latest_pointing_at_a_missing_folder_is_an_error(tmp_path):
    ckpt = tmp_path / "checkpoints"
    ckpt.mkdir()
    (ckpt / "latest").write_text("step_00000042")
    with pytest.raises(TrainingError, match="step_00000042"):
        train(_denoiser(TINY_MLP, 0), _data(TINY_MLP), _cfg(steps=2), tmp_path, resume=True)


# --- bad input ---------------------------------------------------------------------

@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_data_is_refused_before_anything_is_written(tmp_path, bad):
    data = _data(TINY_MLP)
    data[17, 1] = bad
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match="NaN"):
        train(_denoiser(TINY_MLP, 0), data, _cfg(steps=2), out, spec=TINY_MLP)
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.parametrize("data", [torch.empty(0, 2), torch.randn(16)], ids=["empty", "1-D"])
def test_unusable_data_shape_is_refused(tmp_path, data):
    with pytest.raises(TrainingError, match="non-empty"):
        train(_denoiser(TINY_MLP, 0), data, _cfg(steps=2), tmp_path / "run", spec=TINY_MLP)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("make,field", [
    (lambda: TrainConfig(steps=0), "steps"),
    (lambda: TrainConfig(bogus=1), "bogus"),
    (lambda: TrainConfig(ema_decay=1.0), "ema_decay"),
    (lambda: TrainConfig(device="gpu"), "device"),
    (lambda: ObjectiveConfig(weighting="nope"), "weighting"),
], ids=["steps=0", "unknown-key", "ema_decay=1", "device", "weighting"])
def test_invalid_config_names_the_field(make, field):
    with pytest.raises(pydantic.ValidationError) as info:
        make()
    assert any(field in map(str, err["loc"]) for err in info.value.errors()), info.value.errors()


def test_diverging_loss_stops_training_without_a_model(tmp_path):
    """lr = 1e30 with no warm-up: Adam moves every weight by ~lr on step 1, so step 2's forward
    pass multiplies ~1e30-sized weights through three layers and overflows float32."""
    out = tmp_path / "run"
    cfg = _cfg(steps=20, lr=1e30, lr_warmup_steps=0, checkpoint_every=1)
    with pytest.raises(TrainingError, match=r"diverged by step"):
        train(_denoiser(TINY_MLP, 0), _data(TINY_MLP), cfg, out, spec=TINY_MLP)
    assert not (out / "model").exists()
    assert [p for p in out.iterdir() if p.name != "checkpoints"] == []
    # checked every step (log_every = 1): the checkpoint left behind holds finite weights
    weights = load_file(str(_latest(out) / "model.safetensors"))
    assert all(bool(torch.isfinite(v).all()) for v in weights.values())


def test_diverging_loss_never_leaves_a_non_finite_latest_checkpoint(tmp_path):
    out = tmp_path / "run"
    cfg = _cfg(steps=20, lr=1e30, lr_warmup_steps=0, checkpoint_every=1, log_every=4)
    with pytest.raises(TrainingError, match="diverged by step"):
        train(_denoiser(TINY_MLP, 0), _data(TINY_MLP), cfg, out, spec=TINY_MLP)
    assert not (out / "model").exists()
    weights = load_file(str(_latest(out) / "model.safetensors"))
    assert all(bool(torch.isfinite(v).all()) for v in weights.values())


# --- model folder ------------------------------------------------------------------

def test_model_folder_holds_the_ema_weights(tmp_path):
    net = _denoiser(TINY_MLP, 0)
    result = train(net, _data(TINY_MLP), _cfg(steps=6, ema_decay=0.5, checkpoint_every=6),
                   tmp_path, spec=TINY_MLP)
    assert result.model_dir == tmp_path / "model"
    model, spec = load_model(tmp_path / "model")
    assert spec.net == TINY_MLP.net and spec.trained_steps == 6
    assert not model.training
    ema = load_file(str(_latest(tmp_path) / "ema.safetensors"))
    loaded = model.net.state_dict()
    assert loaded.keys() == ema.keys()
    for k in ema:
        assert torch.equal(loaded[k], ema[k]), k
    # ... and not the raw weights, which differ from the average after 6 steps
    assert any(not torch.equal(v, loaded[k]) for k, v in net.net.state_dict().items())
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_unet_model_folder_is_diffusers_layout(tmp_path):
    train(_denoiser(TINY_UNET, 0), _data(TINY_UNET), _cfg(steps=2, checkpoint_every=2), tmp_path,
          spec=TINY_UNET)
    folder = tmp_path / "model"
    assert (folder / "model.json").is_file()
    assert (folder / "unet" / "config.json").is_file()
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    plain = UNet2DModel.from_pretrained(folder / "unet").eval()
    assert tuple(plain.config.block_out_channels) == (8, 16)
    ema = load_file(str(_latest(tmp_path) / "ema.safetensors"))
    for k, v in plain.state_dict().items():
        assert torch.equal(v, ema[f"unet.{k}"]), k
    model, _ = load_model(folder)
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    t = torch.tensor([10.0, 500.0, 900.0])
    with torch.no_grad():
        assert torch.equal(plain(x, t).sample, model.net(x, t))


def test_folder_without_model_json_is_a_model_error(tmp_path):
    (tmp_path / "net.safetensors").write_bytes(b"")
    with pytest.raises(ModelError, match="model.json"):
        load_model(tmp_path)


def _trained_mlp_folder(tmp_path):
    train(_denoiser(TINY_MLP, 0), _data(TINY_MLP), _cfg(steps=1), tmp_path, spec=TINY_MLP)
    return tmp_path / "model"


def _edit_spec(folder, **net):
    meta = json.loads((folder / "model.json").read_text())
    meta["net"].update(net)
    (folder / "model.json").write_text(json.dumps(meta))


def test_weights_missing_for_the_spec_are_a_model_error(tmp_path):
    folder = _trained_mlp_folder(tmp_path)
    _edit_spec(folder, depth=3)  # one more residual block than the weights hold
    with pytest.raises(ModelError, match="do not fit"):
        load_model(folder)


def test_weights_of_the_wrong_shape_are_a_model_error(tmp_path):
    folder = _trained_mlp_folder(tmp_path)
    _edit_spec(folder, hidden=64)  # same keys, other shapes
    with pytest.raises(ModelError, match="do not fit"):
        load_model(folder)


# --- data parallel -----------------------------------------------------------------

def test_ddp_ranks_end_with_identical_weights(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "tests" / "ddp_worker.py"), str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    init0, init1 = (load_file(str(tmp_path / f"init{r}.safetensors")) for r in (0, 1))
    final0, final1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    # the premise: the ranks started from different weights
    assert any(not torch.equal(init0[k], init1[k]) for k in init0)
    assert final0.keys() == final1.keys() == init0.keys()
    for k in final0:
        assert torch.equal(final0[k], final1[k]), k
    assert any(not torch.equal(final0[k], init0[k]) for k in final0)  # training happened
    # rank 0 alone wrote the run's outputs
    assert (tmp_path / "run" / "model" / "model.json").is_file()
    assert (tmp_path / "run" / "checkpoints" / "step_00000010").is_dir()

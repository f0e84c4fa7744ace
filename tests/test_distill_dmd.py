"""Distribution matching distillation: the generator's gradient is the exact one where the scores
are known (Gaussian-mixture oracle), points from the generator's distribution toward the data's,
vanishes when the two score networks agree; the 1-step student covers the 8-mode ring; it is
written as a model folder the samplers read, resumes exactly and cannot teach."""

import math

import pytest
import torch
from safetensors.torch import load_file

from diffusion.distill.dmd import (distribution_matching_gradient, distribution_matching_loss,
                                   dmd_distillation)
from diffusion.distill.settings import DMDConfig, DistillConfig
from diffusion.distill.shared import DistillationError, load_teacher
from diffusion.gmm import GaussianMixture
from diffusion.model import ModelSpec, build_denoiser, load_model, save_model
from diffusion.samplers import generate
from diffusion.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MIX = GaussianMixture.ring(8, 2.0, 0.15)


def _gaussian(mean, std):
    mean = torch.as_tensor(mean, dtype=torch.float64)
    return GaussianMixture(mean[None], (std**2) * torch.eye(len(mean), dtype=torch.float64)[None],
                           torch.ones(1, dtype=torch.float64))


def _draws(n, dim, seed):
    g = torch.Generator().manual_seed(seed)
    sigma = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(math.log(0.02), math.log(20),
                                                                   generator=g))
    return sigma, torch.randn(n, dim, generator=g, dtype=torch.float64)


# --- the gradient, against exact scores ----------------------------------------------------

def test_gradient_is_the_exact_one_between_two_gaussians_and_points_to_the_data():
    """real N(m_r, s^2 I), fake N(m_f, s^2 I): D(x_t) = m + s^2/(s^2 + sigma^2)(x_t - m), so
    D_f - D_r = (m_f - m_r) sigma^2/(s^2 + sigma^2) whatever x_t; divided by mean|x - D_r|."""
    s = 0.7
    m_r = torch.tensor([1.0, -0.5, 0.0], dtype=torch.float64)
    m_f = torch.tensor([0.2, 0.4, 0.3], dtype=torch.float64)
    real, fake = _gaussian(m_r, s), _gaussian(m_f, s)
    x = fake.sample(512, torch.Generator().manual_seed(0))[0]
    sigma, eps = _draws(512, 3, 1)
    grad = distribution_matching_gradient(x, sigma, eps, real.denoiser, fake.denoiser)
    x_t = x + sigma[:, None] * eps
    d_real = m_r + s**2 / (s**2 + sigma[:, None] ** 2) * (x_t - m_r)
    norm = (x - d_real).abs().mean(1, keepdim=True)
    expected = (m_f - m_r) * (sigma**2 / (s**2 + sigma**2))[:, None] / norm
    assert torch.allclose(grad, expected, rtol=1e-9, atol=1e-12)
    # a descent step x - eta grad moves every sample along m_r - m_f: toward the data
    assert bool(((grad @ (m_f - m_r)) > 0).all())


def test_gradient_vanishes_exactly_when_the_score_networks_agree():
    x = MIX.sample(1024, torch.Generator().manual_seed(3))[0] * 1.3  # anywhere, off the data too
    sigma, eps = _draws(1024, 2, 4)
    grad = distribution_matching_gradient(x, sigma, eps, MIX.denoiser, MIX.denoiser)
    assert torch.equal(grad, torch.zeros_like(x))


def test_gradient_turns_a_rotated_ring_back_onto_the_data():
    """Fake: the ring rotated by 0.15 rad; real: the ring.  Each generated sample's descent
    direction -grad, projected on the tangent that turns it back (clockwise), is positive on
    average by more than 5 standard errors of that mean (the noise of sigma, eps and x)."""
    angle = 0.15
    rot = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]],
                       dtype=torch.float64)
    fake = GaussianMixture(MIX.means @ rot.T, MIX.covs, MIX.weights)
    x = fake.sample(4096, torch.Generator().manual_seed(5))[0]
    sigma, eps = _draws(4096, 2, 6)
    grad = distribution_matching_gradient(x, sigma, eps, MIX.denoiser, fake.denoiser)
    clockwise = torch.stack([x[:, 1], -x[:, 0]], 1) / x.norm(dim=1, keepdim=True)
    turn = (-grad * clockwise).sum(1)
    assert float(turn.mean()) > 5 * float(turn.std()) / math.sqrt(len(turn)), float(turn.mean())


def test_surrogate_loss_hands_the_gradient_to_the_generator():
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(6, 3, dtype=torch.float64)
    distribution_matching_loss(x, grad).backward()
    assert torch.allclose(x.grad, grad / 18, rtol=1e-12, atol=0)


def test_config_is_a_distill_section_and_checks_its_ranges():
    assert DistillConfig().dmd == DMDConfig()
    assert DistillConfig.model_validate({"dmd": {"steps": 10}}).dmd.steps == 10
    with pytest.raises(ValueError, match="dm_sigma_min"):
        DMDConfig(dm_sigma_min=5.0, dm_sigma_max=1.0)


# --- a 1-step student on the 8-mode ring -----------------------------------------------------

RING_SPEC = ModelSpec(net={"kind": "mlp", "dim": 2, "hidden": 64, "depth": 2, "embed_dim": 32},
                      precond={"kind": "edm", "sigma_data": 1.4}, data={"shape": (2,)})


@pytest.fixture(scope="module")
def ring_teacher(tmp_path_factory, one_torch_thread):
    out = tmp_path_factory.mktemp("ring_teacher")
    data = MIX.sample(8192, torch.Generator().manual_seed(0))[0].float()
    torch.manual_seed(0)
    cfg = TrainConfig(steps=1500, batch_size=256, lr=2e-3, ema_decay=0.995, device="cpu",
                      checkpoint_every=1500, log_every=500, progress=False)
    train(build_denoiser(RING_SPEC), data, cfg, out, spec=RING_SPEC)
    teacher, spec = load_teacher(out / "model", (2,))
    return teacher, spec, data


N_EVAL = 8000
# Mode weights: binomial SE at n = 8000 is sqrt(1/8 * 7/8 / 8000) = 0.0037, so sampling noise
# stays below 4 SE = 0.015; DMD's reverse KL is mode-seeking, so the model's own imbalance gets
# the rest of 0.05 (each mode 0.075-0.175: none dropped, none doubled; measured within 0.025).
# Log-density: the student matches its teacher's distribution, not the data's, so it is held
# to the teacher's own 18-step Heun samples (this small teacher: -1.8, true draws -1.1): within
# 1.5 nats, as the other students in test_distill.py (measured 0.6-1.0 below at 600 steps).
# G before the matching (the teacher's posterior mean at sigma_g) must fail that bound, or the
# test would not show the matching's work.
WEIGHT_TOL, LOGP_MARGIN = 0.05, 1.5


def _ring_quality(model, sampler, steps, **grid):
    x = generate(model, (2,), N_EVAL, sampler=sampler, steps=steps, seed=1, **grid).x
    assert bool(torch.isfinite(x).all())
    weights = torch.bincount(MIX.assign(x), minlength=8).double() / N_EVAL
    return weights, float(MIX.log_prob(x).mean())


@pytest.mark.slow
def test_one_step_student_covers_every_mode_of_the_ring(ring_teacher, tmp_path):
    teacher, spec, data = ring_teacher
    _, teacher_logp = _ring_quality(teacher, "heun", 18)
    _, initial_logp = _ring_quality(teacher, "ddim", 1, sigma_max=2.5)
    assert initial_logp < teacher_logp - LOGP_MARGIN, (initial_logp, teacher_logp)
    # no regression term: the mode coverage is the distribution matching's own
    cfg = DMDConfig(steps=600, batch_size=256, lr=1e-3, regression_weight=0.0, device="cpu",
                    progress=False, checkpoint_every=600, log_every=200)
    folder = dmd_distillation(teacher, spec, data, cfg, tmp_path)
    student, sspec = load_model(folder)
    assert sspec.method == "dmd" and sspec.distillation["supported_steps"] == [1]
    s = sspec.sampling
    assert (s.sampler, s.steps, s.grid, s.sigma_max) == ("ddim", 1, "karras", 2.5)
    assert sspec.precond == spec.precond
    weights, logp = _ring_quality(student, s.sampler, s.steps, grid=s.grid, sigma_max=s.sigma_max)
    print(f"dmd 1-step: weights {weights.tolist()}, logp {logp:.3f} (teacher {teacher_logp:.3f}, "
          f"G before matching {initial_logp:.3f})")
    assert bool(((weights - 1 / 8).abs() < WEIGHT_TOL).all()), weights
    assert logp > teacher_logp - LOGP_MARGIN, (logp, teacher_logp)
    with pytest.raises(DistillationError, match="dmd"):  # a generator is no denoiser to learn from
        load_teacher(folder, (2,))


# --- resume ----------------------------------------------------------------------------------

class Interrupt(Exception):
    pass


TINY = ModelSpec(net={"kind": "mlp", "dim": 2, "hidden": 32, "depth": 2, "embed_dim": 16},
                 precond={"kind": "edm", "sigma_data": 1.0}, data={"shape": (2,)})


def _tiny_teacher():
    torch.manual_seed(0)
    return build_denoiser(TINY).eval()


def test_dmd_resumes_exactly(tmp_path):
    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    cfg = DMDConfig(steps=6, batch_size=8, lr=1e-3, fake_updates=2, ema_decay=0.9,
                    regression_weight=0.5, regression_pairs=16, regression_steps=4,
                    device="cpu", progress=False, checkpoint_every=2, log_every=1)
    seen = []

    def on_log(step, metrics):
        seen.append(step)
        assert math.isfinite(metrics["fake_loss"])
        if step == 5 and interrupt:
            raise Interrupt

    interrupt = False
    full = dmd_distillation(_tiny_teacher(), TINY, data, cfg, tmp_path / "A", on_log=on_log)
    interrupt = True
    with pytest.raises(Interrupt):
        dmd_distillation(_tiny_teacher(), TINY, data, cfg, tmp_path / "B", on_log=on_log)
    assert (tmp_path / "B" / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    interrupt, seen[:] = False, []
    resumed = dmd_distillation(_tiny_teacher(), TINY, data, cfg, tmp_path / "B", on_log=on_log)
    assert seen == [5, 6]
    wa, wb = load_file(str(full / "net.safetensors")), load_file(str(resumed / "net.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not (tmp_path / "B" / "checkpoints").exists()
    teacher_w = _tiny_teacher().net.state_dict()
    assert any(not torch.equal(v, teacher_w[k]) for k, v in wa.items())


def test_a_teacher_for_other_data_is_refused(tmp_path):
    folder = save_model(_tiny_teacher().net, TINY, tmp_path / "teacher")
    teacher, spec = load_teacher(folder, (2,))
    with pytest.raises(DistillationError, match="shape"):
        dmd_distillation(teacher, spec, torch.randn(16, 3), DMDConfig(device="cpu", progress=False),
                         tmp_path / "out")
    assert not (tmp_path / "out").exists()

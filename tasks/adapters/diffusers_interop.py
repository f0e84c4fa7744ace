"""What a diffusers user needs to sample a release: the diffusers scheduler that walks the same
noise levels with the same update as the model's served sampler, its `scheduler_config.json`,
and the one convention dmops and diffusers' EDM schedulers do not share.

The convention: dmops conditions its network on c_noise = 1000 * ln(sigma) / 4 (DDPM's 0..1000
timestep scale, which diffusers' sinusoidal embedding is built for; diffusion/objectives.py).
diffusers' `CMStochasticIterativeScheduler` hands the network exactly that, but its EDM schedulers
(`EDMEulerScheduler`, `EDMDPMSolverMultistepScheduler`) hand it ln(sigma) / 4: their timesteps
must be multiplied by 1000 before they reach the UNet, or the samples are silently wrong (FID
10.3 instead of 0.682, measured on a quick-profile digits release).  No setting of diffusers'
UNet2DModel or of those schedulers rescales it, so the card's snippet does it in one visible line.

Which scheduler (`diffusers_scheduler`):

| served by dmops                         | diffusers scheduler                      | same path |
|-----------------------------------------|------------------------------------------|-----------|
| `ddim` (eta 0), EDM network             | EDMEulerScheduler                        | yes       |
| `dpmpp_2m`, EDM network                 | EDMDPMSolverMultistepScheduler (2M, ++)  | yes       |
| `consistency`, consistency student      | CMStochasticIterativeScheduler           | yes       |
| `heun`, `ddpm`, `ipndm`, DDIM eta > 0  | EDMDPMSolverMultistepScheduler, same NFE | no        |

"Same path" means: from the same starting noise the two give the same samples up to float32
rounding (tests/test_diffusers_interop.py).  Progressive students and consistency students
sample on the nested Karras grid (sigma_i at i/N of the ramp, never sigma_min itself):
diffusers' Karras ramp runs from 0 to 1 inclusive, so the config's `sigma_min` is set to the
nested grid's last positive sigma, which makes `set_timesteps(N)` give exactly that grid; the
consistency scheduler instead gets the `num_train_timesteps` whose spacing is i/N.  A VP
network, another grid, or a network other than diffusers' UNet2DModel gets no scheduler (None).

Nothing here imports diffusers: the config is written as the JSON `save_config` would write.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # model.py imports torch; writing a config does not need it
    from diffusion.model import ModelSpec

# where the release keeps it: `<Scheduler>.from_pretrained(folder, subfolder="scheduler")`
SCHEDULER_CONFIG = "scheduler/scheduler_config.json"

EULER = "EDMEulerScheduler"
DPM_SOLVER = "EDMDPMSolverMultistepScheduler"
CONSISTENCY = "CMStochasticIterativeScheduler"
SAMPLER_NAMES = {"ddim": "DDIM", "dpmpp_2m": "DPM-Solver++(2M)", "heun": "EDM's Heun (2nd order)",
                 "ipndm": "iPNDM, 4th-order multistep", "ddpm": "DDPM (ancestral)",
                 "consistency": "multistep consistency sampling"}


@dataclass(frozen=True)
class DiffusersScheduler:
    """The diffusers scheduler for a model's served sampling.

    class_name: the diffusers class; config: its constructor arguments (what
    scheduler_config.json holds besides `_class_name`); steps: the `num_inference_steps` to give
    `set_timesteps`; timestep_scale: what the scheduler's timesteps are multiplied by before they
    reach the network (1000 for the EDM schedulers, 1 for the consistency scheduler); exact:
    whether it takes the same sampling path as dmops' served sampler; note: one sentence saying
    which sampler it is, or why it is not the served one."""
    class_name: str
    config: dict
    steps: int
    timestep_scale: float
    exact: bool
    note: str

    def config_json(self) -> str:
        """scheduler_config.json: the config with `_class_name` and the installed diffusers'
        version, as diffusers' own `save_config` writes it."""
        try:
            version = metadata.version("diffusers")
        except metadata.PackageNotFoundError:  # the config does not depend on it
            version = None
        record = {"_class_name": self.class_name, **self.config}
        if version:
            record["_diffusers_version"] = version
        return json.dumps(record, indent=2, sort_keys=True) + "\n"


def _karras_point(u: float, sigma_min: float, sigma_max: float, rho: float) -> float:
    """The Karras ramp (EDM eq. 5) at u in [0, 1]: sigma_max at 0, sigma_min at 1."""
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    return (hi + u * (lo - hi)) ** rho


def _grid_sigma_min(grid: str, steps: int, sigma_min: float, sigma_max: float,
                    rho: float) -> float | None:
    """The `sigma_min` that makes diffusers' Karras ramp (linspace(0, 1, N), both ends
    included) give dmops' grid at `steps` steps; None for a grid it cannot give."""
    if grid == "karras":
        return sigma_min
    if grid == "karras_nested":
        # the nested grid stops at u = (N-1)/N; with N = 1 diffusers' ramp is [0]: sigma_max only
        return _karras_point((steps - 1) / steps, sigma_min, sigma_max, rho) if steps > 1 else sigma_min
    return None


def _edm_config(sigma_min: float, sigma_max: float, sigma_data: float, rho: float) -> dict:
    # prediction_type "epsilon" is diffusers' name for EDM's F-prediction: c_out = +sigma *
    # sigma_data / sqrt(sigma^2 + sigma_data^2), as dmops' EDMPreconditioning
    return {"sigma_min": sigma_min, "sigma_max": sigma_max, "sigma_data": sigma_data,
            "sigma_schedule": "karras", "rho": rho, "prediction_type": "epsilon",
            "final_sigmas_type": "zero", "num_train_timesteps": 1000}


def _dpm_solver_config(edm: dict) -> dict:
    return {**edm, "solver_order": 2, "algorithm_type": "dpmsolver++", "solver_type": "midpoint",
            "lower_order_final": True, "euler_at_final": False, "thresholding": False}


def _timestep_scale() -> float:
    from diffusion.objectives import TIMESTEP_SCALE   # torch: only once a spec is at hand

    return float(TIMESTEP_SCALE)


def diffusers_scheduler(spec: ModelSpec) -> DiffusersScheduler | None:
    """The diffusers scheduler (class and config) that samples the model of `spec` (its
    model.json) as dmops serves it (`spec.sampling`), or None when diffusers has none for it:
    a network other than the UNet (no diffusers `unet/` folder), a VP preconditioning, or a
    grid other than Karras / nested Karras.  See the module docstring for the mapping."""
    if spec.net.get("kind") != "unet":
        return None
    precond, s = spec.precond, spec.sampling
    kind = precond.get("kind")
    sigma_data = float(precond.get("sigma_data", 0.5))
    scale = _timestep_scale()
    if kind == "consistency":
        sigma_min = float(precond.get("sigma_min", s.sigma_min))
        if s.sampler != "consistency" or s.grid != "karras_nested" or s.sigma_min != sigma_min:
            return None
        # set_timesteps(N) walks ramp i * (T // N) / (T - 1): with T = lcm of every step
        # count the student supports, plus 1, that is i / N for each of them
        supported = [int(k) for k in (spec.distillation or {}).get("supported_steps", [])]
        train_timesteps = math.lcm(s.steps, *supported) + 1
        config = {"sigma_min": sigma_min, "sigma_max": s.sigma_max, "sigma_data": sigma_data,
                  "rho": s.rho, "num_train_timesteps": train_timesteps, "s_noise": 1.0,
                  # dmops does not clip the consistency function's output
                  "clip_denoised": False}
        steps_note = (f"; set_timesteps also takes {', '.join(map(str, sorted(set(supported))))}"
                      if len(set(supported)) > 1 else "")
        # sigma_to_t of this scheduler is 1000 * 0.25 * ln(sigma): dmops' convention already
        return DiffusersScheduler(CONSISTENCY, config, s.steps, 1.0, True,
                                  f"the same multistep consistency sampling as dmops{steps_note}")
    if kind != "edm":
        return None
    grid_min = _grid_sigma_min(s.grid, s.steps, s.sigma_min, s.sigma_max, s.rho)
    if grid_min is None:
        return None
    edm = _edm_config(grid_min, s.sigma_max, sigma_data, s.rho)
    if s.sampler == "ddim" and s.eta == 0:
        return DiffusersScheduler(EULER, edm, s.steps, scale, True,
                                  "DDIM with eta 0 is Euler's method on the probability-flow ODE")
    if s.sampler == "dpmpp_2m":
        return DiffusersScheduler(DPM_SOLVER, _dpm_solver_config(edm), s.steps, scale, True,
                                  "the same DPM-Solver++(2M) as dmops")
    from diffusion.samplers import nfe_for

    nfe = nfe_for(s.sampler, s.steps)
    served = f"`{s.sampler}`" + (f" with eta {s.eta:g}" if s.sampler == "ddim" else
                                 f" ({SAMPLER_NAMES.get(s.sampler, s.sampler)})")
    edm = _edm_config(_grid_sigma_min(s.grid, nfe, s.sigma_min, s.sigma_max, s.rho),
                      s.sigma_max, sigma_data, s.rho)
    return DiffusersScheduler(
        DPM_SOLVER, _dpm_solver_config(edm), nfe, scale, False,
        f"diffusers has no scheduler for dmops' {served}; this is DPM-Solver++(2M) at the same "
        f"{nfe} network evaluations: other samples than dmops' and not the sampler the numbers "
        "above were measured with")


def diffusers_snippet(choice: DiffusersScheduler, shape, folder: str, n: int = 16,
                      seed: int = 0) -> str:
    """Python code that samples `n` images of `shape` (C, H, W) with diffusers alone from the
    release files in `folder` (as read_release writes them), from the noise dmops draws for
    `seed`: with an exact `choice` it leaves in `x` what `dmops sample --seed` samples, up to
    float32 rounding."""
    call = "t * 1000" if choice.timestep_scale == 1000 else (
        "t" if choice.timestep_scale == 1 else f"t * {choice.timestep_scale:g}")
    lines = [
        "import torch",
        f"from diffusers import {choice.class_name}, UNet2DModel",
        "",
        f"folder = {folder!r}  # the release's files, as read_release writes them",
        "# safetensors only (never a pickle); low_cpu_mem_usage=False: what diffusers falls",
        "# back to, with a warning, where accelerate is not installed",
        "unet = UNet2DModel.from_pretrained(folder, subfolder=\"unet\", use_safetensors=True,",
        "                                   low_cpu_mem_usage=False).eval()",
        f"scheduler = {choice.class_name}.from_pretrained(folder, subfolder=\"scheduler\")",
        f"scheduler.set_timesteps({choice.steps})",
        f"generator = torch.Generator().manual_seed({seed})",
    ]
    if choice.class_name != CONSISTENCY:
        lines += ["# dmops starts from noise of std sigma_max; this scheduler's init_noise_sigma",
                  "# is sqrt(sigma_max^2 + 1)"]
    lines += [
        f"x = torch.randn(({n}, {', '.join(map(str, shape))}), generator=generator) "
        "* scheduler.config.sigma_max",
        "with torch.no_grad():",
        "    for t in scheduler.timesteps:",
    ]
    if choice.timestep_scale != 1:
        lines += ["        # the network is conditioned on 1000 * ln(sigma) / 4; this scheduler's",
                  "        # timesteps are ln(sigma) / 4: without the factor, samples are wrong"]
    else:
        lines += ["        # this scheduler's timesteps are 1000 * ln(sigma) / 4, the network's own"]
    lines += [f"        model_output = unet(scheduler.scale_model_input(x, t), {call}).sample",
              "        x = scheduler.step(model_output, t, x, generator=generator).prev_sample"]
    return "\n".join(lines)

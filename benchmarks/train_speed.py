"""How fast does our trainer train, and what does it cost over a bare PyTorch loop?

Measures, on one device and for one network (by default the quick profile's digits UNet):

1. trainer overhead: ms/step of `diffusion.train.train` (EMA, gradient clipping, per-step
   generators, lr warm-up, loss logging; progress bar off, and once more with it on) against
   a bare loop on the same network, batch size, objective (EDM preconditioning, lognormal
   sigma, edm weighting), optimiser and autocast setting.  The bare loop does per step:
   batch indices + sigma + noise, `denoising_loss`, backward, AdamW step; nothing else.
2. throughput: training images/s of our trainer (batch * 1000 / ms per step).

Every measurement builds the network afresh after `torch.manual_seed(--seed)`, so all runs
start from identical weights.  Runs alternate (bare, ours, ours+progress, in an order that
rotates from repeat to repeat) and the table reports medians over `--repeats`, so that a
load that comes and goes (another process on the same cores) hits all of them alike.

    python benchmarks/train_speed.py                      # cuda if available, else cpu
    python benchmarks/train_speed.py --device cpu --steps 40 --repeats 3
    python benchmarks/train_speed.py --profile quick --channels 64,128 --json out.json

The markdown table is printed to stdout and written to --out
(default benchmarks/results/train_speed_<device>.md); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a plain script from a checkout, installed or not
    sys.path.insert(0, str(ROOT))

from diffusion.config import Config, ConfigError, load_config  # noqa: E402
from diffusion.data import load_dataset  # noqa: E402
from diffusion.model import ModelError, ModelSpec, build_denoiser  # noqa: E402
from diffusion.nets import count_parameters  # noqa: E402
from diffusion.objectives import EDMPreconditioning, denoising_loss, weight_edm  # noqa: E402
from diffusion.train import EMA, TrainConfig, step_generator, train  # noqa: E402

RUNS = ("bare", "ours", "ours_progress")


def log(msg: str):
    print(f"[train_speed] {msg}", file=sys.stderr, flush=True)


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- setup -------------------------------------------------------------------

def load_profile(args) -> Config:
    """The profile's config when params.yaml exists and --profile is given, else the defaults
    (which are the quick profile's digits UNet)."""
    if args.profile is None:
        return Config()
    path = Path(args.config)
    if not path.exists():
        log(f"{path} not found: using the built-in defaults instead of profile {args.profile!r}")
        return Config()
    try:
        return load_config(path, profile=args.profile)
    except ConfigError as e:
        raise SystemExit(f"train_speed: {e}") from None


def make_spec(cfg: Config, sample_shape, channels: list[int] | None) -> ModelSpec:
    spec = cfg.model_spec(tuple(sample_shape))
    if channels:
        if spec.net["kind"] != "unet":
            raise SystemExit("train_speed: --channels applies to a UNet; this profile's net is "
                             f"{spec.net['kind']!r}")
        spec = spec.model_copy(update={"net": {**spec.net, "channels": channels}})
    if spec.precond["kind"] != "edm":
        log(f"profile's preconditioning is {spec.precond['kind']!r}; benchmarking with EDM "
            "(the objective both loops share)")
        spec = spec.model_copy(update={"precond": {"kind": "edm", "sigma_data": 0.5}})
    return spec


def build(spec: ModelSpec, seed: int, device: torch.device):
    torch.manual_seed(seed)
    try:
        return build_denoiser(spec).to(device).train()
    except ModelError as e:
        raise SystemExit(f"train_speed: {e}") from None


# --- the two loops -----------------------------------------------------------

def time_bare(spec, data, tcfg: TrainConfig, warmup: int, steps: int, amp: bool, seed: int,
              device: torch.device) -> float:
    """ms/step of the bare loop: indices, sigma, noise, loss, backward, AdamW; no EMA, no
    clipping, no logging, no checkpoints."""
    denoiser = build(spec, seed, device)
    net, n, b = denoiser.net, len(data), tcfg.batch_size
    obj = tcfg.objective
    sigma_data = denoiser.precond.sigma_data
    opt = torch.optim.AdamW(net.parameters(), lr=tcfg.lr, betas=tuple(tcfg.betas),
                            weight_decay=tcfg.weight_decay)

    def step():
        idx = torch.randint(n, (b,), device=device)
        x0 = data[idx]
        # ln sigma ~ N(p_mean, p_std^2), as objectives.sample_sigma_lognormal draws it, but
        # drawn on the device: that function draws on the CPU and copies, a host-to-device
        # copy per step that a bare loop has no reason to pay
        sigma = torch.exp(obj.p_mean + obj.p_std * torch.randn(b, device=device, dtype=torch.float64))
        eps = torch.randn_like(x0)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = denoising_loss(denoiser, x0, sigma, eps, weight_edm(sigma, sigma_data=sigma_data))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return (time.perf_counter() - t0) * 1000 / steps


def time_ours(spec, data, tcfg: TrainConfig, warmup: int, steps: int, progress: bool, seed: int,
              device: torch.device) -> tuple[float, float]:
    """ms/step of diffusion.train.train over its steps warmup+1 .. warmup+steps.

    How only the steps are timed: one train() call runs warmup+steps steps with
    log_every=warmup, and its on_log hook (called inside the loop, after the optimiser step and
    EMA update of a logged step) takes a timestamp at step `warmup` and at the last step.  The
    difference covers exactly `steps` whole iterations of the loop as a user gets them, with
    their loss logging, and none of train()'s set-up (optimiser, EMA copy, data transfer,
    finiteness check) nor the one checkpoint it writes after the last step
    (checkpoint_every = total steps, into a temporary folder; spec=None so no model export).
    One caveat: logging every `warmup` steps (10 by default) instead of the usual 50 adds a
    few more loss read-backs, which on CUDA are syncs; each costs well under a step.

    Returns (ms/step, train()'s wall time in seconds, set-up and checkpoint included)."""
    denoiser = build(spec, seed, device)
    total = warmup + steps
    cfg = TrainConfig(**{**_train_kwargs(tcfg), "steps": total, "log_every": warmup,
                         "checkpoint_every": total, "progress": progress})
    stamps: dict[int, float] = {}

    def on_log(step, _metrics):
        sync(device)
        stamps[step] = time.perf_counter()

    with tempfile.TemporaryDirectory(prefix="train_speed-") as out_dir:
        t0 = time.perf_counter()
        train(denoiser, data, cfg, out_dir, spec=None, resume=False, on_log=on_log)
        wall = time.perf_counter() - t0
    return (stamps[total] - stamps[warmup]) * 1000 / steps, wall


def breakdown(spec, data, tcfg: TrainConfig, amp: bool, seed: int, device: torch.device,
              calls: int = 50) -> dict[str, float]:
    """ms per call of what the trainer does per step beyond the bare loop (and, for scale, of
    the work both loops share), each timed alone on a network that has gradients.  Each is
    the median over 5 batches of calls/5 back-to-back calls (synchronised on CUDA)."""
    denoiser = build(spec, seed, device)
    net, b = denoiser.net, tcfg.batch_size
    opt = torch.optim.AdamW(net.parameters(), lr=tcfg.lr, betas=tuple(tcfg.betas),
                            weight_decay=tcfg.weight_decay)
    ema = EMA(net, tcfg.ema_decay, tcfg.ema_warmup)

    def fwd_bwd():
        idx = torch.randint(len(data), (b,), device=device)
        x0 = data[idx]
        z = torch.randn(b, device=device, dtype=torch.float64)
        sigma = torch.exp(tcfg.objective.p_mean + tcfg.objective.p_std * z)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = denoising_loss(denoiser, x0, sigma, torch.randn_like(x0),
                                  weight_edm(sigma, sigma_data=denoiser.precond.sigma_data))
        opt.zero_grad(set_to_none=True)
        loss.backward()

    fwd_bwd()
    clip = tcfg.grad_clip if tcfg.grad_clip > 0 else float("inf")  # as train() calls it
    parts = {
        "draws + forward + backward (both)": fwd_bwd,
        "AdamW step (both)": opt.step,
        "EMA update (ours)": lambda: ema.update(net, 1000),
        "EMA update: its net.state_dict() call (ours)": net.state_dict,
        "clip_grad_norm_ (ours)": lambda: nn.utils.clip_grad_norm_(net.parameters(), clip),
        "step_generator (ours)": lambda: step_generator(tcfg.seed, 0, 1, device),
    }
    out = {}
    for name, f in parts.items():
        n = 2 if "forward" in name else max(5, calls // 5)
        for _ in range(3):
            f()
        batches = []
        for _ in range(5):
            sync(device)
            t0 = time.perf_counter()
            for _ in range(n):
                f()
            sync(device)
            batches.append((time.perf_counter() - t0) * 1000 / n)
        out[name] = statistics.median(batches)
        log(f"  breakdown: {name}: {out[name]:.3f} ms")
    return out


def _train_kwargs(tcfg: TrainConfig) -> dict:
    return tcfg.model_dump()  # TrainConfig is a pydantic model: its dump rebuilds it


# --- reporting -----------------------------------------------------------------

def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    n = torch.get_num_threads()
    return f"cpu ({platform.processor() or platform.machine()}, {n} thread{'s' * (n != 1)})"


def fmt(x: float | None, digits: int = 1) -> str:
    return "failed" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def markdown(r: dict) -> str:
    cols = ["device", "torch", "net params", "batch", "amp", "bare ms/step",
            "ours ms/step (progress off)", "ours ms/step (progress on)", "overhead %",
            "images/s"]
    ms = r["median_ms"]
    row = [r["device"], r["torch"], f"{r['net_params']:,}", str(r["batch_size"]), r["amp"],
           fmt(ms["bare"], 2), fmt(ms["ours"], 2), fmt(ms["ours_progress"], 2),
           fmt(r["overhead_pct"]), fmt(r["images_per_s"], 0)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols), "| " + " | ".join(row) + " |",
             "",
             f"net: {r['net']}; steps timed: {r['steps']} after {r['warmup']} warm-up, "
             f"{r['repeats']} repeats, median shown; overhead = ours (progress off) / bare - 1 "
             f"(target <= {r['target_pct']:.0f} %); with progress bar: "
             f"{fmt(r['overhead_progress_pct'])} %."]
    per = r["per_repeat_ms"]
    lines.append("per repeat ms/step: " + "; ".join(
        f"{k} " + ", ".join(fmt(v, 1) for v in per[k]) for k in RUNS)
        + f". Fastest run of each: overhead {fmt(r['overhead_pct_min'])} %; "
        f"median of per-repeat ratios: {fmt(r['overhead_pct_paired_median'])} %.")
    if r.get("noisy"):
        lines.append(f"NOISY: {r['noisy']}")
    if r.get("breakdown_ms"):
        step = r["median_ms"]["bare"]
        lines += ["", "| per step | ms | % of a bare step |", "|---|---|---|"]
        lines += [f"| {k} | {v:.3f} | {fmt(v / step * 100)} |" for k, v in r["breakdown_ms"].items()]
        lines.append("")
    if r.get("errors"):
        lines.append("errors: " + "; ".join(r["errors"]))
    return "\n".join(lines) + "\n"


# --- main ----------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Trainer overhead (ours vs a bare PyTorch loop) and training throughput.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", choices=("cpu", "cuda"), default=None,
                   help="default: cuda if available, else cpu")
    p.add_argument("--amp", choices=("bf16", "off"), default=None,
                   help="bf16 autocast for both loops; default: bf16 on cuda, off on cpu")
    p.add_argument("--batch-size", type=int, default=None,
                   help="default: the profile's train.batch_size (128 for the built-in config)")
    p.add_argument("--channels", default=None, help="override the UNet's channels, e.g. 64,128")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per run; default 60 on cpu, 200 on cuda")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps before the timed ones")
    p.add_argument("--repeats", type=int, default=3, help="alternating repeats; medians are reported")
    p.add_argument("--profile", default=None,
                   help="take net and training settings from this profile of --config")
    p.add_argument("--config", default=str(ROOT / "params.yaml"), help="params.yaml to read --profile from")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (cpu)")
    p.add_argument("--seed", type=int, default=0, help="torch.manual_seed before building each net")
    p.add_argument("--target", type=float, default=10.0, help="overhead target in %%")
    p.add_argument("--breakdown", action="store_true",
                   help="also time the trainer's per-step extras (EMA, clipping, generator) alone")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")
    p.add_argument("--out", default=None, metavar="PATH",
                   help="markdown file to write; default benchmarks/results/train_speed_<device>.md")
    args = p.parse_args(argv)
    for name in ("batch_size", "steps", "warmup", "repeats", "threads"):
        v = getattr(args, name)
        if v is not None and v < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.channels is not None:
        try:
            args.channels = [int(c) for c in args.channels.split(",") if c.strip()]
        except ValueError:
            p.error(f"--channels must be comma-separated integers, got {args.channels!r}")
        if not args.channels or min(args.channels) < 1:
            p.error("--channels needs at least one positive integer")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: CUDA is not available here")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    amp_name = args.amp or ("bf16" if device.type == "cuda" else "off")
    amp = amp_name == "bf16"
    steps = args.steps or (200 if device.type == "cuda" else 60)

    cfg = load_profile(args)
    ds = load_dataset(cfg.data.name, **cfg.data.loader_options()).subset("train")
    data = ds.x.to(device)
    spec = make_spec(cfg, ds.sample_shape, args.channels)
    tcfg = TrainConfig(**{**_train_kwargs(cfg.train), "device": device.type, "amp": amp_name,
                          "batch_size": args.batch_size or cfg.train.batch_size,
                          "objective": {**_train_kwargs(cfg.train)["objective"],
                                        "weighting": "edm", "sigma_sampling": "lognormal"}})
    denoiser = build(spec, args.seed, device)
    assert isinstance(denoiser.precond, EDMPreconditioning)
    n_params = count_parameters(denoiser.net)
    del denoiser
    log(f"{device_label(device)}, torch {torch.__version__}, net {spec.net} "
        f"({n_params:,} params), batch {tcfg.batch_size}, amp {amp_name}, data {tuple(data.shape)}")

    per: dict[str, list[float]] = {k: [] for k in RUNS}
    walls, errors = [], []
    for rep in range(args.repeats):
        order = RUNS[rep % 3:] + RUNS[:rep % 3]
        for kind in order:
            log(f"repeat {rep + 1}/{args.repeats}: {kind} ({args.warmup} + {steps} steps) ...")
            try:
                if kind == "bare":
                    ms = time_bare(spec, data, tcfg, args.warmup, steps, amp, args.seed, device)
                else:
                    ms, wall = time_ours(spec, data, tcfg, args.warmup, steps,
                                         kind == "ours_progress", args.seed, device)
                    walls.append(wall)
            except Exception as e:  # noqa: BLE001 - report it in the table, keep measuring
                msg = f"{kind}: {type(e).__name__}: {e}"
                log(msg)
                if msg not in errors:
                    errors.append(msg)
                ms = float("nan")
            per[kind].append(ms)
            log(f"  {kind}: {fmt(ms, 2)} ms/step")

    def median(xs):
        xs = [x for x in xs if math.isfinite(x)]
        return statistics.median(xs) if xs else float("nan")

    med = {k: median(v) for k, v in per.items()}
    overhead = (med["ours"] / med["bare"] - 1) * 100
    result = {
        "device": device_label(device), "torch": torch.__version__, "python": platform.python_version(),
        "net": spec.net, "net_params": n_params, "batch_size": tcfg.batch_size, "amp": amp_name,
        "steps": steps, "warmup": args.warmup, "repeats": args.repeats,
        "threads": torch.get_num_threads(), "load_avg": list(os.getloadavg()),
        "median_ms": med, "per_repeat_ms": per,
        "overhead_pct": overhead,
        "overhead_progress_pct": (med["ours_progress"] / med["bare"] - 1) * 100,
        # paired ratio per repeat: less sensitive to a load that changes between repeats
        "overhead_pct_paired_median": (median([o / b for o, b in zip(per["ours"], per["bare"])]) - 1) * 100,
        # the fastest run of each: under load that comes and goes (noise only ever adds time),
        # the least disturbed estimate
        "min_ms": {k: min((x for x in v if math.isfinite(x)), default=float("nan"))
                   for k, v in per.items()},
        "images_per_s": tcfg.batch_size * 1000 / med["ours"],
        "train_wall_s": walls, "target_pct": args.target, "errors": errors,
    }
    if args.breakdown:
        log("breakdown ...")
        result["breakdown_ms"] = breakdown(spec, data, tcfg, amp, args.seed, device)
    mins = result["min_ms"]
    result["overhead_pct_min"] = (mins["ours"] / mins["bare"] - 1) * 100
    spread = {k: max(v) / min(v) for k, v in per.items()
              if len(v) > 1 and all(math.isfinite(x) for x in v)}
    wild = {k: x for k, x in spread.items() if x > 1.25}
    result["noisy"] = ("runs of the same loop differ by up to "
                       + ", ".join(f"{k} {x:.2f}x" for k, x in wild.items())
                       + f" (load average {result['load_avg'][0]:.1f} on {os.cpu_count()} CPUs, "
                       "this process included): the timings are noisy; the overhead is only "
                       "trustworthy to about that spread. Rerun on an idle machine or raise --repeats"
                       ) if wild else ""
    if wild:
        log("NOISY: " + result["noisy"])
    table = markdown(result)
    print(table, end="")
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"train_speed_{device.type}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table)
    log(f"wrote {out}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
        log(f"wrote {args.json}")
    if errors:
        return 1
    if math.isfinite(overhead) and overhead > args.target:
        log(f"overhead {overhead:.1f} % is above the {args.target:.0f} % target")
    return 0


if __name__ == "__main__":
    sys.exit(main())

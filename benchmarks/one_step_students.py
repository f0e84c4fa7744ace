"""One-step students beside their teacher: consistency distillation and distribution matching
(DMD), on churn (rows scored like benchmarks/tabular_quality.py) and on the 8-mode ring (issue 14).

    .venv/bin/python benchmarks/one_step_students.py --threads 1          # churn and gmm8
    .venv/bin/python benchmarks/one_step_students.py --smoke --threads 1  # a check that it runs

churn (one-hot): the teacher of benchmarks/tabular_quality.py (its `load`, `make_config`,
`train_teacher`: MLP, EDM with sigma_data 1.0, `--steps` steps) sampled with DPM-Solver++(2M)
at 32 NFE; 1-step consistency students (diffusion/distill/consistency.py, `--distill-steps`
steps, one per `--cd-lr`: 1e-4 as params.yaml sets it, 1e-3 the library's default); a 1-step
DMD student (diffusion/distill/dmd.py, `--dmd-steps` generator steps, `--dmd-lr`).  Each generates the test split's number of rows,
scored by diffusion.tabular.metrics.evaluate_table against the real train rows (fidelity,
detection) and test rows (utility); the floor scores half of the test rows the same way.

gmm8: the 8-mode ring of diffusion/gmm.py, an MLP teacher (`--ring-steps`), both students;
figures: the largest deviation of a mode's share from 1/8, mean log-density of the samples
(true draws: about -1.10) and the number of modes holding at least 1/16 of the samples.

Markdown goes to stdout and to `--out` (default benchmarks/results/one_step_students.md; with
--smoke /tmp/one_step_students_smoke.md); progress to stderr.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a plain script from a checkout
    sys.path.insert(0, str(ROOT))

from benchmarks.tabular_quality import load, make_config, model_rows, train_teacher  # noqa: E402
from diffusion.distill.consistency import consistency_distillation  # noqa: E402
from diffusion.distill.dmd import dmd_distillation  # noqa: E402
from diffusion.distill.settings import ConsistencyConfig, DMDConfig  # noqa: E402
from diffusion.distill.shared import load_teacher  # noqa: E402
from diffusion.gmm import GaussianMixture  # noqa: E402
from diffusion.messages import show_messages  # noqa: E402
from diffusion.model import ModelSpec, build_denoiser, load_model  # noqa: E402
from diffusion.samplers import generate  # noqa: E402
from diffusion.tabular.metrics import evaluate_table, floor  # noqa: E402
from diffusion.tabular.vectors import table_vectors  # noqa: E402
from diffusion.train import TrainConfig, resolve_device, train  # noqa: E402

FULL = dict(steps=8000, batch_size=256, hidden=256, depth=3, distill_steps=2000, dmd_steps=1000,
            ring_steps=3000, ring_distill_steps=1000, table_rows=None)
SMOKE = dict(steps=60, batch_size=64, hidden=64, depth=2, distill_steps=20, dmd_steps=10,
             ring_steps=100, ring_distill_steps=10, table_rows=600)
FIGURES = [("column_shapes", "column shapes", True), ("column_pair_trends", "pair trends", True),
           ("utility_ratio", "utility", True), ("detection_auc", "detection AUC", False)]
STUDENT_GAP = 0.03  # issue 13: the 1-step student within 3 % of the teacher on each figure


def log(msg: str) -> None:
    print(f"[one_step_students] {msg}", file=sys.stderr, flush=True)


def dmd_config(args, steps: int, batch_size: int) -> DMDConfig:
    return DMDConfig(steps=steps, batch_size=batch_size, lr=args.dmd_lr,
                     fake_updates=args.fake_updates, checkpoint_every=steps,
                     log_every=max(1, steps // 5), seed=args.seed, device=args.device,
                     progress=False)


def timed(fn, *a, **kw):
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t0


# --- churn -------------------------------------------------------------------------------------

def churn(args, work: Path) -> list[str]:
    tds = load("churn", args.seed, args.table_rows)
    ds = table_vectors(tds, "onehot")
    x = ds.subset("train").x
    train_rows, test_rows = tds.subset("train").table, tds.subset("test").table
    cfg = make_config(args)
    device = resolve_device(args.device)
    log(f"churn: D={x.shape[1]}, training the teacher ({args.steps} steps)")
    teacher_dir, teacher_s = train_teacher(ds, cfg, work)
    teacher, spec = load_teacher(teacher_dir, tuple(x.shape[1:]), device)
    cd_cfg: ConsistencyConfig = cfg.distill.consistency
    students = []
    for lr in args.cd_lr:
        log(f"churn: consistency distillation ({cd_cfg.steps} steps, lr {lr})")
        folder, secs = timed(consistency_distillation, teacher, spec, x,
                             cd_cfg.model_copy(update={"lr": lr}), work / f"consistency_{lr}",
                             resume=False)
        students.append((f"consistency 1-step (lr {lr:g})", folder, secs, 1))
    dmd_cfg = dmd_config(args, args.dmd_steps, args.batch_size)
    log(f"churn: DMD ({dmd_cfg.steps} generator steps, {dmd_cfg.fake_updates} fake updates each)")
    dmd_dir, dmd_s = timed(dmd_distillation, teacher, spec, x, dmd_cfg, work / "dmd", resume=False)
    students.append((f"DMD 1-step (lr {dmd_cfg.lr:g})", dmd_dir, dmd_s, 1))

    n = len(test_rows)
    results = [{"model": "floor (held-out real rows)",
                **floor(train_rows, test_rows, tds.schema, seed=args.seed, threads=args.threads).metrics}]
    for name, folder, train_s, steps in [("teacher dpmpp_2m", teacher_dir, teacher_s, None),
                                          *students]:
        rows, nfe, sample_s = model_rows(folder, n, seed=args.seed, device=device, steps=steps)
        metrics = evaluate_table(train_rows, test_rows, rows, tds.schema, seed=args.seed,
                                 threads=args.threads).metrics
        results.append({"model": name, "nfe": nfe, "train_s": train_s,
                        "rows_per_s": len(rows) / sample_s, **metrics})
        log(f"churn: {name} scored")
    cols = ["model", "NFE", *[label for _, label, _ in FIGURES], "time (s)", "rows/s"]
    lines = [f"## churn (one-hot, D = {x.shape[1]})", "",
             f"{len(tds.table):,} rows ({len(train_rows):,} train, {n:,} test rows generated per "
             f"model); teacher {args.steps} steps; consistency {cd_cfg.steps} steps "
             f"({cd_cfg.levels} levels, target decay {cd_cfg.target_decay}); DMD {dmd_cfg.steps} "
             f"generator steps ({dmd_cfg.fake_updates} fake updates each, regression weight "
             f"{dmd_cfg.regression_weight}, sigma_g "
             f"{dmd_cfg.generator_sigma}). Time: the teacher's training, a student's distillation "
             "alone.", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in results:
        cells = [r["model"], str(r.get("nfe", "-"))]
        cells += [f"{r[key]:.3f}" for key, _, _ in FIGURES]
        cells += [f"{r['train_s']:.0f}" if "train_s" in r else "-",
                  f"{r['rows_per_s']:,.0f}" if "rows_per_s" in r else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    teacher_row = results[1]
    lines.append("")
    for r in results[2:]:
        gaps = []
        for key, label, higher in FIGURES:
            t, v = teacher_row[key], r[key]
            gap = ((t - v) if higher else (v - t)) / abs(t)
            gaps.append(f"{label} {gap:+.1%} ({'met' if gap <= STUDENT_GAP else 'NOT met'})")
        lines.append(f"- {r['model']} worse than the teacher by: " + "; ".join(gaps))
    return lines + [""]


# --- gmm8 --------------------------------------------------------------------------------------

RING = GaussianMixture.ring(8, 2.0, 0.15)


def ring_figures(model, sampler: str, steps: int, **grid) -> dict:
    x = generate(model, (2,), 8000, sampler=sampler, steps=steps, seed=1, **grid).x
    weights = torch.bincount(RING.assign(x), minlength=8).double() / len(x)
    return {"max_dev": float((weights - 1 / 8).abs().max()), "logp": float(RING.log_prob(x).mean()),
            "modes": int((weights >= 1 / 16).sum())}


def gmm8(args, work: Path) -> list[str]:
    data = RING.sample(8192, torch.Generator().manual_seed(0))[0].float()
    spec = ModelSpec(net={"kind": "mlp", "dim": 2, "hidden": 128, "depth": 3},
                     precond={"kind": "edm", "sigma_data": 1.4}, data={"shape": (2,)})
    torch.manual_seed(args.seed)
    cfg = TrainConfig(steps=args.ring_steps, batch_size=256, lr=2e-3, ema_decay=0.995,
                      device="cpu", checkpoint_every=args.ring_steps, log_every=args.ring_steps,
                      progress=False, seed=args.seed)
    log(f"gmm8: training the teacher ({args.ring_steps} steps)")
    _, teacher_s = timed(train, build_denoiser(spec), data, cfg, work / "ring", spec=spec)
    teacher, tspec = load_teacher(work / "ring" / "model", (2,))
    k = args.ring_distill_steps
    cd_cfg = ConsistencyConfig(steps=k, batch_size=256, lr=5e-4, device="cpu", progress=False,
                               checkpoint_every=k, seed=args.seed)
    cd_dir, cd_s = timed(consistency_distillation, teacher, tspec, data, cd_cfg,
                         work / "ring_consistency", resume=False)
    dmd_cfg = dmd_config(args, k, 256).model_copy(update={"lr": 1e-3})
    dmd_dir, dmd_s = timed(dmd_distillation, teacher, tspec, data, dmd_cfg, work / "ring_dmd",
                           resume=False)
    rows = [("true draws", None, None, None), ("teacher heun", 35, teacher_s, (teacher, "heun", 18, {})),
            ("teacher ddim 1-step (from sigma 80)", 1, None, (teacher, "ddim", 1, {}))]
    cd, cd_spec = load_model(cd_dir)
    dmd, dmd_spec = load_model(dmd_dir)
    rows += [("consistency 1-step", 1, cd_s, (cd, "consistency", 1, {"grid": "karras_nested"})),
             ("DMD 1-step", 1, dmd_s, (dmd, "ddim", 1, {"sigma_max": dmd_spec.sampling.sigma_max}))]
    true_x = RING.sample(8000, torch.Generator().manual_seed(2))[0]
    lines = ["## gmm8 (the 8-mode ring, radius 2, mode std 0.15)", "",
             f"teacher: MLP 128 x 3, {args.ring_steps} steps; each student {k} steps (consistency "
             f"lr 5e-4; DMD lr 1e-3, {dmd_cfg.fake_updates} fake updates, regression weight "
             f"{dmd_cfg.regression_weight}); 8,000 samples each.", "",
             "| model | NFE | largest mode-share deviation | modes with >= 1/16 | mean log-density | time (s) |",
             "|---|---|---|---|---|---|"]
    for name, nfe, secs, run in rows:
        if run is None:
            f = {"max_dev": float("nan"), "modes": 8, "logp": float(RING.log_prob(true_x).mean())}
        else:
            model, sampler, steps, grid = run
            f = ring_figures(model, sampler, steps, **grid)
        lines.append(f"| {name} | {nfe or '-'} | "
                     f"{'-' if f['max_dev'] != f['max_dev'] else format(f['max_dev'], '.3f')} | "
                     f"{f['modes']} | {f['logp']:.2f} | {'-' if secs is None else format(secs, '.0f')} |")
    return lines + [""]


# --- main --------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("datasets", nargs="*", default=["churn", "gmm8"], help="churn, gmm8 (default both)")
    p.add_argument("--smoke", action="store_true", help=f"tiny budgets: {SMOKE}")
    for key in FULL:
        p.add_argument(f"--{key.replace('_', '-')}", type=int, help=f"default {FULL[key]}")
    p.add_argument("--lr", type=float, default=2e-3, help="teacher learning rate")
    p.add_argument("--cd-lr", type=float, action="append",
                   help="consistency learning rate, one student each (default: 1e-4, the rate "
                        "params.yaml sets, and 1e-3)")
    p.add_argument("--dmd-lr", type=float, default=1e-3, help="DMD learning rate (both networks)")
    p.add_argument("--fake-updates", type=int, default=5, help="DMD fake updates per G step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch threads and scoring threads")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    unknown = sorted(set(args.datasets) - {"churn", "gmm8"})
    if unknown:
        p.error(f"unknown dataset(s) {', '.join(unknown)}: choose churn and/or gmm8")
    for key, value in (SMOKE if args.smoke else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    # what benchmarks/tabular_quality.make_config reads besides these
    args.teacher_sampler, args.teacher_nfe, args.rows = "dpmpp_2m", 32, 5000
    args.cd_lr = args.cd_lr or [1e-4, 1e-3]
    if args.out is None:
        args.out = (Path(tempfile.gettempdir()) / "one_step_students_smoke.md" if args.smoke
                    else ROOT / "benchmarks" / "results" / "one_step_students.md")
    return args


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    show_messages(info="stderr")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads = args.threads or 1
    load1, load5, _ = os.getloadavg()
    text = ["# One-step students: consistency distillation and DMD beside the teacher", "",
            f"command: `{shlex.join(['.venv/bin/python', 'benchmarks/one_step_students.py', *argv])}`",
            f"date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; "
            f"{platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}; "
            f"load average at start {load1:.2f} (1 min), {load5:.2f} (5 min)"
            f"{'; SMOKE run' if args.smoke else ''}", ""]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="one_step_students-") as tmp:
        for name in args.datasets:
            section = (churn if name == "churn" else gmm8)(args, Path(tmp) / name)
            print("\n".join(section), flush=True)
            text += section
    text.append(f"total: {time.perf_counter() - started:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(text) + "\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Tabular quality: the diffusion teacher, its consistency student and a Gaussian-copula
baseline, scored as rows beside the held-out real floor, per built-in table (issue 13).

    .venv/bin/python benchmarks/tabular_quality.py --smoke --out /tmp/tabular_quality_smoke.md
    .venv/bin/python benchmarks/tabular_quality.py                        # diamonds and churn
    .venv/bin/python benchmarks/tabular_quality.py churn --categorical onehot --steps 6000

For each table (load_table, seeded split stratified on the target) and each categorical
encoding (`--categorical`, default all three: onehot and analog_bits, the pipeline's Gaussian
encodings, one teacher + student pair of rows each; multinomial, TabDDPM's multinomial
diffusion of benchmarks/tabular_multinomial.py with the same MLP and budget, a teacher row
alone, sampled by `--multinomial-steps` ancestral steps):

1. the rows are encoded by table_vectors (encoder fit on the train split);
2. a teacher -- the MLP denoiser with EDM preconditioning (sigma_data 1.0: the quantile
   transform makes numbers standard normal, one-hot categories are +-1) -- is trained on the
   train vectors by diffusion.train.train, from a Config built here (`--steps`,
   `--batch-size`, `--hidden`, `--depth`, `--lr`);
3. a consistency student is distilled from it by
   diffusion.distill.consistency.consistency_distillation (`--distill-steps`, other settings
   by `--consistency KEY=VALUE`);
4. the teacher (`--teacher-sampler` at `--teacher-nfe`, default dpmpp_2m at 32 NFE), the
   student (at each of `--student-steps`, default 1 and 2) and, once per table, the
   Gaussian copula of benchmarks/tabular_baseline.py (copulas' GaussianMultivariate fit on
   the train rows) each generate as many rows as the test
   split holds (at most `--rows`), decoded to the table's columns and dtypes;
   the teacher also once more with the next sampling seed (the row "teacher again, sampling
   seed": how far each figure moves by chance alone, quoted beside the student's gaps);
5. diffusion.tabular.metrics.evaluate_table scores each against the real train and test rows,
   and floor() scores half of the test rows the same way (what a perfect generator gets).

The table per dataset: model, NFE, column shapes, pair trends, utility (synthetic-trained over
real-trained), detection AUC, DCR ratio, training time (teacher: training; student: its
distillation alone; copula: its fit) and rows per second (sampling and decoding).  Under it,
the issue's targets, each marked met / not met.  Markdown goes to stdout and to `--out`
(default benchmarks/results/tabular_quality.md; with --smoke /tmp/tabular_quality_smoke.md,
so a smoke run never lands in the results); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a plain script from a checkout
    sys.path.insert(0, str(ROOT))

from benchmarks.tabular_baseline import CopulaBaseline  # noqa: E402
from benchmarks.tabular_multinomial import multinomial_rows, train_multinomial  # noqa: E402
from diffusion.config import Config  # noqa: E402
from diffusion.data import DataError  # noqa: E402
from diffusion.distill.consistency import consistency_distillation  # noqa: E402
from diffusion.distill.shared import load_teacher  # noqa: E402
from diffusion.messages import show_messages  # noqa: E402
from diffusion.model import build_denoiser, load_for_sampling  # noqa: E402
from diffusion.samplers import SAMPLERS, generate, grid_options, nfe_for, steps_for_nfe  # noqa: E402
from diffusion.tabular.metrics import TableEvaluationError, evaluate_table, floor  # noqa: E402
from diffusion.tabular.tables import BUILTINS, TableDataset, load_table  # noqa: E402
from diffusion.tabular.vectors import decode, table_vectors  # noqa: E402
from diffusion.train import resolve_device, train  # noqa: E402

# onehot / analog_bits: categories in the Gaussian sigma space (the pipeline's encodings);
# multinomial: TabDDPM's multinomial diffusion (benchmarks/tabular_multinomial.py), teacher only
ENCODINGS = ("onehot", "analog_bits", "multinomial")
# issue 13's targets: (metric key, label, bound, higher is better)
TARGETS = [("column_shapes", "column shapes", 0.97, True),
           ("column_pair_trends", "pair trends", 0.95, True),
           ("utility_ratio", "utility", 0.95, True),
           ("detection_auc", "detection AUC", 0.75, False)]
STUDENT_GAP = 0.03   # the student within 3 % of the teacher on each figure
NOISE_ROW = "teacher again, sampling seed"   # the teacher's row with other sampling noise
# budgets: the full run aims at about 10 minutes per table on 2 loaded CPU cores (both
# encodings); the smoke run at a couple of minutes for both tables
# (measured on churn, 1 thread of a loaded 2-core machine: a teacher step of this MLP at batch
# 256 takes about 16 ms, a distillation step about 27 ms; scoring one model's 5,000 rows
# against diamonds' 37,758 train rows takes tens of seconds, six times per table)
FULL = dict(steps=8000, batch_size=256, hidden=256, depth=3, distill_steps=4000, rows=5000,
            table_rows=None)
SMOKE = dict(steps=50, batch_size=64, hidden=64, depth=2, distill_steps=20, rows=200,
             table_rows=600)


def log(msg: str) -> None:
    print(f"[tabular_quality] {msg}", file=sys.stderr, flush=True)


# --- data ------------------------------------------------------------------------------------

def load(name: str, seed: int, table_rows: int | None) -> TableDataset:
    """The table `name` (built-in or a .csv/.parquet path) with its seeded, stratified split;
    with `table_rows`, a seeded random subset of that many rows that keeps each row's split
    (the split's shares hold to sampling noise)."""
    tds = load_table(name, seed=seed)
    if table_rows is None or table_rows >= len(tds.table):
        return tds
    keep = np.sort(np.random.default_rng(seed).choice(len(tds.table), table_rows, replace=False))
    return dataclasses.replace(tds, table=tds.table.iloc[keep].reset_index(drop=True),
                               split=tds.split[keep], ids=[tds.ids[i] for i in keep])


def make_config(args) -> Config:
    """The teacher's and student's settings as one validated Config: MLP denoiser, EDM
    preconditioning with sigma_data 1.0, the budgets of `args`, the teacher's sampling."""
    warmup = min(100, max(1, args.steps // 10))
    return Config.model_validate({
        "model": {"net": {"kind": "mlp", "hidden": args.hidden, "depth": args.depth},
                  "precond": {"kind": "edm", "sigma_data": 1.0}},
        "train": {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
                  "lr_warmup_steps": warmup, "checkpoint_every": args.steps,
                  "log_every": max(1, args.steps // 5), "seed": args.seed, "device": args.device,
                  "progress": False,
                  # EDM's noise-level distribution, ln sigma ~ N(p_mean, p_std^2)
                  "objective": {"p_mean": getattr(args, "p_mean", -1.2),
                                "p_std": getattr(args, "p_std", 1.2)}},
        "sample": {"sampler": args.teacher_sampler,
                   "steps": steps_for_nfe(args.teacher_sampler, args.teacher_nfe)},
        "distill": {"consistency": {"steps": args.distill_steps, "batch_size": args.batch_size,
                                    "checkpoint_every": args.distill_steps,
                                    "log_every": max(1, args.distill_steps // 5),
                                    "seed": args.seed, "device": args.device,
                                    "progress": False, **dict(args.consistency or [])}},
    })


# --- the three generators -----------------------------------------------------------------------

def train_teacher(ds, cfg: Config, work: Path) -> tuple[Path, float]:
    """Train the teacher on `ds`'s train vectors into work/teacher; (model folder, seconds)."""
    x = ds.subset("train").x
    spec = cfg.model_spec(tuple(x.shape[1:]), dataset=ds.name, kind=ds.kind,
                          train_samples=len(x), table=ds.table)
    torch.manual_seed(cfg.train.seed)  # the same seed gives the same initial weights
    t0 = time.perf_counter()
    result = train(build_denoiser(spec), x, cfg.train, work / "teacher", spec=spec, resume=False)
    return result.model_dir, time.perf_counter() - t0


def distill_student(ds, cfg: Config, teacher_dir: Path, work: Path) -> tuple[Path, float]:
    """Distil a consistency student from the teacher on the train vectors into
    work/consistency; (model folder, seconds)."""
    x = ds.subset("train").x
    device = resolve_device(cfg.distill.consistency.device)
    teacher, spec = load_teacher(teacher_dir, tuple(x.shape[1:]), device)
    t0 = time.perf_counter()
    folder = consistency_distillation(teacher, spec, x, cfg.distill.consistency,
                                      work / "consistency", resume=False)
    return folder, time.perf_counter() - t0


def model_rows(model_dir: Path, n: int, *, seed: int, device, sampler: str | None = None,
               steps: int | None = None):
    """n decoded rows from a model folder at (`sampler`, `steps`), default its own sampling
    setting; (rows, NFE, seconds of sampling and decoding)."""
    denoiser, spec = load_for_sampling(model_dir, device)
    sampling = spec.sampling.model_dump()
    sampler = sampler or sampling["sampler"]
    steps = steps or sampling["steps"]
    t0 = time.perf_counter()
    out = generate(denoiser, tuple(spec.data.shape), n, sampler=sampler, steps=steps, seed=seed,
                   device=device, **grid_options(sampling))
    rows = decode(spec.data.table, out.x.cpu())
    return rows, out.nfe or nfe_for(sampler, steps), time.perf_counter() - t0


def copula_rows(ds_onehot, n: int, seed: int):
    """The Gaussian-copula baseline fit on the train vectors of a one-hot encoding, and n
    decoded rows from it; (rows, fit seconds, sampling seconds)."""
    t0 = time.perf_counter()
    baseline = CopulaBaseline(ds_onehot.table).fit(ds_onehot.subset("train").x.numpy(), seed=seed)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows = decode(ds_onehot.table, baseline.sample(n, seed=seed))
    return rows, fit_s, time.perf_counter() - t0


# --- one table ---------------------------------------------------------------------------

def benchmark_table(name: str, args, cfg: Config, work: Path) -> tuple[list[dict], dict]:
    """Every row of one table's result: the floor, the copula, and teacher + student per
    encoding; each a dict of the metrics plus model, nfe, train_s, rows_per_s.  Also the
    table's facts (rows per split, rows generated)."""
    tds = load(name, args.seed, args.table_rows)
    train_rows, test_rows = tds.subset("train").table, tds.subset("test").table
    n = min(len(test_rows), args.rows)
    facts = {"rows": len(tds.table), "train": len(train_rows), "test": len(test_rows), "n": n,
             "columns": len(tds.schema.columns), "target": tds.schema.target}
    log(f"{name}: {facts}")

    def scored(model: str, rows, nfe, train_s, sample_s) -> dict:
        t0 = time.perf_counter()
        metrics = evaluate_table(train_rows, test_rows, rows, tds.schema, seed=args.seed,
                                 threads=args.threads).metrics
        log(f"{name}: {model} scored in {time.perf_counter() - t0:.1f} s")
        return {"model": model, "nfe": nfe, "train_s": train_s,
                "rows_per_s": len(rows) / sample_s if sample_s else None, **metrics}

    results = [{"model": "floor (held-out real rows)", "nfe": None, "train_s": None,
                "rows_per_s": None,
                **floor(train_rows, test_rows, tds.schema, seed=args.seed, threads=args.threads).metrics}]
    onehot = table_vectors(tds, "onehot")  # the copula's and multinomial diffusion's layout
    vectors = {enc: onehot if enc in ("onehot", "multinomial") else table_vectors(tds, enc)
               for enc in args.categorical}
    rows, fit_s, sample_s = copula_rows(onehot, n, args.seed)
    results.append(scored("gaussian copula (copulas)", rows, None, fit_s, sample_s))
    device = resolve_device(args.device)
    for enc, ds in vectors.items():
        if enc == "multinomial":
            log(f"{name} (multinomial, D={ds.x.shape[1]}): training the TabDDPM teacher, "
                f"{args.steps} steps")
            process, net, train_s = train_multinomial(ds, args)
            log(f"{name} (multinomial): trained in {train_s:.0f} s")
            rows, nfe, sample_s = multinomial_rows(ds, process, net, n, seed=args.seed,
                                                   steps=args.multinomial_steps)
            results.append(scored("teacher ancestral (multinomial)", rows, nfe, train_s, sample_s))
            continue
        folder = work / name / enc
        log(f"{name} ({enc}, D={ds.x.shape[1]}): training the teacher, {args.steps} steps")
        teacher_dir, train_s = train_teacher(ds, cfg, folder)
        log(f"{name} ({enc}): teacher trained in {train_s:.0f} s; distilling, "
            f"{args.distill_steps} steps")
        student_dir, distill_s = distill_student(ds, cfg, teacher_dir, folder)
        log(f"{name} ({enc}): student distilled in {distill_s:.0f} s")
        rows, nfe, sample_s = model_rows(teacher_dir, n, seed=args.seed, device=device)
        results.append(scored(f"teacher {args.teacher_sampler} ({enc})", rows, nfe, train_s, sample_s))
        # the same teacher with other sampling noise: how far a figure moves by chance alone
        rows, nfe, sample_s = model_rows(teacher_dir, n, seed=args.seed + 1, device=device)
        results.append(scored(f"{NOISE_ROW} {args.seed + 1} ({enc})", rows, nfe, None, sample_s))
        for steps in args.student_steps:
            rows, nfe, sample_s = model_rows(student_dir, n, seed=args.seed, device=device,
                                             steps=steps)
            results.append(scored(f"student consistency {steps}-step ({enc})", rows, nfe,
                                  distill_s, sample_s))
    return results, facts


# --- reporting -----------------------------------------------------------------------------

def _cell(value, fmt: str) -> str:
    return "-" if value is None else (fmt.format(value) if np.isfinite(value) else "n/a")


def markdown(results: list[dict]) -> str:
    """One markdown table of a dataset's rows (module docstring's columns)."""
    cols = [("model", "model", "{}"), ("nfe", "NFE", "{:d}"),
            ("column_shapes", "column shapes", "{:.3f}"),
            ("column_pair_trends", "pair trends", "{:.3f}"), ("utility_ratio", "utility", "{:.3f}"),
            ("detection_auc", "detection AUC", "{:.3f}"), ("dcr_ratio", "DCR ratio", "{:.2f}"),
            ("train_s", "training time (s)", "{:.1f}"), ("rows_per_s", "rows/s", "{:,.0f}")]
    lines = ["| " + " | ".join(c[1] for c in cols) + " |", "|" + "---|" * len(cols)]
    for r in results:
        cells = [r["model"] if key == "model" else _cell(r.get(key), fmt) for key, _, fmt in cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def target_lines(results: list[dict]) -> list[str]:
    """The issue's targets for each teacher and student row: the absolute bounds, the student
    within STUDENT_GAP of its teacher on each figure, and both better than the copula on each."""
    copula = next(r for r in results if r["model"].startswith("gaussian copula"))
    models = [r for r in results if r["model"].startswith(("teacher", "student"))]
    lines = ["Targets (issue 13): column shapes >= 0.97, pair trends >= 0.95, utility >= 0.95, "
             "detection AUC <= 0.75; the student within 3 % of the teacher on each; both better "
             "than the copula on each."]
    for r in models:
        parts = []
        for key, label, bound, higher in TARGETS:
            v = r.get(key)
            if v is None:
                parts.append(f"{label} n/a")
                continue
            ok = v >= bound if higher else v <= bound
            parts.append(f"{label} {v:.3f} {'>=' if higher else '<='} {bound}: {_met(ok)}")
        beats = [label for key, label, _, higher in TARGETS
                 if r.get(key) is not None and copula.get(key) is not None
                 and (r[key] > copula[key] if higher else r[key] < copula[key])]
        parts.append(f"better than the copula on {len(beats)}/{len(TARGETS)}"
                     f" ({', '.join(beats) or 'none'}): {_met(len(beats) == len(TARGETS))}")
        lines.append(f"- {r['model']}: " + "; ".join(parts))
    for r in models:
        if not r["model"].startswith("student"):
            continue
        enc = r["model"].split("(")[-1]
        teacher = next(t for t in models if t["model"].startswith("teacher") and t["model"].endswith(enc))
        gaps = []
        for key, label, _, higher in TARGETS:
            if r.get(key) is None or not teacher.get(key):  # no ratio to a missing or 0 figure
                continue
            gap = ((teacher[key] - r[key]) if higher else (r[key] - teacher[key])) / abs(teacher[key])
            noise = next((t for t in results if t["model"].startswith(NOISE_ROW)
                          and t["model"].endswith(enc) and t.get(key) is not None), None)
            chance = (f" (teacher between sampling seeds "
                      f"{abs(noise[key] - teacher[key]) / abs(teacher[key]):.1%})" if noise else "")
            gaps.append(f"{label} {gap:+.1%}: {_met(gap <= STUDENT_GAP)}{chance}")
        lines.append(f"- {r['model']} against its teacher (worse by): " + "; ".join(gaps))
    return lines


def header(args, argv: list[str]) -> list[str]:
    """The report's first lines: command, date, machine and load, budgets."""
    load1, load5, _ = os.getloadavg()
    device = resolve_device(args.device)
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                  f"torch threads {torch.get_num_threads()}")
    return ["# Tabular quality: teacher, consistency student and Gaussian copula beside the real floor",
            "", f"command: `{shlex.join(['.venv/bin/python', 'benchmarks/tabular_quality.py', *argv])}`",
            f"date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; device {device} ({where}); "
            f"load average at start {load1:.2f} (1 min), {load5:.2f} (5 min)",
            f"budgets: teacher MLP hidden {args.hidden} x depth {args.depth}, {args.steps} steps of "
            f"batch {args.batch_size}, lr {args.lr}, noise levels ln sigma ~ N({args.p_mean}, "
            f"{args.p_std}^2); consistency student {args.distill_steps} steps"
            f"{''.join(f', {k} {v}' for k, v in args.consistency or [])}, sampled in "
            f"{' and '.join(map(str, args.student_steps))} steps; "
            f"teacher sampled with {args.teacher_sampler} at {args.teacher_nfe} NFE (multinomial: "
            f"{args.multinomial_steps or 1000} ancestral steps, the same net and budget, no student); rows generated: "
            f"the test split's, at most {args.rows}; table rows: "
            f"{args.table_rows or 'all'}; seed {args.seed}{'; SMOKE run' if args.smoke else ''}",
            ""]


# --- main ----------------------------------------------------------------------------------

def _setting(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), yaml.safe_load(value)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tables", nargs="*", default=list(BUILTINS),
                   help=f"built-in names ({', '.join(BUILTINS)}) or .csv/.parquet paths; default: all built-ins")
    p.add_argument("--categorical", choices=ENCODINGS, action="append",
                   help="categorical encoding (repeatable); default: all three, as separate rows")
    p.add_argument("--smoke", action="store_true",
                   help=f"tiny budgets for a check that it runs: {SMOKE}")
    p.add_argument("--steps", type=int, help=f"teacher training steps (default {FULL['steps']})")
    p.add_argument("--batch-size", type=int, help=f"default {FULL['batch_size']}")
    p.add_argument("--hidden", type=int, help=f"MLP width (default {FULL['hidden']})")
    p.add_argument("--depth", type=int, help=f"MLP residual blocks (default {FULL['depth']})")
    p.add_argument("--lr", type=float, default=2e-3, help="teacher learning rate")
    p.add_argument("--p-mean", type=float, default=-0.4,
                   help="teacher's training noise levels: ln sigma ~ N(p_mean, p_std^2)")
    p.add_argument("--p-std", type=float, default=1.4)
    p.add_argument("--distill-steps", type=int,
                   help=f"consistency distillation steps (default {FULL['distill_steps']})")
    p.add_argument("--consistency", type=_setting, action="append", metavar="KEY=VALUE",
                   help="a distill.consistency setting (repeatable; YAML values), e.g. "
                        "level_sampling=continuous")
    p.add_argument("--student-steps", type=int, nargs="+", default=[1, 2], choices=(1, 2, 4),
                   help="the student's sampling steps, one row each (default 1 2)")
    p.add_argument("--rows", type=int, help=f"most rows generated per model (default {FULL['rows']})")
    p.add_argument("--table-rows", type=int,
                   help="use a seeded random subset of this many table rows (default: all)")
    p.add_argument("--teacher-sampler", default="dpmpp_2m", choices=sorted(set(SAMPLERS) - {"consistency"}))
    p.add_argument("--teacher-nfe", type=int, default=32)
    p.add_argument("--multinomial-steps", type=int, default=None,
                   help="ancestral steps of the multinomial teacher (default: all of its T = 1000)")
    p.add_argument("--seed", type=int, default=0, help="split, weights, sampling and scoring")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads and the scoring models' threads (default: torch's; scoring 1)")
    p.add_argument("--work", type=Path, default=None,
                   help="folder for the models (default: a temporary folder, removed at the end)")
    p.add_argument("--out", type=Path, default=None, help="markdown file to write")
    args = p.parse_args(argv)
    budget = SMOKE if args.smoke else FULL
    for key, value in budget.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("steps", "batch_size", "hidden", "depth", "distill_steps", "rows", "teacher_nfe"):
        if getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be at least 1")
    if args.table_rows is not None and args.table_rows < 20:
        p.error("--table-rows must be at least 20 (each split needs rows)")
    args.categorical = list(dict.fromkeys(args.categorical or ENCODINGS))
    if args.out is None:
        args.out = (Path(tempfile.gettempdir()) / "tabular_quality_smoke.md" if args.smoke
                    else ROOT / "benchmarks" / "results" / "tabular_quality.md")
    return args


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    show_messages(info="stderr")   # the core's progress lines; stdout carries the tables
    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads = args.threads or 1
    cfg = make_config(args)
    text = header(args, argv)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tabular_quality-") as tmp:
        work = args.work or Path(tmp)
        for name in args.tables:
            t0 = time.perf_counter()
            try:
                results, facts = benchmark_table(name, args, cfg, work)
            except (DataError, TableEvaluationError) as exc:  # bad table or path: one line
                print(f"tabular_quality: {exc}", file=sys.stderr)
                return 2
            section = [f"## {name}", "",
                       f"{facts['rows']:,} rows ({facts['train']:,} train, {facts['test']:,} test), "
                       f"{facts['columns']} columns, target `{facts['target']}`; {facts['n']:,} rows "
                       "generated per model, scored against the train rows (fidelity, detection, "
                       "privacy) and the test rows (utility); the floor scores half of the test "
                       "rows as if synthetic.", "", markdown(results), "", *target_lines(results),
                       "", f"{name}: {time.perf_counter() - t0:.0f} s in all", ""]
            print("\n".join(section), flush=True)
            text += section
    text.append(f"total: {time.perf_counter() - started:.0f} s")
    body = "\n".join(text) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(body)
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

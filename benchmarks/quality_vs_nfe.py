"""Quality versus NFE of a trained model, as a markdown table; with --students, its distilled
students in the same table, and their ratios to the teacher against the targets of issue 4.

    .venv/bin/python benchmarks/quality_vs_nfe.py                    # trains the quick profile if needed
    .venv/bin/python benchmarks/quality_vs_nfe.py --checkpoint runs/digits --nfe 1,2,4,8,16,32,64
    .venv/bin/python benchmarks/quality_vs_nfe.py --students         # + distils both methods if needed
    .venv/bin/python benchmarks/quality_vs_nfe.py --students --set distill.consistency.steps=8000

Without --checkpoint it trains the `--profile` teacher into runs/bench_<profile> (resuming
if a run is there), then evaluates every sampler at every NFE on the held-out test split.
Target for the quick profile (2 CPU cores, <= 10 minutes of training): best FID at most
2x the real-data floor.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffusion.config import load_config  # noqa: E402
from diffusion.evaluation import student_name  # noqa: E402
from diffusion.evaluation_settings import LEGACY_RATE, RATE, sampling_rate  # noqa: E402
from diffusion.messages import show_messages  # noqa: E402
from diffusion.model import load_for_sampling, read_spec, resolve_model_path  # noqa: E402
from diffusion.samplers import generate, grid_options  # noqa: E402
from tasks.steps.distill import METHODS, distill_dir, distill_sampler, find_students  # noqa: E402
from tasks.steps.evaluate import evaluate_model  # noqa: E402
from tasks.steps.train_teacher import train_teacher  # noqa: E402

# issue 4: FID of a 4-step student <= 1.15x and of a 1-step student <= 1.6x the teacher's best
# FID; the 1-step student >= 30x the teacher's images/s at its best-quality setting
TARGETS = {4: 1.15, 1: 1.6}
SPEED_TARGET = 30.0


def _timer(model_dir, sampler: str, steps: int, n: int, sampling: dict | None = None):
    """A function that samples n images at one setting and returns the seconds it took."""
    denoiser, spec = load_for_sampling(model_dir)
    shape = spec.shape
    options = grid_options(sampling if sampling is not None else spec.sampling.model_dump())

    def run(seed: int) -> float:
        t0 = time.perf_counter()
        generate(denoiser, shape, n, sampler=sampler, steps=steps, seed=seed, **options)
        return time.perf_counter() - t0
    return run


def speed_check(table, teacher_dir, students, *, n: int, repeats: int) -> list[str]:
    """The 1-step students' images/s against the teacher's at its best-quality setting. The
    table's img/s come from one run each, and a 1-step run lasts a fraction of a second, too
    short to time once on a shared machine: here teacher and students are timed in turn,
    `repeats` times after a warm-up, and the median of the per-round ratios is reported."""
    teacher = table[table["model"] == "teacher"].sort_values("fid").iloc[0]
    teacher_spec = read_spec(resolve_model_path(teacher_dir))
    timers = {"teacher": _timer(teacher_dir, teacher["sampler"], int(teacher["steps"]), n,
                                teacher_spec.sampling.model_dump())}
    for folder in students:
        spec = read_spec(folder)
        if spec.method == "consistency" or spec.sampling.steps == 1:
            name = student_name(spec)
            timers[name] = _timer(folder, spec.sampling.sampler, 1, n)
    seconds = {name: [] for name in timers}
    for i in range(repeats + 1):
        for name, run in timers.items():
            seconds[name].append(run(i))
    rounds = {name: s[1:] for name, s in seconds.items()}  # the first round warms up
    t = n / statistics.median(rounds["teacher"])
    lines = ["", f"Speed, {repeats} rounds of n = {n} timed in turn after a warm-up: teacher "
             f"({teacher['sampler']}, {int(teacher['nfe'])} NFE) {t:.0f} img/s (median)"]
    for name in list(timers)[1:]:
        ratio = statistics.median(a / b for a, b in zip(rounds["teacher"], rounds[name]))
        verdict = "met" if ratio >= SPEED_TARGET else "NOT met"
        lines.append(f"- {name}: {n / statistics.median(rounds[name]):.0f} img/s, "
                     f"{ratio:.1f}x the teacher (median of per-round ratios; target >= "
                     f"{SPEED_TARGET:.0f}x: {verdict})")
    return lines


def student_ratios(table) -> list[str]:
    """Each student row against the teacher's best row, and the targets of issue 4."""
    teacher = table[table["model"] == "teacher"].sort_values("fid").iloc[0]
    lines = ["", f"Teacher best: {teacher['sampler']} at {int(teacher['nfe'])} NFE, FID "
             f"{teacher['fid']:.3f}, {sampling_rate(teacher):.0f} img/s.", "",
             "| student | NFE | FID | FID / teacher best | img/s / teacher's (one run) | FID target |",
             "|---|---|---|---|---|---|"]
    students = table[table["model"] != "teacher"].sort_values(["nfe", "fid"])
    for _, row in students.iterrows():
        ratio = row["fid"] / teacher["fid"]
        speed = sampling_rate(row) / sampling_rate(teacher)
        nfe = int(row["nfe"])
        target = ""
        if nfe in TARGETS:  # the speed target is judged by speed_check's repeated timings
            target = f"<= {TARGETS[nfe]}x: {'met' if ratio <= TARGETS[nfe] else 'NOT met'}"
        lines.append(f"| {row['model']} | {nfe} | {row['fid']:.3f} | {ratio:.2f}x | {speed:.1f}x | {target} |")
    return lines


def markdown(table) -> str:
    cols = [("model", "model", "{}"), ("sampler", "sampler", "{}"), ("nfe", "NFE", "{:d}"),
            ("fid", "FID", "{:.3f}"), ("fid_ratio", "x floor", "{:.2f}"),
            ("kid_mean", "KID", "{:.4f}"), ("kid_std", "KID std", "{:.4f}"),
            ("precision", "prec", "{:.3f}"), ("recall", "recall", "{:.3f}"),
            ("density", "density", "{:.3f}"), ("coverage", "coverage", "{:.3f}"),
            ("memorisation_ratio", "mem ratio", "{:.2f}"), (RATE, "img/s", "{:.0f}")]
    table = table.rename(columns={LEGACY_RATE: RATE})   # a table written before the rename
    cols = [c for c in cols if c[0] in table.columns]
    if {"fid_lo", "fid_hi"} <= set(table.columns):  # the evaluation's bootstrap interval
        cols.insert(4, ("fid_interval", "FID interval", "{}"))
    lines = ["| " + " | ".join(c[1] for c in cols) + " |", "|" + "---|" * len(cols)]
    for _, row in table.iterrows():
        cells = []
        for key, _, fmt in cols:
            value = (f"[{row['fid_lo']:.3f}, {row['fid_hi']:.3f}]" if key == "fid_interval"
                     else row[key])
            cells.append(fmt.format(int(value) if fmt == "{:d}" else value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, help="model/run folder; default: train --profile first")
    p.add_argument("--profile", default="quick")
    p.add_argument("--config", type=Path, default=ROOT / "params.yaml")
    p.add_argument("--samplers", default=None, help="comma-separated (default: evaluate.samplers)")
    p.add_argument("--nfe", default=None, help="comma-separated NFE budgets (default: evaluate.nfes)")
    p.add_argument("--n", type=int, default=None, help="samples per setting (default: evaluate.n_samples)")
    p.add_argument("--out", type=Path, default=None, help="report folder")
    p.add_argument("--students", nargs="?", const="distill", default=None, metavar="FOLDER",
                   help="add distilled students: a folder to search, or without a value "
                        "<run>/distill, distilling --methods first where missing")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"comma-separated distillation methods for --students without a folder "
                        f"(default: {','.join(METHODS)})")
    p.add_argument("--speed-repeats", type=int, default=7,
                   help="timed runs behind the 1-step students' speed ratio (median)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. distill.consistency.steps=8000 (repeatable)")
    args = p.parse_args(argv)
    show_messages(info="stderr")   # the core's progress lines; stdout carries the table

    cfg = load_config(args.config, args.profile, args.overrides)
    checkpoint = args.checkpoint
    train_seconds = None
    if checkpoint is None:
        cfg = load_config(args.config, args.profile,
                          [f"out_dir=runs/bench_{args.profile}", *args.overrides])
        t0 = time.perf_counter()
        run = train_teacher(cfg)
        train_seconds = time.perf_counter() - t0
        checkpoint = run.model_dir
    students, distill_seconds = None, {}
    if args.students == "distill":
        run_dir = checkpoint if checkpoint.name != "model" else checkpoint.parent
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        unknown = sorted(set(methods) - set(METHODS))
        if unknown or not methods:
            p.error(f"--methods: unknown {unknown or 'none given'}; allowed: {', '.join(METHODS)}")
        for method in methods:
            t0 = time.perf_counter()
            distill_sampler(cfg, method, checkpoint, out_dir=run_dir)  # reuses finished students
            distill_seconds[method] = time.perf_counter() - t0
        students = find_students(distill_dir(cfg, methods[0], run_dir).parent)
    elif args.students is not None:
        students = find_students(args.students)
    suffix = "_students" if students else ""
    out = args.out or ROOT / "benchmarks" / "results" / f"quality_vs_nfe{suffix}_{args.profile}"
    report = evaluate_model(
        checkpoint, cfg, out, students=students,
        samplers=args.samplers.split(",") if args.samplers else None,
        nfes=[int(v) for v in args.nfe.split(",")] if args.nfe else None, n=args.n)
    table = report.table.sort_values(["model", "sampler", "nfe"])
    best = report.best
    text = [f"# Quality versus NFE ({args.profile} profile, {cfg.data.name})", "",
            markdown(table), "",
            f"real-data floor FID(train, test) at n = {int(table['n_samples'].iloc[0])}: "
            f"{report.floor:.3f}",
            f"best: {best['sampler']} at {int(best['nfe'])} NFE, FID {best['fid']:.3f} = "
            f"{best['fid'] / report.floor:.2f}x the floor (target for the quick profile: <= 2x)"]
    if students:
        text += student_ratios(table)
        text += speed_check(table, checkpoint, students, n=int(table["n_samples"].iloc[0]),
                            repeats=args.speed_repeats)
        if args.overrides:
            text.append(f"\nsettings: -p {args.profile} " + " ".join(f"--set {o}" for o in args.overrides))
    if train_seconds is not None:
        text.append(f"teacher training (incl. resume check) took {train_seconds:.0f} s")
    for method, seconds in distill_seconds.items():
        text.append(f"{method} distillation (0 when reused) took {seconds:.0f} s")
    text.append(f"report files: {', '.join(str(v) for v in report.files.values())}")
    body = "\n".join(text)
    print(body)
    (out / "README.md").write_text(body + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

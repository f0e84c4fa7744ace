"""How much FID noise the digits evaluation has, and whether the promotion rule survives it.

    .venv/bin/python benchmarks/promotion_noise.py            # quick profile: three teachers, ~25 min on 1 thread
    .venv/bin/python benchmarks/promotion_noise.py --smoke    # tiny profile: the same steps in about a minute

Trains three teachers of one configuration (the `--profile`'s): A (train.seed 0), B (train.seed
1, "the same configuration re-trained with another seed") and C (seed 0, a quarter of the
training steps), or reuses them from runs/bench_promotion_<profile>/.  Each is scored as the
promotion step scores a champion (tasks/steps/evaluate.py score_with_features: its stored
sampler and steps, the evaluate section's n and seed, the test split of one versioned folder).
Then, with the rule of tasks/steps/promote.py (`paired_interval` + `decide`):

- resolution: the half-width of the paired interval of FID(B) - FID(A) at the evaluation's n,
  the smallest FID difference this evaluation can tell from noise, beside the half-width of
  one model's own interval (diffusion/bootstrap.py `metric_interval`);
- self-promotion: B against A and A against B, each in 20 simulated comparisons: every
  simulated evaluation is one bootstrap draw of the real, A and B features (rows with
  replacement, the generated rows paired), on which the whole rule runs with its own paired
  bootstrap.  Target (issue 14): `tie` or `keep` in at least 19 of 20;
- a quarter-trained teacher C against A: rejected (`keep`) in the actual evaluation and in
  the simulated ones.

Also measures one bootstrap replicate's cost (64-D and, unless --smoke, 2048-D features).
Prints a markdown table and writes benchmarks/results/promotion_noise[_smoke].md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from diffusion.bootstrap import metric_interval, replicate_seconds  # noqa: E402
from diffusion.config import load_config  # noqa: E402
from diffusion.messages import show_messages  # noqa: E402
from tasks.steps.evaluate import Score, score_with_features  # noqa: E402
from tasks.steps.prepare_dataset import prepare_dataset  # noqa: E402
from tasks.steps.promote import KEEP, TIE, decide, paired_interval  # noqa: E402
from tasks.steps.promote_settings import PromoteSettings  # noqa: E402
from tasks.steps.train_teacher import train_teacher  # noqa: E402

SIMULATIONS = 20
TARGET_SELF = 19     # of 20: tie or keep


def _teacher(args, name: str, overrides: list[str], root: Path):
    cfg = load_config(args.config, args.profile,
                      [f"out_dir={root / name}", f"evaluate.feature_cache={root / 'features'}",
                       *overrides, *args.overrides])
    t0 = time.perf_counter()
    run = train_teacher(cfg)           # resumes / reuses a finished run of the same settings
    return cfg, run.model_dir, time.perf_counter() - t0


def _simulated(score: Score, idx_real: np.ndarray, idx_fake: np.ndarray) -> Score:
    """One simulated evaluation: the rows a bootstrap draw picked."""
    return Score({}, score.real_f[idx_real], score.fake_f[idx_fake])


def _outcomes(challenger: Score, champion: Score, settings: PromoteSettings, seed: int) -> list[str]:
    """The rule's outcome in SIMULATIONS simulated evaluations of the two models."""
    from diffusion.metrics import fid_from_features

    g = np.random.default_rng(seed)
    out = []
    for k in range(SIMULATIONS):
        idx_real = g.integers(0, len(champion.real_f), len(champion.real_f))
        idx_fake = g.integers(0, len(champion.fake_f), len(champion.fake_f))
        ours, theirs = _simulated(challenger, idx_real, idx_fake), _simulated(champion, idx_real, idx_fake)
        new, old = (fid_from_features(s.real_f, s.fake_f) for s in (ours, theirs))
        rule = settings.model_copy(update={"seed": settings.seed + 1000 + k})
        interval = paired_interval(ours, theirs, rule, new, old)
        d = decide({"fid": new, "nfe": challenger.row.get("nfe")},
                   {"fid": old, "nfe": champion.row.get("nfe")}, "fid", 0.0, True, interval)
        out.append(d.outcome + ("+" if d.promoted else ""))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default=None, help="default: quick (tiny with --smoke)")
    p.add_argument("--smoke", action="store_true", help="tiny profile, fewer replicates: checks the script")
    p.add_argument("--config", type=Path, default=ROOT / "params.yaml")
    p.add_argument("--replicates", type=int, default=None,
                   help="paired bootstrap replicates per decision (default: pipeline.promote.replicates)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    args.profile = args.profile or ("tiny" if args.smoke else "quick")
    show_messages(info="stderr")
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    root = ROOT / "runs" / f"bench_promotion_{args.profile}"

    base = load_config(args.config, args.profile, args.overrides)
    steps = base.train.steps
    quarter = max(1, steps // 4)
    cfg, a_dir, a_s = _teacher(args, "a_seed0", ["train.seed=0"], root)
    _, b_dir, b_s = _teacher(args, "b_seed1", ["train.seed=1"], root)
    _, c_dir, c_s = _teacher(args, "c_quarter", ["train.seed=0", f"train.steps={quarter}"], root)
    data_dir = prepare_dataset(cfg.data, root / "processed")
    t0 = time.perf_counter()
    a, b, c = (score_with_features(d, cfg, root / "score" / name, data_dir=data_dir)
               for name, d in (("a", a_dir), ("b", b_dir), ("c", c_dir)))
    score_s = time.perf_counter() - t0

    settings = PromoteSettings.model_validate(cfg.pipeline.get("promote", {}))   # params.yaml's rule
    if args.replicates or args.smoke:
        settings = settings.model_copy(update={"replicates": args.replicates or 200})
    level = settings.level
    t0 = time.perf_counter()
    own = metric_interval("fid", a.real_f, a.fake_f, replicates=settings.replicates, level=level)
    ba = paired_interval(b, a, settings, b.row["fid"], a.row["fid"])
    ca = paired_interval(c, a, settings, c.row["fid"], a.row["fid"])
    one_decision_s = (time.perf_counter() - t0) / 2
    d_ba = decide(b.row, a.row, "fid", 0.0, True, ba)
    d_ca = decide(c.row, a.row, "fid", 0.0, True, ca)

    t0 = time.perf_counter()
    sims = {"B vs A": _outcomes(b, a, settings, 1), "A vs B": _outcomes(a, b, settings, 2),
            "C vs A": _outcomes(c, a, settings, 3)}
    sim_s = time.perf_counter() - t0
    cost64 = {m: replicate_seconds(64, 1000, m, replicates=32) for m in ("fid", "kid")}
    cost2048 = None if args.smoke else replicate_seconds(2048, 1000, "fid", replicates=2)

    n, n_test = len(a.fake_f), len(a.real_f)
    lines = [f"# Promotion noise ({args.profile} profile, {cfg.data.name}; "
             f"n = {n} generated, {n_test} test rows, {settings.replicates} replicates, "
             f"{level * 100:g} % intervals)", "",
             "| teacher | train steps | seed | setting | NFE | FID | own interval |",
             "|---|---|---|---|---|---|---|"]
    for name, score, st, seed in (("A", a, steps, 0), ("B", b, steps, 1), ("C", c, quarter, 0)):
        iv = metric_interval("fid", score.real_f, score.fake_f, replicates=settings.replicates, level=level)
        lines.append(f"| {name} | {st} | {seed} | {score.row['sampler']} {int(score.row['steps'])} | "
                     f"{int(score.row['nfe'])} | {score.row['fid']:.4f} | [{iv.lo:.4f}, {iv.hi:.4f}] |")
    count = {k: sum(o in (TIE, KEEP) for o in v) for k, v in sims.items()}   # not promoted
    lines += ["", "| comparison | difference | paired interval | half-width | decision | "
                  f"simulated: tie or keep of {SIMULATIONS} | target |",
              "|---|---|---|---|---|---|---|",
              f"| B (seed 1) vs A (seed 0) | {ba['estimate']:+.4f} | [{ba['lo']:+.4f}, {ba['hi']:+.4f}] | "
              f"{(ba['hi'] - ba['lo']) / 2:.4f} | {d_ba.outcome}{' (promoted)' if d_ba.promoted else ''} | "
              f"{count['B vs A']} | >= {TARGET_SELF}: {'met' if count['B vs A'] >= TARGET_SELF else 'NOT met'} |",
              f"| A vs B | {-ba['estimate']:+.4f} | | | | {count['A vs B']} | >= {TARGET_SELF}: "
              f"{'met' if count['A vs B'] >= TARGET_SELF else 'NOT met'} |",
              f"| C (1/4 steps) vs A | {ca['estimate']:+.4f} | [{ca['lo']:+.4f}, {ca['hi']:+.4f}] | "
              f"{(ca['hi'] - ca['lo']) / 2:.4f} | {d_ca.outcome}{' (promoted)' if d_ca.promoted else ''} | "
              f"{count['C vs A']} (keep: {sum(o == KEEP for o in sims['C vs A'])}) | rejected: "
              f"{'met' if d_ca.outcome == KEEP and not d_ca.promoted else 'NOT met'} |", "",
              f"Smallest FID difference this evaluation resolves (half-width of the paired "
              f"interval of B - A): {(ba['hi'] - ba['lo']) / 2:.4f}, "
              f"{(ba['hi'] - ba['lo']) / 2 / max(a.row['fid'], 1e-12) * 100:.1f} % of A's FID; "
              f"one model's own interval half-width: {own.half_width:.4f}. The seed-to-seed "
              f"difference |FID(B) - FID(A)| is {abs(ba['estimate']) / max(a.row['fid'], 1e-12) * 100:.1f} % "
              "of A's FID: the paired interval holds evaluation noise only (samples, test split), "
              "not the spread between training seeds.",
              "Simulated outcomes: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in sims.items())
              + " ('+': promoted).",
              f"Bootstrap cost on one thread: {cost64['fid'] * 1e3:.1f} ms (FID) and "
              f"{cost64['kid'] * 1e3:.1f} ms (KID) per replicate with 64-D features, n = 1000"
              + (f"; {cost2048:.1f} s per FID replicate with 2048-D features" if cost2048 else "")
              + f"; one paired decision {one_decision_s:.1f} s; the {3 * SIMULATIONS} simulated "
                f"decisions {sim_s:.0f} s.",
              f"Training (0 when reused): A {a_s:.0f} s, B {b_s:.0f} s, C {c_s:.0f} s; scoring "
              f"the three {score_s:.0f} s; total {time.perf_counter() - t_start:.0f} s.",
              "Command: .venv/bin/python benchmarks/promotion_noise.py"
              + (" --smoke" if args.smoke else "")
              + "".join(f" --set {o}" for o in args.overrides)]
    body = "\n".join(lines)
    print(body)
    out = ROOT / "benchmarks" / "results" / f"promotion_noise{'_smoke' if args.smoke else ''}.md"
    out.write_text(body + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Start time and memory of the team stack's servers against the local stack's; torchrun's cost.

The torchrun part: what launching the train step as torchrun ranks costs per step.  Prints
markdown tables and writes them to benchmarks/results/team_stack.md; progress goes to stderr.

    .venv/bin/python benchmarks/team_stack.py [--repeats 3] [--no-torchrun] [--no-local] [--timeout 300]
                                              [--note TEXT] [--out PATH]

Stacks (`dmops up --team` and `dmops up`), each in a temporary state folder on free ports, the
same sequence for both:

1. first start, one server at a time in start order (`Stack.up(services=[name])`), each timed
   until ready (infra/readiness.py; the team MLflow's time includes making its accounts); for
   the team stack PostgreSQL's initdb is timed apart from its first start (which includes making
   its roles and databases);
2. memory of each server once all are ready: RSS summed over the server's processes (its process
   group; PostgreSQL's postmaster and its children, each a process group of its own) and PSS
   (/proc/<pid>/smaps_rollup: shared pages divided among the processes sharing them, so shared
   buffers count once);
3. stop, one server at a time (clients first, PostgreSQL last), each timed;
4. restart with the data present, one server at a time again, and the memory again;
5. the whole stack as `dmops up` / `dmops down` run it: `down` (all signalled at once), `up`
   (all started at once, data present), `up` when running, `down`.

One server at a time says what each costs; all at once, the servers share the cores, so the
whole `up` is not the sum.

torchrun (unless --no-torchrun): the tiny-profile train step (tasks/steps/train_teacher.py, the
plain step without MLflow, on a prepared dataset) in this process against
`train.nproc_per_node=2` (two gloo ranks launched by torchrun, tasks/steps/train_ranks.py),
alternating, --repeats times each after one untimed in-process warm-up; wall time of the step
and of its training loop alone (`TrainResult.seconds`, rank 0's under torchrun), medians.  The
step includes loading the data, building the network, the final checkpoint and the sample grid.
The in-process step also runs with one torch thread (each rank gets cores / 2), and two parts of
the launch are timed alone: torchrun starting 2 ranks that only join a gloo group, and a fresh
interpreter importing what a rank imports.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MIB = 1024 * 1024
LABELS = {"postgres": "PostgreSQL", "seaweedfs": "SeaweedFS (S3)", "mlflow": "MLflow", "prefect": "Prefect"}


def err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ---- memory -------------------------------------------------------------------------------

def memory_of(stack) -> dict[str, tuple[int, int | None, int]]:
    """(RSS bytes, PSS bytes or None, number of processes) of each running server, as
    `dmops status` measures them (infra/processes.py: a server's process group, or for
    PostgreSQL the postmaster and its children, each a process group of its own)."""
    return {name: (st.memory.rss, st.memory.pss, st.memory.processes)
            for name, st in stack.status().items() if st.memory is not None}


# ---- stacks -------------------------------------------------------------------------------

def _timed(what: str, fn) -> float:
    err(f"  {what} ...")
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    err(f"  {what}: {seconds:.1f} s")
    return seconds


def measure_stack(team: bool, timeout: float) -> dict:
    """Run the sequence of the module docstring on a fresh stack; returns its numbers."""
    from infra import Stack, StackSettings
    from infra.ports import free_ports

    kind = "team" if team else "local"
    err(f"{kind} stack:")
    # PostgreSQL, run as its OS user when this runs as root, must enter the folder (mkdtemp: 0700)
    root = Path(tempfile.mkdtemp(prefix=f"dmops-bench-{kind}-"))
    root.chmod(0o711)
    s3, mlflow_port, prefect, postgres = free_ports(4)
    stack = Stack(StackSettings(state_dir=root / "state", s3_port=s3, mlflow_port=mlflow_port,
                                prefect_port=prefect, postgres_port=postgres, team=team),
                  log=lambda line: err("    " + line))
    names = stack.services
    out: dict = {"services": names, "first": {}, "restart": {}, "stop": {}}
    try:
        if team:
            stack.layout.make_dirs()
            out["initdb"] = _timed("postgres initdb", stack.postgres.initialise)
        for name in names:
            out["first"][name] = _timed(f"first start {name}", lambda: stack.up(timeout, services=[name]))
        out["memory_first"] = memory_of(stack)
        for name in reversed(names):
            out["stop"][name] = _timed(f"stop {name}", lambda: stack.down(services=[name]))
        for name in names:
            out["restart"][name] = _timed(f"restart {name}", lambda: stack.up(timeout, services=[name]))
        out["memory_restart"] = memory_of(stack)
        out["down_all"] = _timed("down (all at once)", stack.down)
        out["up_all"] = _timed("up (all at once, data present)", lambda: stack.up(timeout))
        out["up_running"] = _timed("up (running)", lambda: stack.up(timeout))
        out["down_all_2"] = _timed("down (all at once)", stack.down)
    finally:
        stack.down()
        shutil.rmtree(root, ignore_errors=True)
    return out


def stack_tables(results: dict[str, dict]) -> list[str]:
    def mib(value) -> str:
        return "-" if value is None else f"{value / MIB:.0f}"

    lines = ["| server | stack | first start s | restart s | stop s | RSS MiB | PSS MiB | processes "
             "| RSS after restart MiB |", "|---|---|---|---|---|---|---|---|---|"]
    for kind, r in results.items():
        if "initdb" in r:
            lines.append(f"| PostgreSQL initdb | {kind} | {r['initdb']:.1f} | - | - | - | - | - | - |")
        for name in r["services"]:
            rss, pss, n = r["memory_first"].get(name, (None, None, 0))
            again = r["memory_restart"].get(name, (None, None, 0))[0]
            lines.append(f"| {LABELS[name]} | {kind} | {r['first'][name]:.1f} | {r['restart'][name]:.1f} "
                         f"| {r['stop'][name]:.1f} | {mib(rss)} | {mib(pss)} | {n} | {mib(again)} |")
    lines += ["", "| whole stack | " + " | ".join(results) + " |", "|---|" + "---|" * len(results)]

    def row(label: str, fn) -> str:
        return f"| {label} | " + " | ".join(fn(r) for r in results.values()) + " |"

    lines += [
        row("first start, one server at a time (sum, initdb included) s",
            lambda r: f"{r.get('initdb', 0.0) + sum(r['first'].values()):.1f}"),
        row("restart, one server at a time (sum) s", lambda r: f"{sum(r['restart'].values()):.1f}"),
        row("`up`, all at once, data present s", lambda r: f"{r['up_all']:.1f}"),
        row("`up` when running s", lambda r: f"{r['up_running']:.2f}"),
        row("`down`, all at once s (two runs)", lambda r: f"{r['down_all']:.1f}, {r['down_all_2']:.1f}"),
        row("memory after first start: RSS / PSS MiB (all servers)",
            lambda r: f"{mib(sum(m[0] for m in r['memory_first'].values()))} / "
                      f"{mib(sum(m[1] or 0 for m in r['memory_first'].values()))}"),
        row("processes", lambda r: str(sum(m[2] for m in r["memory_first"].values()))),
    ]
    return lines


# ---- torchrun -----------------------------------------------------------------------------

def measure_torchrun(repeats: int) -> dict:
    """Wall time of the tiny train step and of its training loop: in this process with torch's
    default threads and with one thread, and as 2 torchrun ranks; plus a bare launch."""
    import torch

    from diffusion.config import load_config
    from tasks.steps.prepare_dataset import prepare_dataset
    from tasks.steps.train_teacher import train_teacher

    err("torchrun:")
    root = Path(tempfile.mkdtemp(prefix="dmops-bench-torchrun-"))
    default_threads = torch.get_num_threads()
    times: dict[str, list[tuple[float, float | None]]] = {label: [] for label in CASES}
    try:
        with contextlib.redirect_stdout(sys.stderr):     # the step's own lines are progress
            base = load_config(ROOT / "params.yaml", "tiny")
            data_dir = prepare_dataset(base.data, root / "processed")
            runs = itertools.count()

            def step(label: str) -> tuple[float, float | None]:
                n = next(runs)
                if label == BARE:
                    wall, loop = _bare_launch(root / f"bare{n}"), None
                elif label == IMPORTS:
                    t0 = time.perf_counter()
                    subprocess.run([sys.executable, "-c", "import tasks.steps.train_ranks"], cwd=ROOT, check=True)
                    wall, loop = time.perf_counter() - t0, None
                else:
                    overrides = ["train.nproc_per_node=2"] if label == RANKS else []
                    cfg = load_config(ROOT / "params.yaml", "tiny", [*overrides, f"out_dir={root / f'run{n}'}"])
                    torch.set_num_threads(1 if label == ONE_THREAD else default_threads)
                    try:
                        t0 = time.perf_counter()
                        run = train_teacher(cfg, resume=False, data_dir=data_dir, dataset_md5="0" * 32)
                        wall, loop = time.perf_counter() - t0, run.result.seconds
                    finally:
                        torch.set_num_threads(default_threads)
                err(f"  {label}: {wall:.2f} s" + ("" if loop is None else f", training loop {loop:.2f} s"))
                return wall, loop

            step(IN_PROCESS)                  # warm-up, not counted: first-call costs of this process
            for i in range(repeats):          # alternating, the order turned each repeat
                for label in CASES[i % len(CASES):] + CASES[:i % len(CASES)]:
                    times[label].append(step(label))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"times": times, "threads": default_threads, "steps": base.train.steps,
            "batch": base.train.batch_size}


IN_PROCESS = "in process"
ONE_THREAD = "in process, 1 torch thread"
RANKS = "torchrun, 2 ranks (`train.nproc_per_node=2`)"
BARE = "bare launch: torchrun, 2 ranks that join gloo and leave"
IMPORTS = "a fresh interpreter importing the rank's module (`tasks.steps.train_ranks`)"
CASES = [IN_PROCESS, ONE_THREAD, RANKS, BARE, IMPORTS]
BARE_FLAG = "--bare-rank"


def _bare_launch(log_dir: Path) -> float:
    """Seconds for run_torchrun to start 2 ranks that import torch, join a gloo process group,
    pass a barrier and leave: the launch alone, with nothing trained."""
    from tasks.adapters.torchrun import Launch, run_torchrun

    t0 = time.perf_counter()
    # the ranks import this file as a module (`benchmarks` is a namespace package under ROOT)
    run_torchrun("benchmarks.team_stack", [BARE_FLAG], Launch(2, env={"PYTHONPATH": str(ROOT)}), log_dir)
    return time.perf_counter() - t0


def _bare_rank() -> int:
    import torch.distributed as dist

    dist.init_process_group("gloo")
    dist.barrier()
    dist.destroy_process_group()
    return 0


def torchrun_table(r: dict) -> list[str]:
    med = {label: (statistics.median(w for w, _ in t),
                   None if t[0][1] is None else statistics.median(s for _, s in t))
           for label, t in r["times"].items()}
    lines = ["| tiny train step | runs | wall s (median) | wall min-max s | training loop s (median) |",
             "|---|---|---|---|---|"]
    for label, t in r["times"].items():
        walls = [w for w, _ in t]
        loop = "-" if med[label][1] is None else f"{med[label][1]:.2f}"
        lines.append(f"| {label} | {len(t)} | {med[label][0]:.2f} | {min(walls):.2f}-{max(walls):.2f} | {loop} |")

    def outside(label: str) -> float:
        return med[label][0] - med[label][1]

    lines += ["", f"{r['steps']} training steps, global batch {r['batch']} (each rank {r['batch'] // 2}); in "
              f"process {r['threads']} torch threads by default, each rank OMP_NUM_THREADS = cores / 2.",
              "", f"- torchrun step against the in-process step: {med[RANKS][0] - med[IN_PROCESS][0]:+.2f} s "
              f"(default threads), {med[RANKS][0] - med[ONE_THREAD][0]:+.2f} s (1 thread);",
              f"- outside the training loop: {outside(RANKS):.2f} s under torchrun, {outside(IN_PROCESS):.2f} s "
              f"/ {outside(ONE_THREAD):.2f} s in process: {outside(RANKS) - outside(ONE_THREAD):+.2f} s per step "
              f"is the launch (the bare launch alone: {med[BARE][0]:.2f} s) and the ranks' own imports and set-up "
              f"(one interpreter importing the rank's module: {med[IMPORTS][0]:.2f} s; both ranks do that at once, "
              "on the same cores)."]
    return lines


# ---- main ---------------------------------------------------------------------------------

READING = ("Each step is timed once (the torchrun cases --repeats times), so on a machine shared with other "
           "work a number can be off by a factor: compare the stacks' rows of one run, not runs of "
           "different days.  One server at a time, each has the cores to itself (as far as the machine "
           "allows); all at once, they share them, so the whole `up` is not the sum of the rows.  RSS "
           "counts shared pages in every process; PSS divides them among the processes sharing them.  "
           "PostgreSQL's processes include one backend per open connection of MLflow's and Prefect's "
           "pools.")


def machine_line() -> str:
    load = os.getloadavg()
    return (f"{os.cpu_count()} CPUs, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
            f"(1 / 5 / 15 min)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed train steps of each kind (default 3)")
    parser.add_argument("--no-torchrun", action="store_true", help="leave out the torchrun measurement")
    parser.add_argument("--no-local", action="store_true", help="measure the team stack only")
    parser.add_argument("--timeout", type=float, default=300, help="seconds each `up` may take (default 300)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "team_stack.md")
    parser.add_argument("--note", default="", help="a line about the machine's state, written under the header")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    start_line = machine_line()
    t0 = time.perf_counter()
    results = {"team": measure_stack(True, args.timeout)}
    if not args.no_local:
        results["local"] = measure_stack(False, args.timeout)
    lines = ["# Team stack vs local stack, and the torchrun launch", "",
             f"Machine: {start_line} at the start, {machine_line()} at the end of the stacks' part."
             + (f" {args.note}" if args.note else ""), "", READING, "", "## Servers", ""] + stack_tables(results)
    if not args.no_torchrun:
        r = measure_torchrun(args.repeats)
        lines += ["", "## torchrun launch per step", "", f"Load average before this part: {machine_line()}.",
                  ""] + torchrun_table(r)
    lines += ["", f"Command: `.venv/bin/python benchmarks/team_stack.py --repeats {args.repeats}"
              + (" --no-torchrun" if args.no_torchrun else "") + (" --no-local" if args.no_local else "")
              + (" --note TEXT" if args.note else "")
              + f"` ({time.perf_counter() - t0:.0f} s in all); machine at the end: {machine_line()}."]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_bare_rank() if sys.argv[1:] == [BARE_FLAG] else main())

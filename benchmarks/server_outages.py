"""One `dmops run -p tiny` against a stack of its own, with a fault injected once the teacher has
written its first checkpoint (issue 15): how long until the run ends, and what it says.

    python benchmarks/server_outages.py mlflow-dead  --set train.steps=100000
    python benchmarks/server_outages.py mlflow-hung  --set train.steps=100000
    python benchmarks/server_outages.py prefect-dead --set train.steps=200
    python benchmarks/server_outages.py s3-dead      --set train.steps=200 --rerun
    python benchmarks/server_outages.py s3-restart   --set train.steps=200 --rerun
    python benchmarks/server_outages.py sigkill      --set train.steps=200 --rerun

Faults: `<server>-dead` SIGKILLs the server's process group and leaves it down (with --rerun:
starts it again once the run ended); `mlflow-hung` SIGSTOPs MLflow (connections accepted,
never answered); `s3-restart` kills the store and starts it again 5 s later; `sigkill` kills
the flow's own process group.  --rerun then runs the pipeline again with the same settings.
`--env K=V` sets a variable for the runs (e.g. DMOPS_METRICS_MAX_OUTAGE_S=30).  Prints the
time from the fault to the run's exit, its exit code and last lines; the rerun's resume,
registration and promotion lines.  A run takes 1-6 minutes on 2 cores."""

from __future__ import annotations

import argparse
import glob
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from infra import Stack, StackSettings  # noqa: E402
from infra.ports import free_ports  # noqa: E402
from infra.processes import read_pid_file  # noqa: E402
from user_repo import make_user_repo, params_for  # noqa: E402

FAULTS = ("mlflow-dead", "mlflow-hung", "prefect-dead", "s3-dead", "s3-restart", "sigkill")
SERVICE = {"mlflow": "mlflow", "prefect": "prefect", "s3": "seaweedfs"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fault", choices=FAULTS)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--rerun", action="store_true")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix=f"outage-{args.fault}-"))
    s3_port, mlflow_port, prefect_port = free_ports(3)
    stack = Stack(StackSettings(state_dir=root / "state", s3_port=s3_port, mlflow_port=mlflow_port,
                                prefect_port=prefect_port))
    stack.up()
    try:
        return measure(stack, root, args)
    finally:
        stack.down()


def measure(stack: Stack, root: Path, args) -> int:
    t0 = time.monotonic()

    def say(line: str) -> None:
        print(f"[{time.monotonic() - t0:7.1f} s] {line}", flush=True)

    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_", "AWS_", "DMOPS_"))}
    env.update(stack.client_env(), PREFECT_HOME=str(root / "prefect-home"),
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    env.update(dict(kv.split("=", 1) for kv in args.env))
    (root / "prefect-home").mkdir()
    (root / "repo").mkdir()
    repo = make_user_repo(root / "repo", stack.settings.data_bucket, params_for("outages", "outages"))
    log = root / "run.log"
    run_args = ["--set", "train.checkpoint_every=10", *[x for kv in args.overrides for x in ("--set", kv)]]

    def start() -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "flows.cli", "run", *run_args], cwd=repo, env=env,
                                stdout=open(log, "a"), stderr=subprocess.STDOUT, start_new_session=True)

    proc = start()
    say("run started")
    while proc.poll() is None and not glob.glob(str(repo / "runs/pipeline/*/teacher/checkpoints/latest")):
        time.sleep(0.05)
    server = SERVICE.get(args.fault.split("-")[0])
    if args.fault == "sigkill":
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        pid = read_pid_file(stack.layout.pid_file(server)).pid
        os.killpg(pid, signal.SIGSTOP if args.fault == "mlflow-hung" else signal.SIGKILL)
    fault_at = time.monotonic()
    say(f"fault {args.fault} injected at the first checkpoint")
    if args.fault == "s3-restart":
        time.sleep(5)
        stack.up(services=[server])
        say("store started again")
    rc = proc.wait(timeout=3600)
    say(f"run exited with code {rc}, {time.monotonic() - fault_at:.1f} s after the fault")
    print("\n".join(log.read_text().strip().splitlines()[-4:]))
    if args.fault == "mlflow-hung":
        os.killpg(read_pid_file(stack.layout.pid_file("mlflow")).pid, signal.SIGCONT)
    if args.rerun:
        if args.fault.endswith("-dead"):
            stack.up(services=[server])
        open(log, "a").write("\n==== rerun ====\n")
        rerun_t0 = time.monotonic()
        rc = start().wait(timeout=3600)
        say(f"rerun exited with code {rc} after {time.monotonic() - rerun_t0:.1f} s")
        rerun = log.read_text().split("==== rerun ====")[-1].splitlines()
        print("\n".join(line for line in rerun
                        if any(word in line for word in ("resuming", "registered", "promotion:", "error:"))))
    print(f"log: {log}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

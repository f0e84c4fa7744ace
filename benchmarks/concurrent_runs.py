"""Start several whole pipeline runs at the same moment against one registry and check what a
team needs from concurrent runs: the best model ends as champion, every decision is in the
promotion history, every release verifies, nothing is left pending or locked.

    python benchmarks/concurrent_runs.py --runs 4

Each run is `dmops run --profile tiny` in its own clone of this repository (as two machines of
a team would run it), with its own `train.steps` (5, 20, 80, 320, ...) so that the models differ
in quality, all registering under one model name.  A stack of its own runs on free ports in a
temporary folder.  Prints one row per run and per decision, then the checks; exit code 1 when a
check fails.  About 5-10 minutes for 4 runs on a 2-core machine."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from infra import Stack, StackSettings  # noqa: E402
from infra.ports import free_ports  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=4)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="dmops-concurrent-"))
    s3_port, mlflow_port, prefect_port = free_ports(3)
    stack = Stack(StackSettings(state_dir=tmp / "state", s3_port=s3_port, mlflow_port=mlflow_port,
                                prefect_port=prefect_port), log=lambda line: None)
    stack.up()
    try:
        env = {**os.environ, **stack.client_env(), "PREFECT_HOME": str(tmp / "prefect-home")}
        (tmp / "prefect-home").mkdir()
        os.environ.update(env)
        return _race(tmp, env, stack, args.runs)
    finally:
        stack.down()


def _race(tmp: Path, env: dict, stack: Stack, runs: int) -> int:
    model = f"concurrent-{uuid.uuid4().hex[:6]}"
    steps = [5 * 4 ** i for i in range(runs)]
    procs = {}
    for i, n in enumerate(steps):
        clone = tmp / f"run-{i}"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        cmd = [sys.executable, "-m", "flows.cli", "run", "--profile", "tiny", "--repo", str(clone),
               "--set", f"pipeline.model_name={model}", "--set", f"train.steps={n}"]
        log = open(tmp / f"run-{i}.log", "w")
        procs[n] = (subprocess.Popen(cmd, cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT),
                    time.monotonic(), log)
    print(f"{runs} runs of {model} started together (train.steps {steps}); logs in {tmp}")
    print(f"{'train.steps':>11}  {'exit':>4}  {'minutes':>7}  last line")
    failed = 0
    for n, (proc, t0, log) in procs.items():
        code = proc.wait()
        log.close()
        lines = (tmp / f"run-{list(procs).index(n)}.log").read_text().strip().splitlines()
        failed += code != 0
        print(f"{n:>11}  {code:>4}  {(time.monotonic() - t0) / 60:>7.1f}  {lines[-1] if lines else ''}")
    return _check(stack, model, runs, failed)


def _check(stack: Stack, model: str, runs: int, failed: int) -> int:
    from tasks.adapters.promotion_history import read_history
    from tasks.adapters.promotion_lock import lease_key
    from tasks.adapters.pending_promotion import read_pending
    from tasks.adapters.registry import champion_version
    from tasks.adapters.release import verify_release

    s3, bucket = stack.s3_client(), stack.settings.releases_bucket
    history = read_history(s3, bucket, model)
    print(f"\n{'version':>7}  {'decision':<11}  {'fid':>9}  {'vs champion':>11}  {'previous':>8}")
    for e in history:
        against = "-" if e["champion_value"] is None else f"{e['champion_value']:.4g}"
        print(f"{e['version']:>7}  {e['decision']:<11}  {e['challenger_value']:>9.4g}  "
              f"{against:>11}  {e['previous_champion'] or '-':>8}")
    champion = champion_version(model)
    fid = {e["version"]: e["challenger_value"] for e in history}
    best = min(fid, key=fid.get) if fid else None
    chain = all(a["champion"] == b["previous_champion"] for a, b in zip(history, history[1:]))
    releases = [e["release"] for e in history if e["decision"] == "promoted"]
    verified = sum(1 for uri in releases if verify_release(s3, uri))
    checks = {
        "every run finished": failed == 0,
        f"every decision in the history ({len(history)} of {runs})": len(history) == runs,
        "each decided against the champion the one before left": chain,
        f"champion v{champion} is the best by FID (v{best})":
            best is not None and fid[champion] <= fid[best] * 1.02,
        f"every release verifies ({verified} of {len(releases)})": verified == len(releases),
        "nothing pending, no lease left": read_pending(s3, bucket, model) is None and
            s3.list_objects_v2(Bucket=bucket, Prefix=lease_key(model))["KeyCount"] == 0,
    }
    print()
    for what, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'}  {what}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

"""How long `dmops` takes to refuse a bad argument: wall time of the whole process, as a user
waits for it, for one bad argument of each command, with `dmops --help` and `import torch` as
references.  Prints a markdown table (median and max over --repeats) and writes it to
benchmarks/results/cli_latency.md; progress goes to stderr.

    .venv/bin/python benchmarks/cli_latency.py [--repeats 5] [--out PATH]

Every command line runs without any server's variables and with the local stack looked for in
an empty folder, so a check that failed to stop the command still never reaches a server.
Target: every refusal well under one second on the 2-core build machine (issue 11: `dmops
sample` took 4.5-6 s, importing torch before it looked at its arguments).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVER_VARS = ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL",
               "MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")

BAD = [
    ["sample", "-d", ".", "--steps", "-1"],
    ["sample", "--model", "digits"],
    ["sample", "-d", ".", "--sampler", "euler"],
    ["sample", "-d", "/nonexistent"],
    ["sample", "--release", "s3:/x"],
    ["evaluate", "-d", ".", "--nfe", "1,x"],
    ["distill", "--method", "magic", "--teacher", "."],
    ["train", "-p", "nosuch"],
    ["config", "-p", "nosuch"],
    ["prepare", "--fingerprint", "/nonexistent.json"],
    ["history", "digits-diffusion", "--at", "yesterday"],
    ["reproduce", "digits"],
    ["run", "-p", "nosuch"],
    ["deploy", "--pool", "elsewhere"],
    ["worker", "--pool", " "],
    ["up", "--s3-port", "0"],
]
# the environment's absence is answered as early: exit 1 naming the fix
MISSING_ENV = [["sample", "--model", "digits-diffusion@champion"], ["run", "-p", "tiny"]]
REFERENCES = [("dmops --help", [sys.executable, "-m", "flows.cli", "--help"]),
              ("python -c 'import torch' (avoided)", [sys.executable, "-c", "import torch"])]


def _time(cmd: list[str], env: dict[str, str], repeats: int) -> tuple[list[float], int]:
    times, code = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        times.append(time.perf_counter() - t0)
        code = proc.returncode
    return times, code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cli_latency.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dmops-no-stack-") as empty:
        env = {k: v for k, v in os.environ.items() if k not in SERVER_VARS}
        env["DMOPS_STACK_DIR"] = empty
        rows = []
        cases = ([("dmops " + " ".join(a), [sys.executable, "-m", "flows.cli", *a]) for a in BAD + MISSING_ENV]
                 + REFERENCES)
        for label, cmd in cases:
            print(f"timing {label} ...", file=sys.stderr, flush=True)
            times, code = _time(cmd, env, args.repeats)
            rows.append((label, code, statistics.median(times), max(times)))
    worst = max(r[2] for r in rows[:len(BAD) + len(MISSING_ENV)])
    lines = [f"`dmops` refusing bad input: wall time of the whole process, {args.repeats} runs each "
             f"({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})", "",
             "| command line | exit | median s | max s |", "|---|---|---|---|"]
    lines += [f"| `{label}` | {code} | {median:.2f} | {top:.2f} |" for label, code, median, top in rows]
    lines += ["", f"slowest refusal (median): {worst:.2f} s"]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

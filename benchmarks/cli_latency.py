"""How long `dmops` takes to refuse a bad argument: wall time of the whole process, as a user
waits for it, for one bad argument of each command, with `dmops --help` and `import torch` as
references.  Prints a markdown table (median and max over --repeats) and writes it to
benchmarks/results/cli_latency.md; progress goes to stderr.

    .venv/bin/python benchmarks/cli_latency.py [--repeats 5] [--out PATH] [--no-stack]

The bad arguments run without any server's variables and with the local stack looked for in
an empty folder, so a check that failed to stop the command still never reaches a server.
Target: every refusal well under one second on the 2-core build machine (issue 11: `dmops
sample` took 4.5-6 s, importing torch before it looked at its arguments).

Well-formed requests the registry or the releases bucket cannot answer (an unknown alias or
model; exit 1) need a server: the benchmark starts a stack of its own (temporary folder, free
ports; about 20 s to start, 15 s to stop) holding one registered model without versions,
`digits-diffusion`, unless --no-stack.  Those answers import MLflow or boto3 (the request needs
them) but not torch.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

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
    ["sample", "-d", "tests"],                     # a folder that holds no model
    ["sample", "-d", ".", "--n", "0"],              # Click's own range check: one line too
    ["history"],                                     # a missing argument
    ["up", "--state-dir", "/nonexistent/x"],
    ["status", "--state-dir", "/nonexistent/x"],
]
# the environment's absence is answered as early: exit 1 naming the fix
MISSING_ENV = [["sample", "--model", "digits-diffusion@champion"], ["run", "-p", "tiny"]]
# well-formed, but the registry / the releases bucket holds no such thing: exit 1 (needs a stack)
REGISTRY = [["sample", "--model", "digits-diffusion@nosuch"], ["reproduce", "digits-diffusion@nosuch"],
            ["sample", "--model", "nosuch@champion"], ["history", "nosuch"]]
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


@contextmanager
def _stack_env(base: dict[str, str]) -> Iterator[dict[str, str]]:
    """`base` plus the client environment of a stack of its own (temporary folder, free ports)
    holding the registered model `digits-diffusion` without versions; stopped afterwards."""
    sys.path.insert(0, str(ROOT))
    from infra import Stack, StackSettings
    from infra.ports import free_ports

    with tempfile.TemporaryDirectory(prefix="dmops-bench-stack-") as state:
        s3, mlflow_port, prefect = free_ports(3)
        stack = Stack(StackSettings(state_dir=Path(state), s3_port=s3, mlflow_port=mlflow_port,
                                    prefect_port=prefect), log=lambda line: print(line, file=sys.stderr))
        stack.up()
        try:
            env = {**base, **stack.client_env()}
            subprocess.run([sys.executable, "-c", "from mlflow.tracking import MlflowClient; "
                            "MlflowClient().create_registered_model('digits-diffusion')"],
                           env=env, check=True, capture_output=True, timeout=120)
            yield env
        finally:
            stack.down()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cli_latency.md")
    parser.add_argument("--no-stack", action="store_true",
                        help="Leave out the requests that need servers (no stack is started).")
    args = parser.parse_args()

    def timed(label_cmds, env) -> list[tuple]:
        rows = []
        for label, cmd in label_cmds:
            print(f"timing {label} ...", file=sys.stderr, flush=True)
            times, code = _time(cmd, env, args.repeats)
            rows.append((label, code, statistics.median(times), max(times)))
        return rows

    def dmops(cases):
        return [("dmops " + " ".join(a), [sys.executable, "-m", "flows.cli", *a]) for a in cases]

    base = {k: v for k, v in os.environ.items() if k not in SERVER_VARS}
    with tempfile.TemporaryDirectory(prefix="dmops-no-stack-") as empty:
        rows = timed(dmops(BAD + MISSING_ENV), {**base, "DMOPS_STACK_DIR": empty})
    refusals = list(rows)
    if not args.no_stack:
        with _stack_env(base) as env:
            registry_rows = timed(dmops(REGISTRY), env)
        rows += registry_rows
    rows += timed(REFERENCES, base)
    worst = max(r[2] for r in refusals)
    lines = [f"`dmops` refusing bad input: wall time of the whole process, {args.repeats} runs each "
             f"({os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})", "",
             "| command line | exit | median s | max s |", "|---|---|---|---|"]
    lines += [f"| `{label}` | {code} | {median:.2f} | {top:.2f} |" for label, code, median, top in rows]
    lines += ["", f"slowest refusal of a bad argument or a missing environment (median): {worst:.2f} s"]
    if not args.no_stack:
        lines += [f"slowest answer the registry or bucket cannot give (median, a request to a "
                  f"server of its own): {max(r[2] for r in registry_rows):.2f} s"]
    text = "\n".join(lines)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

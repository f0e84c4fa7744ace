"""Run `dmops` command lines in-process (Typer's CliRunner) and report, for each, the exit
code, stderr, wall time and which heavy libraries it had imported by the time it returned.

Usage: python tests/cli_probe.py < cases.json > results.json, where cases.json is a JSON list
of argument lists.  The CLI is imported once; each case runs in a forked child, so one case's
imports never count for another and every case starts as a fresh `dmops` would (without the
interpreter's start).  Used by tests/test_cli_arguments.py and benchmarks/cli_latency.py.
"""

from __future__ import annotations

import json
import os
import sys
import time

# the libraries that take seconds to import; no argument check may need them
HEAVY = ("torch", "diffusers", "mlflow", "prefect", "boto3", "great_expectations", "dvc",
         "pandas", "sklearn")


def _run_one(args: list[str]) -> dict:
    from typer.testing import CliRunner

    from flows.cli import app

    t0 = time.perf_counter()
    result = CliRunner().invoke(app, args)
    seconds = time.perf_counter() - t0
    return {"args": args, "exit_code": result.exit_code, "stderr": result.stderr,
            "stdout": result.stdout, "seconds": seconds,
            "exception": None if result.exception is None or isinstance(result.exception, SystemExit)
            else repr(result.exception),
            "heavy": sorted(m for m in HEAVY if m in sys.modules)}


def probe(cases: list[list[str]]) -> list[dict]:
    """One result per case (see the module docstring), each run in a forked child."""
    import importlib

    # imported once, before the forks: what every `dmops` start pays, not part of a case
    for module in ("flows.cli", "typer.testing"):
        importlib.import_module(module)

    results = []
    for args in cases:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:   # child: run the case, send the result, leave without cleanup handlers
            os.close(read)
            try:
                payload = json.dumps(_run_one(args)).encode()
            except BaseException as e:   # report, never hang the parent
                payload = json.dumps({"args": args, "exit_code": None, "stderr": repr(e),
                                      "stdout": "", "seconds": None, "exception": repr(e),
                                      "heavy": []}).encode()
            with os.fdopen(write, "wb") as out:
                out.write(payload)
            os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as inp:
            data = inp.read()
        os.waitpid(pid, 0)
        results.append(json.loads(data))
    return results


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())
    json.dump(probe(json.load(sys.stdin)), sys.stdout)

"""Restart the local stack many times and check that each `up` returns a store that serves
every object written before (issue 9, "ready means ready").

    python benchmarks/stack_round_trips.py --rounds 20

A round: write an object, `down`, `up`, then read back every object written so far with a
client that does not retry (botocore max_attempts=1), so a store that is not ready shows up as
a failed read instead of being hidden by client retries. The stack runs on free ports in a
temporary folder (or --state-dir). Prints one line per round and a summary; exit code 1 when
any read failed. About 35-50 s a round on a 2-core machine (SeaweedFS's `down` alone is 15 s)."""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infra import Stack, StackSettings  # noqa: E402
from infra.credentials import load_credentials  # noqa: E402
from infra.ports import free_ports  # noqa: E402
from infra.s3 import s3_client  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--state-dir", type=Path, default=None, help="default: a temporary folder")
    args = parser.parse_args()

    root = args.state_dir or Path(tempfile.mkdtemp(prefix="dmops-round-trips-")) / "state"
    s3, mlflow, prefect = free_ports(3)
    stack = Stack(StackSettings(state_dir=root, s3_port=s3, mlflow_port=mlflow, prefect_port=prefect),
                  log=lambda line: None)
    written: dict[str, str] = {}
    passed = 0
    try:
        t0 = time.monotonic()
        stack.up()
        print(f"cold up {time.monotonic() - t0:.1f} s, state {root}", flush=True)
        for r in range(1, args.rounds + 1):
            client = s3_client(stack.settings.s3_url, load_credentials(stack.layout.credentials), attempts=1)
            key, body = f"round-trips/{r:03d}.bin", os.urandom(4096)
            client.put_object(Bucket=stack.settings.data_bucket, Key=key, Body=body)
            written[key] = hashlib.sha256(body).hexdigest()
            t_down = time.monotonic()
            stack.down()
            t_up = time.monotonic()
            stack.up()
            t_read = time.monotonic()
            errors = []
            for k, digest in written.items():
                try:
                    got = client.get_object(Bucket=stack.settings.data_bucket, Key=k)["Body"].read()
                    if hashlib.sha256(got).hexdigest() != digest:
                        errors.append(f"{k}: other bytes")
                except Exception as e:   # any failure of the first read is what this counts
                    errors.append(f"{k}: {type(e).__name__}: {e}")
            passed += not errors
            print(f"round {r:2d}: down {t_up - t_down:5.1f} s, up {t_read - t_up:5.1f} s, "
                  f"read {len(written)} objects: {'ok' if not errors else 'FAILED ' + errors[0]}", flush=True)
    finally:
        stack.down()
    print(f"{passed} of {args.rounds} round trips read every object back on the first try")
    return 0 if passed == args.rounds else 1


if __name__ == "__main__":
    raise SystemExit(main())

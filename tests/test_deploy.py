"""`dmops deploy` prints what the Prefect server now holds, one whole line per deployment (its
flow/name, work pool, schedule, parameters and UI page with the full id), never a transcript of
`prefect deploy` cut to its last characters (which ended mid-identifier), and names each
deployment it moved from another work pool.  Against the `stack`
fixture's Prefect server, with a copy of infra/prefect.yaml whose names are the test's own."""

import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from prefect_api import prefect_api

ROOT = Path(__file__).resolve().parents[1]
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@pytest.mark.slow
def test_deploy_prints_each_deployment_whole(stack, tmp_path):
    suffix = uuid.uuid4().hex[:8]
    pool = f"test-deploy-{suffix}"
    spec = yaml.safe_load((ROOT / "infra" / "prefect.yaml").read_text())
    for deployment in spec["deployments"]:
        deployment["name"] = f"{deployment['name']}-{suffix}"
        deployment["work_pool"]["name"] = pool
    names = [d["name"] for d in spec["deployments"]]
    prefect_file = tmp_path / "prefect.yaml"
    prefect_file.write_text(yaml.safe_dump(spec, sort_keys=False))
    try:
        proc = subprocess.run([sys.executable, "-m", "flows.cli", "deploy", "--prefect-file",
                               str(prefect_file)], cwd=ROOT, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        held = prefect_api("POST", "/deployments/filter", {"deployments": {"name": {"any_": names}}})
        assert sorted(d["name"] for d in held) == sorted(names)
        lines = proc.stdout.splitlines()
        for d in held:
            [line] = [x for x in lines if f"training-pipeline/{d['name']} " in x]
            assert f"pool {pool}" in line and d["id"] in line and "params profile=quick" in line, line
            schedule = "cron 0 2 * * * (UTC)" if d["name"].startswith("nightly") else "no schedule"
            assert schedule in line, line
        # every id printed is whole, and the way to serve them is dmops worker
        ids = re.findall(r"[0-9a-f]{8}-[0-9a-f-]*", proc.stdout)
        assert ids and all(UUID.fullmatch(i) for i in ids), ids
        assert f"`dmops worker` (pool {pool})" in proc.stdout and "prefect worker start" not in proc.stdout
        assert "note:" not in proc.stdout   # nothing was moved

        # the same names on another pool: the server moves them, and the deploy says so
        for deployment in spec["deployments"]:
            deployment["work_pool"]["name"] = pool + "-other"
        prefect_file.write_text(yaml.safe_dump(spec, sort_keys=False))
        again = subprocess.run([sys.executable, "-m", "flows.cli", "deploy", "--prefect-file",
                                str(prefect_file)], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        for name in names:
            assert (f"note: deployment {name!r} was on work pool {pool!r} and is now on {pool + '-other'!r}: "
                    f"a worker of {pool!r} no longer runs it") in again.stdout.splitlines(), again.stdout
    finally:
        for d in prefect_api("POST", "/deployments/filter", {"deployments": {"name": {"any_": names}}}) or []:
            prefect_api("DELETE", f"/deployments/{d['id']}")
        prefect_api("DELETE", f"/work_pools/{pool}")
        prefect_api("DELETE", f"/work_pools/{pool}-other")

"""The first pipeline run of the end-to-end tests, shared by every test module that looks at it
(tests/test_pipeline.py builds its scenarios on it; tests/test_mlflow_ui.py opens the UIs at the
links it printed): one `dmops run` with deliberately weak settings (1 training step, tiny
profile) in a user's repository, against the session's stack. Session-scoped so that the
suite runs it once; conftest.py makes the fixtures visible to every module.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from user_repo import make_user_repo, params_for

MODEL = "pipeline-test"
EXPERIMENT = "pipeline-test"
WEAK = ["--set", "train.steps=1"]


def run(*args, cwd, check=True, timeout=900, env=None):
    """`python -m flows.cli *args` in `cwd`, as a user runs dmops (with the environment `env`,
    default this process's, with OMP_NUM_THREADS=1 unless it sets one); with `check`, exit
    code 0 or the assertion shows the end of both streams."""
    # one torch thread, as in-process tests take (conftest.py's one_torch_thread): on the shared
    # 2-core machine torch's second OpenMP thread waits for a core that the servers or another
    # process hold (the same tiny run's extractor training took 36 s once and 7 s the next time)
    env = {**(os.environ if env is None else env)}
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.run([sys.executable, "-m", "flows.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=env)
    if check:
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="session")
def pipeline_repo(tmp_path_factory, stack):
    """A user's checkout: params.yaml, dvc.yaml, the deployments file and the code (the flow,
    its steps and the ML core, which `python -m flows.cli` imports from here), in git + DVC."""
    return make_user_repo(tmp_path_factory.mktemp("repo"), stack.settings.data_bucket,
                          params_for(MODEL, EXPERIMENT))


@pytest.fixture(scope="session")
def first_pipeline_run(pipeline_repo):
    """The completed process of the first `dmops run` (weak model: it becomes the champion,
    version 1, of MODEL in experiment EXPERIMENT)."""
    return run("run", "--repo", pipeline_repo, *WEAK, cwd=pipeline_repo)

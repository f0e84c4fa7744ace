"""OpenMP's wait policy: the core sets PASSIVE before torch loads its OpenMP runtime (spinning
idle threads that lose their core make small steps many times slower on a shared machine), and
keeps a policy the user chose."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# what the runtime of the process itself sees: libgomp reads the variable once, when torch loads it
SHOW = "import diffusion, torch, os; print(os.environ['OMP_WAIT_POLICY'])"


@pytest.mark.parametrize("given, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_the_core_sets_the_passive_policy_unless_the_user_chose_one(given, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given is not None:
        env["OMP_WAIT_POLICY"] = given
    out = subprocess.run([sys.executable, "-c", SHOW], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == expected


def test_a_dmops_command_passes_it_to_the_processes_it_starts():
    """The DVC stage's `dmops prepare` and torchrun's ranks are children of a step: they inherit
    the policy set in the step's process."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = ("import diffusion, subprocess, sys; "
            "print(subprocess.run([sys.executable, '-c', 'import os; print(os.environ[\"OMP_WAIT_POLICY\"])'],"
            " capture_output=True, text=True).stdout.strip())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "PASSIVE"

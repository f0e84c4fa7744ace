"""The DVC remote's local settings (tasks/adapters/dvc.py's configure_remote and
remote_object_uri): written in-process with DVC's own configuration code, read back by the real
`dvc` command, and left alone when already set."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.adapters.dvc import DVCError, configure_remote, remote_object_uri

DVC = str(Path(sys.executable).parent / "dvc")
ENDPOINT = "http://127.0.0.1:8333"


def dvc(repo, *args) -> str:
    return subprocess.run([DVC, *args], cwd=repo, check=True, capture_output=True,
                          text=True).stdout


def local_settings(repo) -> dict[str, str]:
    """.dvc/config.local as the `dvc` command reads it."""
    return dict(line.split("=", 1) for line in dvc(repo, "config", "--local", "--list").splitlines())


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A git + DVC repository whose committed config defines remote dmops (made once: each
    `dvc` command is a Python start-up)."""
    made = tmp_path_factory.mktemp("template")
    subprocess.run(["git", "init", "-q"], cwd=made, check=True)
    dvc(made, "init", "-q")
    dvc(made, "remote", "add", "-d", "dmops", "s3://dmops-dvc/datasets")
    return made


@pytest.fixture
def repo(template, tmp_path):
    """A fresh copy of the template for each test."""
    return Path(shutil.copytree(template, tmp_path / "repo", symlinks=True))


def test_the_dvc_command_reads_the_endpoint_and_timeouts_from_config_local(repo):
    configure_remote(repo, "dmops", ENDPOINT)
    assert local_settings(repo) == {"remote.dmops.endpointurl": ENDPOINT,
                                    "remote.dmops.connect_timeout": "5",
                                    "remote.dmops.read_timeout": "60"}
    # the committed config keeps only the remote's url; no credentials anywhere
    assert "127.0.0.1" not in (repo / ".dvc" / "config").read_text()
    local = (repo / ".dvc" / "config.local").read_text()
    assert "access_key" not in local and "secret" not in local
    assert dvc(repo, "remote", "list").split()[:2] == ["dmops", "s3://dmops-dvc/datasets"]


def test_a_configured_remote_is_not_written_again_and_a_moved_endpoint_is(repo):
    configure_remote(repo, "dmops", ENDPOINT)
    local = repo / ".dvc" / "config.local"
    os.utime(local, (1, 1))
    configure_remote(repo, "dmops", ENDPOINT)
    assert local.stat().st_mtime == 1
    configure_remote(repo, "dmops", "http://127.0.0.1:9000")
    assert local_settings(repo) == {"remote.dmops.endpointurl": "http://127.0.0.1:9000",
                                    "remote.dmops.connect_timeout": "5",
                                    "remote.dmops.read_timeout": "60"}


def test_an_undefined_remote_is_one_error_naming_the_remotes_and_the_fix(repo):
    with pytest.raises(DVCError) as raised:
        configure_remote(repo, "other", ENDPOINT)
    message = str(raised.value)
    assert "'other' is not defined (remotes: dmops)" in message
    assert "dvc remote add -d other" in message
    assert not (repo / ".dvc" / "config.local").exists()
    with pytest.raises(DVCError, match="'other' is not defined"):
        remote_object_uri(repo, "other", "3f1c" + "0" * 28 + ".dir")


def test_the_object_uri_is_the_remotes_url_in_dvc3s_md5_layout(repo):
    md5 = "3f1c" + "0" * 28 + ".dir"
    assert (remote_object_uri(repo, "dmops", md5)
            == f"s3://dmops-dvc/datasets/files/md5/3f/1c{'0' * 28}.dir")

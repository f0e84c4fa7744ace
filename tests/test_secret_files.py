"""The stacks' secrets files (S3 keys, team accounts, PostgreSQL passwords): one that is missing
or damaged is a StackError naming the file and the fix, never a KeyError or JSON traceback, and
never the secret itself."""

from __future__ import annotations

import json

import pytest

from infra.credentials import load_credentials, load_or_create_credentials
from infra.errors import StackError
from infra.postgres_db import load_postgres_credentials
from infra.team import load_or_create_team_credentials, load_team_credentials

LOADERS = {
    "s3": (load_credentials, "no stack credentials at", "`dmops up`"),
    "team": (load_team_credentials, "no team accounts at", "`dmops up --team`"),
    "postgres": (load_postgres_credentials, "no PostgreSQL credentials at", "`dmops up --team`"),
}


@pytest.mark.parametrize("kind", LOADERS)
def test_a_missing_or_damaged_secrets_file_names_the_file_and_the_fix(kind, tmp_path):
    load, missing, fix = LOADERS[kind]
    path = tmp_path / "secrets.json"
    with pytest.raises(StackError, match=missing) as error:
        load(path)
    assert fix in str(error.value)
    for damaged in ("{not json", json.dumps({"unexpected": "s3cr3t-value"}), "[]"):
        path.write_text(damaged)
        with pytest.raises(StackError, match=f"{path} is not a valid") as error:
            load(path)
        assert "s3cr3t-value" not in str(error.value)


def test_what_is_written_reads_back(tmp_path):
    written = load_or_create_credentials(tmp_path / "s3.json")
    assert load_credentials(tmp_path / "s3.json") == written
    team = load_or_create_team_credentials(tmp_path / "team.json")
    assert load_team_credentials(tmp_path / "team.json") == team


@pytest.mark.parametrize("team", [False, True], ids=["local", "team"])
def test_the_default_state_folders_and_every_secret_in_them_are_ignored_by_git(team):
    """The stacks' state folders in a checkout hold keys and passwords: `git add -A` must never
    pick them up."""
    import subprocess
    from pathlib import Path

    from infra.settings import default_state_dir

    root = Path(__file__).resolve().parents[1]
    folder = default_state_dir(team)
    assert folder.parent == root, folder        # a checkout: the folder is in it
    files = [folder / name for name in ("credentials.json", "team-credentials.json",
                                        "postgres/credentials.json", "mlflow/basic_auth.ini")]
    proc = subprocess.run(["git", "check-ignore", "--no-index", *map(str, files)], cwd=root,
                          capture_output=True, text=True)
    assert proc.stdout.split() == list(map(str, files)), proc.stdout + proc.stderr

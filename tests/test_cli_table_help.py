"""What `dmops` says about tables and profiles: the help names every profile params.yaml has,
a table's entry keys and processed files, every sampler; `dmops config` prints only the
settings the dataset's kind reads (a new-user trial found image-only keys printed for a table,
"arrays + manifest" for a table's prepare, ipndm missing and only "quick ... or full")."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from flows.cli import app
from flows.cli_options import sampler_names

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"


def _out(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), terminal_width=10_000)
    assert result.exit_code == 0, (args, result.stdout, result.stderr)
    return " ".join(result.stdout.split())   # Click's rewrapping aside


def test_the_profile_option_names_every_profile_of_params_yaml():
    profiles = yaml.safe_load(PARAMS.read_text())["profiles"]
    for command in ("run", "config", "prepare", "train"):
        text = _out(command, "--help")
        missing = [name for name in profiles if f" {name} " not in text.replace(",", " ")]
        assert not missing, (command, missing)


def test_prepare_help_says_how_a_table_is_declared_and_what_it_writes():
    text = _out("prepare", "--help")
    assert "arrays + manifest" in text and "table.parquet + schema.json" in text, text
    for key in ("name: table", "path", "target", "id_column", "columns", "categorical",
                "numerical | integer | categorical", "analog_bits | onehot", "sep"):
        assert key in text, key


def test_the_sampler_option_lists_every_sampler():
    text = _out("sample", "--help")
    assert " | ".join(sampler_names()) in text, text


@pytest.mark.parametrize("profile, absent, present", [
    ("churn", ["image_size", "channels", "fit", "expected_shape", "value_low", "value_high",
               "max_label_kl"], ["target", "categorical", "columns", "max_duplicate_fraction"]),
    ("quick", ["target", "id_column", "categorical", "columns"], ["image_size", "expected_shape"]),
])
def test_config_prints_only_what_the_datasets_kind_reads(profile, absent, present):
    result = CliRunner().invoke(app, ["config", "-c", str(PARAMS), "-p", profile])
    assert result.exit_code == 0, result.stderr
    comment = [line for line in result.stdout.splitlines() if line.startswith("#")]
    settings = yaml.safe_load(result.stdout)
    data, gate = settings["data"], settings["pipeline"]["validate_data"]
    shown = {**data, **gate}
    assert not [key for key in absent if key in shown], shown
    assert all(key in shown for key in present), shown
    # what was left out is named, so a reader does not look for it in vain
    said = " ".join(comment)
    assert "do not apply" in said and all(key in said for key in absent), comment

"""A fault of one entry of params.yaml's `datasets` reaches the user once, as one line naming the
entry (`datasets.<name>`), with exit code 2, and blocks only what uses that entry (issue 13's
new-user trial):

- the cheap faults (a missing or unreadable file, a target or id that is no column) are found
  before anything starts (tasks/steps/dataset_entry.py, `check_dataset`), in `dmops run` and in
  the flow itself;
- a fault only reading the whole table finds (a declared schema the values do not fit) is met by
  `dmops prepare` inside `dvc repro`: the DVC adapter raises the stage's own line alone
  (StageRefused), and `dmops run` prints it once, without Prefect's tracebacks, exit code 2,
  nothing trained or registered;
- `dmops prepare` prints a table's schema once and names the entry, not the file;
- another entry's fault (an .xlsx path, a malformed entry) does not block this one's run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from diffusion.data_errors import DataError
from diffusion.data_settings import DataConfig
from tasks.steps.dataset_entry import check_dataset

from pipeline_run import run
from test_table_data_step import small_table
from user_repo import make_user_repo, params_for

ROOT = Path(__file__).resolve().parents[1]
MODEL = "entry-errors"
# a plan's categories declared without 'plus' and 'pro': only reading every row finds that
NARROW = [{"name": "plan", "type": "categorical", "categories": ["basic"]}, {"name": "minutes"},
          {"name": "calls"}, {"name": "churned"}]
# entries that are wrong in themselves: each must block only what uses it
BAD_ENTRIES = {"sheet": {"name": "table", "path": "rows.xlsx"}, "loose": 3,
               "typo": {"name": "table", "path": "customers.csv", "taregt": "churned"},
               "gone": {"name": "table", "path": "gone.csv"}}


def dmops(*args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def error_lines(proc) -> list[str]:
    return [line for line in (proc.stdout + proc.stderr).splitlines() if "error" in line.lower()]


def said_once(proc, *fragments) -> str:
    """The one `error: ` line of `proc`, which holds every fragment, and is the only line of
    either stream that holds the first one."""
    both = proc.stdout + proc.stderr
    errors = [line for line in both.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, both[-4000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert sum(fragments[0] in line for line in both.splitlines()) == 1, both[-4000:]
    assert "Traceback" not in both, both[-4000:]
    return errors[0]


# --- the quick check of an entry, without servers ---------------------------------------------

def _table(tmp_path, **fields) -> DataConfig:
    return DataConfig(name="table", **{"path": "customers.csv", **fields})


@pytest.mark.parametrize("write, fields, fragments", [
    (None, {}, ["datasets.mine (customers.csv): does not exist"]),
    (lambda p: p.write_bytes(b"PK\x03\x04\x14\x00\x06\x00\x08\x00\x00\x00!\x00\xff\xfe\x00\x80"),
     {}, ["datasets.mine (customers.csv): unreadable as csv"]),
    (lambda p: p.write_text("a,b\n"), {}, ["datasets.mine (customers.csv): the table is empty"]),
    (lambda p: small_table(20).to_csv(p, index=False), {"target": "churn"},
     ["datasets.mine (customers.csv): target 'churn' is not a column", "'churned'"]),
    (lambda p: small_table(20).to_csv(p, index=False), {"id_column": "id"},
     ["datasets.mine (customers.csv): id column 'id' is not a column"]),
    (lambda p: p.with_suffix(".pq").write_bytes(b"not parquet"), {"path": "customers.pq"},
     ["datasets.mine (customers.pq): unreadable as parquet"]),
])
def test_a_bad_table_entry_is_one_line_naming_the_entry(tmp_path, write, fields, fragments):
    if write is not None:
        write(tmp_path / "customers.csv")
    with pytest.raises(DataError) as caught:
        check_dataset(_table(tmp_path, **fields), "mine", tmp_path)
    said = str(caught.value)
    assert "\n" not in said and all(f in said for f in fragments), said


def test_a_good_entry_passes_and_parquet_as_pq_reads(tmp_path):
    small_table(20).to_csv(tmp_path / "customers.csv", index=False)
    check_dataset(_table(tmp_path, target="churned", id_column="customer"), "mine", tmp_path)
    small_table(20).to_parquet(tmp_path / "rows.pq", index=False)
    check_dataset(_table(tmp_path, path="rows.pq", target="churned"), "mine", tmp_path)
    from diffusion.tabular.tables import load_table   # .pq: the data section accepts it, so must the reader

    assert len(load_table(tmp_path / "rows.pq", target="churned", id_column="customer").table) == 20
    # a built-in table: its own target and id need no read; another target is checked
    check_dataset(DataConfig(name="churn"), "churn", tmp_path)
    with pytest.raises(DataError, match=r"datasets.mychurn: target 'churned' is not a column"):
        check_dataset(DataConfig(name="churn", target="churned"), "mychurn", tmp_path)
    with pytest.raises(DataError, match=r"datasets.pics: data.path .*pics: does not exist"):
        check_dataset(DataConfig(name="folder", path="pics"), "pics", tmp_path)


# --- `dmops prepare` / `dmops fingerprint`, as DVC's stages run them ----------------------------

@pytest.fixture
def entries_folder(tmp_path):
    """A folder with a params.yaml of the project's datasets, a good table entry `customers`
    and BAD_ENTRIES."""
    small_table(60).to_csv(tmp_path / "customers.csv", index=False)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["datasets"].update(customers={"name": "table", "path": "customers.csv",
                                         "target": "churned", "id_column": "customer"},
                              **BAD_ENTRIES)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return tmp_path


def test_prepare_prints_the_schema_once_and_names_the_entry(entries_folder):
    proc = dmops("prepare", "--set", "dataset=customers", cwd=entries_folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert sum(line.startswith("schema") for line in lines) == 1, proc.stdout
    assert sum("<- target" in line for line in lines) == 1, proc.stdout
    assert lines[0].startswith("table datasets.customers (customers.csv): 60 rows"), proc.stdout
    assert (entries_folder / "data" / "processed" / "customers" / "table.parquet").is_file()


@pytest.mark.parametrize("command", ["prepare", "fingerprint"])
@pytest.mark.parametrize("entry, fragments", [
    ("sheet", ["datasets.sheet", "rows.xlsx", "a table is read from a .csv, .parquet, .pq file"]),
    ("loose", ["datasets.loose: 3 is not a dataset's settings"]),
    ("typo", ["datasets.typo.taregt: unknown key"]),
    ("gone", ["datasets.gone", "gone.csv", "does not exist"]),   # a DataError, not the config's
])
def test_a_bad_entry_is_said_once_by_the_commands_that_use_it(entries_folder, command, entry, fragments):
    proc = dmops(command, "--set", f"dataset={entry}", cwd=entries_folder)
    assert proc.returncode == 2
    said = said_once(proc, *fragments)
    # each fault once: the entry validated as `datasets.<name>` and as `data` said it twice
    assert said.count(fragments[-1]) == 1 and " data:" not in said, said
    assert not (entries_folder / "data").exists()


def test_a_bad_entry_blocks_no_other_dataset(entries_folder):
    proc = dmops("fingerprint", "--set", "dataset=customers", cwd=entries_folder)
    assert proc.returncode == 0, proc.stderr
    assert (entries_folder / "data" / "source" / "customers.json").is_file()
    proc = dmops("config", "-p", "churn", cwd=entries_folder)
    assert proc.returncode == 0 and "sheet" not in proc.stdout, proc.stderr


# --- `dmops run`, end to end against the session's stack ---------------------------------------

@pytest.fixture(scope="module")
def entry_repo(tmp_path_factory, stack):
    """A user's repository: the table `customers` (entry `customers`, its target a column of
    the file) beside BAD_ENTRIES, in git + DVC."""
    repo = tmp_path_factory.mktemp("entry-repo")
    small_table(n=120).to_csv(repo / "customers.csv", index=False)
    params = params_for(MODEL, MODEL)
    params["datasets"].update(customers={"name": "table", "path": "customers.csv",
                                         "target": "churned", "id_column": "customer"},
                              **BAD_ENTRIES)
    params["dataset"] = "customers"
    params["model"]["net"] = {"kind": "mlp", "hidden": 32, "depth": 2}
    params["profiles"]["tiny"].pop("model", None)
    return make_user_repo(repo, stack.settings.data_bucket, params)


def _set_entry(repo: Path, **fields) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["datasets"]["customers"] = {"name": "table", "path": "customers.csv", **fields}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _nothing_made(repo: Path) -> None:
    import mlflow

    assert mlflow.MlflowClient().search_model_versions(f"name='{MODEL}'") == []
    assert not (repo / "runs").exists(), sorted(p.name for p in (repo / "runs").iterdir())


def test_run_refuses_a_target_that_is_no_column_at_once(entry_repo):
    """The quick check in `dmops run`: before servers, Prefect or DVC; BAD_ENTRIES block nothing."""
    _set_entry(entry_repo, target="churn")
    t0 = time.perf_counter()
    proc = run("run", "--repo", entry_repo, cwd=entry_repo, check=False)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 2, proc.stderr[-3000:]
    said_once(proc, "datasets.customers (customers.csv): target 'churn' is not a column",
              "'churned'")
    assert "Flow run" not in proc.stderr and "dvc repro" not in proc.stdout + proc.stderr
    assert seconds < 30, seconds   # a Python start-up and a CSV header, on a loaded machine
    _nothing_made(entry_repo)


@pytest.mark.slow
def test_run_says_a_stage_data_error_once_and_trains_nothing(entry_repo):
    """A declared schema the values do not fit, found by `dmops prepare` inside `dvc repro`
    (the quick check passes: the file reads, the target is a column): the stage's one line,
    once, exit code 2, no Prefect traceback, nothing trained or registered."""
    _set_entry(entry_repo, target="churned", id_column="customer", columns=NARROW)
    proc = run("run", "--repo", entry_repo, cwd=entry_repo, check=False)
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-4000:]
    said = said_once(proc, "column 'plan'", "datasets.customers (customers.csv)", "'plus'")
    assert said.startswith("error: the pipeline stopped: datasets.customers"), said
    assert "prepare@customers" in proc.stdout + proc.stderr   # DVC ran that stage alone
    both = proc.stdout + proc.stderr
    assert both.count("dvc repro prepare@customers in") == 1, both[-3000:]  # no retry of bad data
    assert not any(f"prepare@{name}" in both for name in BAD_ENTRIES), both[-3000:]
    _nothing_made(entry_repo)


def test_the_quick_check_of_a_table_imports_no_torch(tmp_path):
    """`dmops run` answers a bad table entry before servers, Prefect or torch: the check reads a
    CSV's header with pandas alone (diffusion/tabular/table_files.py)."""
    small_table(20).to_csv(tmp_path / "customers.csv", index=False)
    code = ("import sys; from diffusion.data_settings import DataConfig; "
            "from tasks.steps.dataset_entry import check_dataset; "
            f"check_dataset(DataConfig(name='table', path='customers.csv', target='churned'), 'mine', {str(tmp_path)!r}); "
            "print(sorted(m for m in ('torch', 'sklearn', 'prefect', 'mlflow') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr

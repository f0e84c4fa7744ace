"""A table through the whole pipeline, against the session's real stack: `dmops run` on a small
CSV (tiny profile, MLP denoiser) versions it with DVC, gates it with the table suite, trains,
distils, evaluates (the vectors' FID for selection, the rows' SDMetrics / utility / detection /
privacy scores beside their floor), registers, promotes and releases; the registered model and
the release answer rows in the schema's columns and dtypes; a new category in the next version
of the file stops the run at the gate, naming the column, and moves nothing."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import yaml

from pipeline_run import run
from test_table_data_step import small_table
from user_repo import git, make_user_repo, params_for

MODEL = "table-test"
DTYPES = {"plan": "object", "minutes": "float64", "calls": "int64", "churned": "bool"}


def _params(csv: str) -> dict:
    params = params_for(MODEL, MODEL)
    params["datasets"]["customers"] = {"name": "table", "path": csv, "target": "churned",
                                       "id_column": "customer"}
    params["dataset"] = "customers"
    params["model"]["net"] = {"kind": "mlp", "hidden": 64, "depth": 2}
    params["model"]["precond"]["sigma_data"] = 1.0   # quantile-normal numbers, +-1 categories
    params["profiles"]["tiny"].pop("model", None)     # the tiny profile's UNet channels
    return params


@pytest.fixture(scope="module")
def table_run(tmp_path_factory, stack):
    repo = tmp_path_factory.mktemp("table-repo")
    small_table(n=400).to_csv(repo / "customers.csv", index=False)
    make_user_repo(repo, stack.settings.data_bucket, _params("customers.csv"))
    # served: the consistency student at 1 NFE (the fewest, its FID within 100x the teacher's),
    # which is seldom its best setting: the card's rows must still be of 1 NFE
    proc = run("run", "--repo", repo, "--set", "train.steps=30", "--set", "pipeline.methods=[consistency]",
               "--set", "pipeline.max_fid_ratio=100", cwd=repo)
    return repo, proc


def _client():
    import mlflow

    return mlflow.MlflowClient()


def _last_flow_run():
    """The MLflow run of the latest flow run (a parent run: it has no `step` tag)."""
    import mlflow

    runs = mlflow.search_runs(experiment_names=[MODEL], order_by=["attributes.start_time DESC"],
                              output_format="list")
    return next(r for r in runs if "step" not in r.data.tags)


@pytest.mark.slow
def test_a_table_is_registered_promoted_and_released_and_answers_rows_in_its_dtypes(table_run, tmp_path):
    import mlflow

    repo, proc = table_run
    assert "PROMOTED to champion" in proc.stdout, proc.stdout[-3000:]
    champion = _client().get_model_version_by_alias(MODEL, "champion")
    assert champion.version == "1" and champion.tags["data_kind"] == "table"
    # the end of dmops run gives the served rows' scores beside the floor, not only a FID
    rows = [line for line in proc.stdout.splitlines() if line.startswith("rows:")]
    assert len(rows) == 1 and "column shapes" in rows[0] and "(floor " in rows[0], proc.stdout[-3000:]
    # the rows' scores are logged beside their floor, from the evaluate step's run
    runs = mlflow.search_runs(experiment_names=[MODEL], filter_string="tags.step = 'evaluate'",
                              output_format="list")
    assert runs, "no evaluate run"
    logged = runs[0].data.metrics
    for key in ("column_shapes", "column_pair_trends", "detection_auc", "dcr_ratio", "utility_auc"):
        assert f"table/floor/{key}" in logged, sorted(logged)[:20]
        assert any(k.startswith("table/") and k.endswith(f"/{key}") and "/floor/" not in k for k in logged)
    # the experiment's saved runs view shows them as columns, each one the flow's run carries
    # (trial: the view listed the FID columns only)
    from tasks.adapters.experiment import VIEW_TAG_PREFIX
    from tasks.adapters.ui_links import RUNS_VIEW

    experiment = _client().get_experiment_by_name(MODEL)
    view = json.loads(json.loads(experiment.tags[VIEW_TAG_PREFIX + RUNS_VIEW])["state"])
    flow_metrics = _last_flow_run().data.metrics
    for key in ("table_column_shapes", "table_column_pair_trends", "table_utility_ratio",
                "table_detection_auc", "table_dcr_ratio"):
        assert f"metrics.`{key}`" in view["selectedColumns"] and key in flow_metrics, key
    # ... and the served rows' headline scores on the flow's run, named as the registered
    # version's: the runs list compares table runs by them
    parent, registered = _last_flow_run().data.metrics, champion_metrics(champion)
    for key in ("column_shapes", "column_pair_trends", "utility_ratio", "detection_auc",
                "dcr_ratio", "exact_copies", "utility_f1_ratio"):
        if key == "utility_f1_ratio" and "table_utility_f1_ratio" not in registered:
            assert registered["table_utility_f1_real"] == 0   # no ratio to a real-trained F1 of 0
            continue
        assert parent[f"table_{key}"] == pytest.approx(registered[f"table_{key}"]), key
        assert f"table_floor_{key}" in parent, sorted(parent)
    # the pair trends and the utility say what they are
    assert re.search(r"pair trends [0-9.]+ \(\d+ of 6 pairs[^;]*; floor ", rows[0]), rows[0]
    assert "utility (AUC ratio) " in rows[0], rows[0]
    assert (", F1 ratio " in rows[0]) == ("table_utility_f1_ratio" in registered), rows[0]

    # the registered model answers rows with the schema's columns and dtypes, and the id column
    # first with fresh ids that no real row has (diffusion/tabular/row_ids.py)
    served = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    rows = served.predict(pd.DataFrame({"n": [7], "seed": [3]}))
    assert isinstance(rows, pd.DataFrame) and len(rows) == 7
    assert {c: str(t) for c, t in rows.dtypes.items()} == {"customer": "object", **DTYPES}
    assert list(rows.columns) == ["customer", *DTYPES] and rows["customer"].is_unique
    assert not set(rows["customer"]) & set(pd.read_csv(repo / "customers.csv")["customer"])
    assert set(rows["plan"]) <= {"basic", "plus", "pro"}

    # the release gives the same rows as a CSV (what serving code that only reads S3 gets)
    release = [line.split()[-1] for line in proc.stdout.splitlines() if line.startswith("release:")][0]
    out = tmp_path / "rows.csv"
    run("sample", "--release", release, "--out", out, "--n", 7, "--seed", 3, cwd=repo)
    from_release = pd.read_csv(out)
    assert list(from_release.columns) == ["customer", *DTYPES]
    pd.testing.assert_frame_equal(from_release, pd.read_csv(_csv(rows, tmp_path)), check_exact=True)


@pytest.mark.slow
def test_the_card_states_the_rows_it_serves_and_its_code_gives_them(table_run, tmp_path, monkeypatch):
    """The card (the version's description and the release's README.md) scores the rows of the
    setting that is served, whichever setting the evaluation found best, speaks of rows, and its
    two code snippets give the same DataFrame as the served model."""
    import re

    import mlflow

    from diffusion.model import read_spec
    from tasks.adapters.release import read_release, s3_client_from_env

    repo, proc = table_run
    version = _client().get_model_version_by_alias(MODEL, "champion")
    register = _client().get_run(version.run_id)
    setting = f"{version.tags['sampler']}, {version.tags['nfe']} NFE"      # what is served
    assert register.data.tags["rows_setting"] == setting
    logged = register.data.metrics
    release = [line.split()[-1] for line in proc.stdout.splitlines() if line.startswith("release:")][0]
    readme = (read_release(s3_client_from_env(), release, tmp_path / "release") / "README.md").read_text()
    for card in (readme, version.description):
        assert not re.search(r"image|pixel|\.png|sample grid", card, re.I), card
        # the table by the name the user gave it in params.yaml, not its loader's ('table')
        assert "made for the table `customers`." in card, card[:600]
        rows = card.split("## Rows", 1)[1].split("\n## ", 1)[0]
        assert f"The rows of the setting it is served at ({setting})" in rows, rows
        shapes = re.search(r"\| column shapes [^|]*\| ([0-9.]+) \| ([0-9.]+) \|", rows)
        assert shapes, rows
        assert abs(float(shapes[1]) - logged["table_column_shapes"]) < 5e-4      # 4 significant digits
        assert abs(float(shapes[2]) - logged["table_floor_column_shapes"]) < 5e-4
    assert "--out rows.csv" in readme and "mlflow.pyfunc.load_model" in readme
    said = proc.stdout + proc.stderr   # the train step's line names the params.yaml entry too
    assert "dataset customers: " in said and "dataset table: " not in said, said[-3000:]
    # the numbers are those of the served setting: the evaluation's, or scored by the register
    # step when the evaluation scored the student at its best setting, another one
    work = next(repo.glob("runs/pipeline/*/evaluation")).parent
    evaluated = json.loads((work / "evaluation" / "table_quality.json").read_text())
    name = version.tags["served_as"]
    sampling = read_spec(work / "candidate" / "model").sampling
    served = {"sampler": sampling.sampler, "steps": sampling.steps}
    if evaluated["settings"][name] == served:
        scores = evaluated["models"][name]
    else:
        scores = json.loads((work / "candidate" / "rows" / "served_rows.json").read_text())["models"][name]
        said = " ".join((proc.stdout + proc.stderr).split())     # Prefect's log lines: stderr
        assert f"rows of {name} ({setting}, the setting it is served at)" in said, said[-3000:]
    assert scores["column_shapes"] == pytest.approx(logged["table_column_shapes"], rel=1e-12)

    # the card's own code: from the release and from the registry, the served model's rows
    monkeypatch.chdir(tmp_path)
    code = re.findall(r"```python\n(.*?)```", readme.split("## How to load", 1)[1], re.S)
    assert len(code) == 2, code
    found = [{}, {}]
    for snippet, names in zip(code, found):
        exec(snippet, names)
    served = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion").predict(pd.DataFrame({"n": [16], "seed": [0]}))
    for names in found:
        pd.testing.assert_frame_equal(names["rows"], served, check_exact=True)


def _csv(rows: pd.DataFrame, folder) -> str:
    path = folder / "served.csv"
    rows.to_csv(path, index=False)
    return str(path)


@pytest.mark.slow
def test_a_rerun_with_nothing_changed_registers_nothing_and_says_the_champion_is_the_same(table_run):
    repo, _ = table_run
    before = {v.version for v in _client().search_model_versions(f"name='{MODEL}'")}
    proc = run("run", "--repo", repo, "--set", "train.steps=30", "--set", "pipeline.methods=[consistency]",
               "--set", "pipeline.max_fid_ratio=100", cwd=repo)
    said = [line for line in proc.stdout.splitlines() if line.startswith("registered:")]
    assert len(said) == 1 and said[0].startswith(
        f"registered:  nothing: {MODEL} version 1, the champion, was made from the same inputs"), \
        proc.stdout[-3000:]
    assert "promotion:   none: nothing was registered; the champion stays" in proc.stdout
    assert {v.version for v in _client().search_model_versions(f"name='{MODEL}'")} == before
    assert _client().get_model_version_by_alias(MODEL, "champion").version == "1"
    # the register step says it once, in the flow run's log
    assert proc.stderr.count(f"nothing registered: {MODEL} version 1, the champion") == 1, proc.stderr[-3000:]


def champion_metrics(version) -> dict:
    return _client().get_run(version.run_id).data.metrics


@pytest.mark.slow
def test_served_rows_that_copy_training_rows_are_not_registered_and_the_run_fails(table_run):
    """The rows guard (tasks/steps/register_guard.py) in a real run: with a bound no model can
    meet (its DCR ratio at least 1000) the served rows are refused, in one line, exit code 2;
    nothing is registered, the champion stays; the flow's MLflow run says why and still carries
    the refused rows' scores."""
    repo, _ = table_run
    before = {v.version for v in _client().search_model_versions(f"name='{MODEL}'")}
    proc = run("run", "--repo", repo, "--set", "train.steps=30", "--set", "pipeline.methods=[consistency]",
               "--set", "pipeline.max_fid_ratio=100", "--set", "pipeline.rows_guard.min_dcr_ratio=1000",
               cwd=repo, check=False)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    said = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(said) == 1, proc.stderr[-3000:]
    assert re.match(r"error: the pipeline stopped: the served rows of \S+ \(\S+, \d+ NFE\) copy the "
                    r"training rows: its DCR ratio \(.*\) is [0-9.]+, below "
                    r"pipeline\.rows_guard\.min_dcr_ratio 1000: not registered, the champion is "
                    r"unchanged", said[0]), said[0]
    assert {v.version for v in _client().search_model_versions(f"name='{MODEL}'")} == before
    assert _client().get_model_version_by_alias(MODEL, "champion").version == "1"
    flow_run = _last_flow_run()
    assert flow_run.info.status == "FAILED"
    assert flow_run.data.tags["failure_reason"] == said[0].removeprefix("error: the pipeline stopped: ")
    assert "table_dcr_ratio" in flow_run.data.metrics and "table_floor_dcr_ratio" in flow_run.data.metrics
    import mlflow

    register = mlflow.search_runs(experiment_names=[MODEL], filter_string="tags.step = 'register_model'",
                                  order_by=["attributes.start_time DESC"], output_format="list")[0]
    assert register.data.tags["rows_guard"] == said[0].removeprefix("error: the pipeline stopped: ")


@pytest.mark.slow
def test_a_new_category_in_the_next_version_stops_at_the_gate_naming_the_column(table_run):
    repo, _ = table_run
    before = _client().get_model_version_by_alias(MODEL, "champion").version
    table = small_table(n=400)
    table.loc[:9, "plan"] = "enterprise"
    table.to_csv(repo / "customers.csv", index=False)
    git(repo, "commit", "-qam", "customers: a new plan")
    proc = run("run", "--repo", repo, "--set", "train.steps=30", cwd=repo, check=False)
    assert proc.returncode != 0
    said = " ".join((proc.stdout + proc.stderr).split())
    assert "plan" in said and "enterprise" in said, said[-3000:]
    assert _client().get_model_version_by_alias(MODEL, "champion").version == before
    assert len(_client().search_model_versions(f"name='{MODEL}'")) == 1   # nothing trained or registered
    # the flow's MLflow run says why it failed, in one line
    reason = _last_flow_run().data.tags["failure_reason"]
    assert "plan" in reason and "enterprise" in reason and "\n" not in reason, reason
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["datasets"][params["dataset"]]["name"] == "table"


@pytest.mark.slow
def test_a_version_whose_layout_departs_from_the_champions_is_refused_naming_the_change(table_run):
    """The same rows with the columns in another order pass the gate (the same columns, values
    and shares), but give the model another layout: the run stops before training, naming the
    order and how to keep the champion's (the registered version's schema, downloaded), not two
    layout hashes."""
    repo, _ = table_run
    before = len(_client().search_model_versions(f"name='{MODEL}'"))
    small_table(n=400)[["customer", "minutes", "plan", "calls", "churned"]].to_csv(
        repo / "customers.csv", index=False)
    git(repo, "commit", "-qam", "customers: columns in another order")
    proc = run("run", "--repo", repo, "--set", "train.steps=30", cwd=repo, check=False)
    assert proc.returncode == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    said = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert said == [
        "error: the pipeline stopped: dataset 'customers' no longer has the layout of the models "
        f"registered under pipeline.model_name '{MODEL}' (version 1): the columns' order is "
        "minutes, plan, calls, churned, the registered model's plan, minutes, calls, churned (put "
        "them back in that order, or list them in that order under datasets.customers.columns); "
        "or, if the change is meant, set pipeline.model_name to a name of its own: a model of "
        "other columns cannot be compared with its champion"], proc.stderr[-3000:]
    assert len(_client().search_model_versions(f"name='{MODEL}'")) == before


@pytest.mark.slow
def test_a_meant_new_category_is_accepted_once_under_a_model_name_of_its_own(table_run):
    """Trial #4: a new category that is right fails the gate on every run unless accepted.
    `dmops run --accept-data-change` validates the version on its own checks; the model layout
    it gives departs from the registered one, so the same model name is still refused naming
    the category, and the gate's reference is left as it was; under a model name of its own
    the version trains and is promoted, the runs say the change was accepted, and the next
    plain run passes the gate against the accepted version."""
    repo, _ = table_run
    new_name = f"{MODEL}-plans"
    table = small_table(n=400)
    table.loc[:9, "plan"] = "enterprise"
    table.to_csv(repo / "customers.csv", index=False)
    git(repo, "commit", "-qam", "customers: a new plan, meant")
    quick = ["--set", "train.steps=30", "--set", "pipeline.methods=[consistency]",
             "--set", "pipeline.max_fid_ratio=100"]

    refused = run("run", "--repo", repo, *quick, cwd=repo, check=False)
    assert refused.returncode != 0
    said = " ".join((refused.stdout + refused.stderr).split())
    assert "dmops run --accept-data-change" in said, said[-3000:]

    same_name = run("run", "--repo", repo, "--accept-data-change", *quick, cwd=repo, check=False)
    assert same_name.returncode == 2, same_name.stdout[-3000:] + same_name.stderr[-3000:]
    assert "accepted as meant (--accept-data-change)" in same_name.stdout + same_name.stderr, \
        same_name.stderr[-3000:]
    said = " ".join((same_name.stdout + same_name.stderr).split())
    assert "enterprise" in said and "set pipeline.model_name to a name of its own" in said, said[-2000:]
    # the version this run's `dvc repro` recorded is put back, as after a refusal at the gate
    assert "stages fingerprint@customers and prepare@customers and data/processed/customers are " \
           "back at the version before this run" in said, said[-3000:]
    assert len(_client().search_model_versions(f"name='{MODEL}'")) == 1

    # the refused run left the reference alone: a plain run still stops at the gate
    again = run("run", "--repo", repo, *quick, cwd=repo, check=False)
    assert again.returncode != 0 and "categories_vs_reference (plan)" in again.stdout + again.stderr, \
        again.stderr[-3000:]

    own = run("run", "--repo", repo, "--accept-data-change", "--set", f"pipeline.model_name={new_name}",
              *quick, cwd=repo)
    assert "PROMOTED to champion" in own.stdout, own.stdout[-3000:]
    champion = _client().get_model_version_by_alias(new_name, "champion")
    assert "accepted as meant" in champion.tags["validation"], champion.tags
    assert _last_flow_run().data.tags["data_change_accepted"] == "1"
    assert _client().get_model_version_by_alias(MODEL, "champion").version == "1"

    plain = run("run", "--repo", repo, "--set", f"pipeline.model_name={new_name}", *quick, cwd=repo)
    assert "dataset customers passed all " in plain.stdout + plain.stderr, plain.stderr[-3000:]

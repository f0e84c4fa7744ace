"""The UIs as a user first sees them, in a real browser: after a pipeline run, each link
`dmops run` printed is opened in a fresh headless Chromium (empty profile, so MLflow's UI starts
from its own default mode, GenAI) and must show what it names: the runs table in
machine-learning mode with the parent run's headline metrics and params as columns, the parent
run's page, the registered model's versions and aliases, and the Prefect flow run.

The browser is Debian's Chromium (/usr/bin/chromium, or DMOPS_CHROMIUM), driven by Playwright
for Python; `make test` and .ci/run install it where they can (as root). Without it the browser
tests fail saying how to install it: they never skip. A failing page check leaves a screenshot
in the test's tmp folder and names it in the assertion.

The experiment set-up (tasks/adapters/experiment.py) and the link forms (tasks/adapters/ui_links.py)
are checked against the stack without a browser.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest

from pipeline_run import MODEL
from tasks.adapters import ui_links
from tasks.adapters.experiment import (KIND_TAG, MODEL_TRAINING, VIEW_TAG_PREFIX, _create,
                                       runs_view_state, use_experiment)
from tasks.steps.headline import HEADLINE_METRICS, HEADLINE_PARAMS

pytestmark = pytest.mark.stack

CHROMIUM = os.environ.get("DMOPS_CHROMIUM", "/usr/bin/chromium")
INSTALL = "sudo apt-get install -y chromium"
# headless as root on a machine without a network: no sandbox, no GPU, no background requests
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# wide enough that the runs grid (which renders only the columns in view) shows every headline
# column next to MLflow's assistant panel
VIEWPORT = {"width": 2560, "height": 1200}
LINK_LABELS = ("MLflow runs", "MLflow run", "MLflow model", "Prefect run")
PAGE_TIMEOUT_MS = 60_000


# ---- without a browser: the experiment and the links ----------------------------------------

def _client():
    import mlflow

    return mlflow.MlflowClient()


def _view(experiment_id: str) -> dict:
    envelope = json.loads(_client().get_experiment(experiment_id).tags[VIEW_TAG_PREFIX + ui_links.RUNS_VIEW])
    return {**envelope, "state": json.loads(envelope["state"])}


def test_an_existing_experiment_without_a_kind_becomes_model_training_with_the_runs_view(stack):
    name = f"ui-test-{uuid.uuid4().hex[:8]}"
    created = _client().create_experiment(name)   # as an older dmops, or a user, left it

    assert use_experiment(name, ["fid", "nfe"], ["profile"]) == created
    tags = _client().get_experiment(created).tags
    assert tags[KIND_TAG] == MODEL_TRAINING
    view = _view(created)
    assert view["state"] == runs_view_state(["fid", "nfe"], ["profile"])
    columns = view["state"]["selectedColumns"]
    assert columns[:3] == ["metrics.`fid`", "metrics.`nfe`", "params.`profile`"]
    import mlflow

    assert mlflow.get_experiment_by_name(name).experiment_id == created
    with mlflow.start_run() as run:   # the active experiment, as set_experiment made it
        pass
    assert run.info.experiment_id == created


def test_a_new_experiment_is_created_and_a_kind_the_user_chose_is_kept(stack, caplog):
    name = f"ui-test-{uuid.uuid4().hex[:8]}"
    said = []
    with caplog.at_level(logging.INFO, logger="mlflow"):
        fresh = use_experiment(name, ["fid"], [], log=said.append)
    assert _client().get_experiment(fresh).tags[KIND_TAG] == MODEL_TRAINING
    # one line of the pipeline's, none of MLflow's ("does not exist. Creating ...")
    assert said == [f"MLflow experiment {name!r} created (id {fresh}) for the pipeline's runs"]
    assert [r.getMessage() for r in caplog.records if r.name.startswith("mlflow")] == []
    # a second run (or one racing this one) finds it and says nothing
    assert use_experiment(name, ["fid"], [], log=said.append) == fresh and len(said) == 1
    _create(_client(), name, said.append)
    assert len(said) == 1

    chosen = f"ui-test-{uuid.uuid4().hex[:8]}"
    eid = _client().create_experiment(chosen, tags={KIND_TAG: "genai_development"})
    use_experiment(chosen, ["fid"], [])
    assert _client().get_experiment(eid).tags[KIND_TAG] == "genai_development"
    assert _view(eid)["state"]["selectedColumns"][0] == "metrics.`fid`"


def test_the_runs_view_follows_the_columns_and_is_not_rewritten_when_they_stay(stack):
    name = f"ui-test-{uuid.uuid4().hex[:8]}"
    eid = use_experiment(name, ["fid"], ["profile"])
    first = _view(eid)
    use_experiment(name, ["fid"], ["profile"])
    assert _view(eid) == first                       # same columns: the tag is left alone
    use_experiment(name, ["fid", "nfe"], ["profile"])
    second = _view(eid)
    assert second["state"] == runs_view_state(["fid", "nfe"], ["profile"])
    assert second["createdAt"] == first["createdAt"] and second["name"] == first["name"]


def test_dmops_up_and_status_name_the_experiments_runs_in_the_machine_learning_view(stack, tmp_path):
    """The bare MLflow address opens MLflow's GenAI home in a fresh browser: `dmops up` and
    `dmops status` print the runs link of params.yaml's experiment once it exists."""
    from flows.stack_cli import _runs_line

    url = os.environ["MLFLOW_TRACKING_URI"].rstrip("/")
    name = f"ui-status-{uuid.uuid4().hex[:6]}"
    params = tmp_path / "params.yaml"
    params.write_text(f"pipeline:\n  experiment: {name}\n")
    assert _runs_line(url, params) is None            # no experiment yet: no link to a 404
    eid = use_experiment(name, ["fid"], ["profile"])
    assert _runs_line(url, params) == f"runs    {ui_links.runs_url(eid, url)}"
    assert _runs_line("http://127.0.0.1:9", params) is None   # no server: nothing, at once


def test_every_mlflow_link_carries_the_machine_learning_mode():
    base = "http://127.0.0.1:5000"
    assert ui_links.runs_url("4", base) == (f"{base}/#/experiments/4/runs?workflowType=machine_learning"
                                            f"&viewStateShareKey={ui_links.RUNS_VIEW}")
    assert ui_links.runs_url("4", base, view=None) == f"{base}/#/experiments/4/runs?workflowType=machine_learning"
    assert ui_links.run_url("4", "r1", base) == f"{base}/#/experiments/4/runs/r1?workflowType=machine_learning"
    assert ui_links.model_url("a b", tracking_uri=base) == f"{base}/#/models/a%20b?workflowType=machine_learning"
    assert ui_links.model_url("m", "3", base) == f"{base}/#/models/m/versions/3?workflowType=machine_learning"
    assert ui_links.runs_url("4", "file:///tmp/mlruns") is None
    assert ui_links.flow_run_url("f-1", "http://127.0.0.1:4200/api") == "http://127.0.0.1:4200/runs/flow-run/f-1"


# ---- in the browser, after a pipeline run -----------------------------------------------------

@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium under Playwright; a clear failure (never a skip) when either is missing.
    Session-scoped and named before `pipeline` in the tests so that a missing browser fails
    before the pipeline runs."""
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} not found: the UI tests drive Debian's Chromium; install it with "
                    f"`{INSTALL}` (`make test` and .ci/run do so when run as root), or point "
                    "DMOPS_CHROMIUM at a Chromium binary", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: `pip install -e '.[dev]'` (or `make install`)",
                    pytrace=False)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@contextmanager
def fresh_page(browser, tmp_path: Path, name: str):
    """A page in a new browser context (no cookies, no localStorage: a first visit); on a failed
    check a full-page screenshot `<tmp_path>/<name>.png`, named in the assertion message."""
    from playwright.sync_api import Error as PlaywrightError

    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    page = context.new_page()
    try:
        yield page
    except (AssertionError, PlaywrightError) as e:
        shot = tmp_path / f"{name}.png"
        page.screenshot(path=str(shot), full_page=True)
        raise AssertionError(f"{e}\nscreenshot of {page.url}: {shot}") from e
    finally:
        context.close()


def printed_links(proc) -> dict[str, str]:
    """The links `dmops run` printed at the end, by label."""
    links = {}
    for line in proc.stdout.splitlines():
        label, sep, value = line.partition(":")
        if sep and label.strip() in LINK_LABELS:
            links[label.strip()] = value.strip()
    return links


@pytest.fixture(scope="module")
def pipeline(first_pipeline_run):
    """What the first pipeline run printed and what MLflow holds of it."""
    client = _client()
    version = client.get_model_version(MODEL, "1")
    parent = client.get_run(version.tags["mlflow_parent_run_id"])
    links = printed_links(first_pipeline_run)
    assert set(links) == set(LINK_LABELS), first_pipeline_run.stdout[-3000:]
    return SimpleNamespace(links=links, parent=parent, version=version, stdout=first_pipeline_run.stdout)


@pytest.mark.slow
def test_the_printed_links_are_ui_links_of_the_run(pipeline):
    info = pipeline.parent.info
    assert pipeline.links["MLflow runs"] == ui_links.runs_url(info.experiment_id)
    assert pipeline.links["MLflow run"] == ui_links.run_url(info.experiment_id, info.run_id)
    assert pipeline.links["MLflow model"] == ui_links.model_url(MODEL)
    assert pipeline.links["Prefect run"] == ui_links.flow_run_url(pipeline.version.tags["prefect_flow_run_id"])


def _in_machine_learning_mode(page) -> None:
    """The UI shows runs, not GenAI: the mode came from the link (nothing stored in the
    browser), and the sidebar has the model registry, which GenAI mode hides."""
    assert "workflowType=machine_learning" in page.url, page.url
    stored = page.evaluate("Object.keys(localStorage).filter(k => k.includes('workflowType'))")
    assert stored == [], stored    # e.g. mlflow.workflowType_v1, what the sidebar's toggle writes
    page.get_by_role("link", name="Model registry").first.wait_for()


@pytest.mark.slow
def test_the_runs_link_opens_the_runs_table_with_the_parent_runs_headline_columns(browser, pipeline,
                                                                                  tmp_path):
    parent = pipeline.parent
    missing = [m for m in HEADLINE_METRICS if m not in parent.data.metrics]
    missing += [p for p in HEADLINE_PARAMS if p not in parent.data.params]
    assert not missing, f"the parent run lacks {missing}; it has {sorted(parent.data.metrics)} and " \
                        f"{sorted(parent.data.params)}"
    with fresh_page(browser, tmp_path, "runs") as page:
        page.goto(pipeline.links["MLflow runs"])
        row = f".ag-center-cols-container .ag-row[row-id='{parent.info.run_id}']"
        page.locator(row).wait_for()
        _in_machine_learning_mode(page)
        page.locator(f".ag-row[row-id='{parent.info.run_id}']", has_text=parent.info.run_name).wait_for()
        headers = page.eval_on_selector_all(".ag-header-cell[col-id]", "els => els.map(e => e.getAttribute('col-id'))")
        wanted = [f"metrics.`{m}`" for m in HEADLINE_METRICS] + [f"params.`{p}`" for p in HEADLINE_PARAMS]
        assert [c for c in wanted if c not in headers] == [], headers
        for metric in HEADLINE_METRICS:
            cell = page.locator(f"{row} .ag-cell[col-id='metrics.`{metric}`']").inner_text().strip()
            assert cell not in ("", "-"), (metric, cell)
            assert float(cell.replace(",", "")) == pytest.approx(parent.data.metrics[metric], rel=1e-2, abs=1e-3), \
                (metric, cell, parent.data.metrics[metric])


@pytest.mark.slow
def test_the_run_link_opens_the_parent_run_with_its_metrics_and_params(browser, pipeline, tmp_path):
    parent = pipeline.parent
    with fresh_page(browser, tmp_path, "run") as page:
        page.goto(pipeline.links["MLflow run"])
        page.get_by_text(parent.info.run_id).first.wait_for()
        _in_machine_learning_mode(page)
        page.get_by_text(f"Metrics ({len(parent.data.metrics)})").wait_for()
        text = page.inner_text("body")
        assert [k for k in (*HEADLINE_METRICS, *HEADLINE_PARAMS) if k not in text] == [], text[:3000]
        assert parent.data.params["dataset_md5"] in text


@pytest.mark.slow
def test_the_model_link_lists_every_version_with_its_aliases(browser, pipeline, tmp_path):
    versions = _client().search_model_versions(f"name='{MODEL}'")
    with fresh_page(browser, tmp_path, "model") as page:
        page.goto(pipeline.links["MLflow model"])
        page.get_by_text(f"Version {max(int(v.version) for v in versions)}", exact=True).first.wait_for()
        _in_machine_learning_mode(page)
        text = page.inner_text("body")
        for v in versions:
            assert f"Version {v.version}" in text, text[:3000]
        aliases = list(_client().get_registered_model(MODEL).aliases)   # search leaves them out
        assert "champion" in aliases, aliases
        assert [a for a in aliases if a not in text] == [], (aliases, text[:3000])


@pytest.mark.slow
def test_the_prefect_link_opens_the_flow_run(browser, pipeline, tmp_path):
    with fresh_page(browser, tmp_path, "prefect") as page:
        page.goto(pipeline.links["Prefect run"])
        page.get_by_text(pipeline.parent.info.run_name).first.wait_for()   # the flow run's name
        page.get_by_text("Completed").first.wait_for()

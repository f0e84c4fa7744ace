"""The register step's guard on a table model's served rows (tasks/steps/register_guard.py):
rows that copy the training rows beyond `pipeline.rows_guard` are refused in one line; the
setting is validated and params.yaml states its defaults; and a failed flow run's MLflow run
says why in one line (flows/pipeline.py failure_reason).  The guard on rows the evaluation
really scored: tests/test_table_quality_step.py; in a whole run: tests/test_table_pipeline.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from diffusion.config import ConfigError
from diffusion.data_errors import DataError
from tasks.steps.register_guard import (RowsGuardSettings, RowsRefused, check_served_rows,
                                        rows_refusal)

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
GUARD = RowsGuardSettings()
# the trial's run on a one-column table (issue 13): FID fine, rows 77 % training rows
COPIES = {"column_shapes": 0.2007, "exact_copies": 0.7725, "exact_copies_holdout": 0.0,
          "dcr_median": 0.0, "dcr_holdout_median": 1.0, "dcr_ratio": 0.0}
COPIES_FLOOR = {"column_shapes": 0.0, "exact_copies": 0.0, "exact_copies_holdout": 0.0, "dcr_ratio": 1.0}
# the trial's churn and diamonds runs: nothing copied (diamonds' own duplicate rows: 0.4 %)
CHURN = {"exact_copies": 0.0, "exact_copies_holdout": 0.0, "dcr_ratio": 0.9952}
DIAMONDS = {"exact_copies": 0.0, "exact_copies_holdout": 0.0040, "dcr_ratio": 1.5873}
DIAMONDS_FLOOR = {"exact_copies": 0.0041, "dcr_ratio": 1.0028}


def _rows(served: dict, floor: dict) -> dict:
    return {"floor": floor, "models": {"consistency": served}, "rows": 1000}


def test_rows_that_copy_the_training_rows_are_refused_in_one_line_naming_each_rule():
    broken = rows_refusal(COPIES, COPIES_FLOOR, GUARD)
    assert len(broken) == 2, broken
    assert re.fullmatch(r"77\.[23]% of its rows are exact copies of training rows against 0\.0% of "
                        r"held-out real rows, more than pipeline\.rows_guard\.max_exact_copies_excess "
                        r"0\.05 above them", broken[0]), broken[0]
    assert broken[1].endswith("is 0.000, below pipeline.rows_guard.min_dcr_ratio 0.8")
    with pytest.raises(RowsRefused) as e:
        check_served_rows(_rows(COPIES, COPIES_FLOOR), "consistency (consistency, 1 NFE)", GUARD)
    said = str(e.value)
    assert said.startswith("the served rows of consistency (consistency, 1 NFE) copy the training "
                           "rows: 77.")
    assert "not registered, the champion is unchanged" in said and "pipeline.rows_guard" in said
    assert "\n" not in said
    # a data fault: the pipeline stops with exit code 2 and no retry (tasks/prefect_tasks.py)
    assert isinstance(e.value, DataError)


def test_rows_of_models_that_do_not_copy_pass_with_the_defaults():
    for served, floor in ((CHURN, {"exact_copies": 0.0}), (DIAMONDS, DIAMONDS_FLOOR)):
        assert rows_refusal(served, floor, GUARD) == []
        check_served_rows(_rows(served, floor), "consistency (consistency, 1 NFE)", GUARD)


def test_copies_count_above_the_share_held_out_real_rows_have_of_them():
    # a table of few distinct rows: held-out real rows repeat training rows too, and have no
    # DCR ratio (their median distance is 0); only copies beyond theirs count
    discrete = {"exact_copies": 0.93, "exact_copies_holdout": 0.90}
    assert rows_refusal(discrete, {"exact_copies": 0.88}, GUARD) == []
    more = rows_refusal({**discrete, "exact_copies": 0.96}, {}, GUARD)
    assert len(more) == 1 and more[0].startswith("96.0% of its rows are exact copies of training "
                                                 "rows against 90.0% of held-out real rows")
    # without the served scores' own held-out share, the floor's (held-out real rows too)
    assert rows_refusal({"exact_copies": 0.08}, {"exact_copies": 0.04}, GUARD) == []
    assert len(rows_refusal({"exact_copies": 0.10}, {"exact_copies": 0.04}, GUARD)) == 1
    assert len(rows_refusal({"exact_copies": 0.08}, {"exact_copies": 0.04},
                            RowsGuardSettings(max_exact_copies_excess=0.03))) == 1
    # scores that do not say (a version scored without them): no rule applies
    assert rows_refusal({"column_shapes": 0.9}, {}, GUARD) == []


def test_the_guard_is_set_under_pipeline_rows_guard_validated_and_can_be_switched_off():
    from tasks.pipeline_settings import load_pipeline_config

    written = yaml.safe_load(PARAMS.read_text())["pipeline"]["rows_guard"]
    assert written == RowsGuardSettings().model_dump()      # params.yaml states the defaults
    cfg = load_pipeline_config(PARAMS, overrides=["pipeline.rows_guard.min_dcr_ratio=0.5"])
    assert cfg.pipeline.rows_guard.min_dcr_ratio == 0.5
    for bad in ("pipeline.rows_guard.max_exact_copies_excess=1.5",
                "pipeline.rows_guard.min_dcr_ratio=-0.1", "pipeline.rows_guard.min_dcr_ratio=nan",
                "pipeline.rows_guard.max_copies=0.1"):
        with pytest.raises(ConfigError, match=r"pipeline\.rows_guard\."):
            load_pipeline_config(PARAMS, overrides=[bad])
    off = RowsGuardSettings(max_exact_copies_excess=1.0, min_dcr_ratio=0.0)
    assert rows_refusal({**COPIES, "exact_copies": 1.0}, COPIES_FLOOR, off) == []


def test_a_failed_flow_runs_reason_is_one_line_bounded_and_never_a_credential():
    from flows.pipeline import FAILURE_CHARS, failure_reason

    gate = ValueError("dataset customers failed 1 of 48 expectations:\n  - plan (categorical): "
                      "a value outside the known set: 'enterprise'\nFix the data and run again.")
    assert failure_reason(gate) == ("dataset customers failed 1 of 48 expectations: - plan "
                                    "(categorical): a value outside the known set: 'enterprise' "
                                    "Fix the data and run again.")
    long = failure_reason(ValueError("x" * 5000))
    assert len(long) == FAILURE_CHARS and long.endswith("...")
    leaked = failure_reason(RuntimeError("could not reach http://admin:hunter22@127.0.0.1:5000/api"))
    assert "hunter22" not in leaked and leaked.startswith("RuntimeError: its message is not recorded")
    assert failure_reason(KeyError()) == "KeyError"


def test_a_failed_flow_run_is_tagged_with_its_reason_and_a_users_fault_summarised(monkeypatch):
    """flows/pipeline.py _failure_recorded: the reason goes on the flow's MLflow run; the summary
    artifact only for a fault of the user's; nothing is sent to an MLflow server the error says
    is gone; the error itself goes on unchanged."""
    import mlflow

    import flows.pipeline as pipeline
    from tasks.adapters.servers import MLFLOW, S3, ServerUnavailable

    tagged, summaries = [], []
    monkeypatch.setattr(mlflow.MlflowClient, "set_tag",
                        lambda self, run_id, key, value: tagged.append((run_id, key, value)))
    monkeypatch.setattr(pipeline, "create_markdown_artifact",
                        lambda markdown, **kwargs: summaries.append(markdown))
    refused = RowsRefused("the served rows of consistency (consistency, 1 NFE) copy the training rows")
    with pytest.raises(RowsRefused):
        with pipeline._failure_recorded("run-1", "customers-diffusion"):
            raise refused
    assert tagged == [("run-1", "failure_reason", str(refused))]
    assert summaries == [f"# customers-diffusion: the pipeline stopped\n\n**Reason:** {refused}\n"]
    tagged.clear(), summaries.clear()
    with pytest.raises(ServerUnavailable):
        with pipeline._failure_recorded("run-2", "m"):
            raise ServerUnavailable(MLFLOW, "http://127.0.0.1:5000", 3, 4.0, ConnectionRefusedError())
    assert tagged == [] and summaries == []
    with pytest.raises(ServerUnavailable):
        with pipeline._failure_recorded("run-3", "m"):
            raise ServerUnavailable(S3, "http://127.0.0.1:8333", 3, 4.0, ConnectionRefusedError())
    assert [key for _, key, _ in tagged] == ["failure_reason"] and summaries == []

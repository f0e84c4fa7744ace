"""What the gate hands back: ValidationReport, DataValidationError, and the readable line
each failed expectation becomes (check name, column, observed against expected)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EXAMPLES = 3  # offending rows named per failed expectation; the result dict holds more
# meta key of an expectation that compares this version with the last validated one (drift,
# and for a table its columns, kinds, categories and nulls): what a meant change of the data
# fails, and what `accept_change` lets pass once
VERSUS_REFERENCE = "versus_reference"
# how a user accepts such a change (the CLI's option; the flow's parameter accept_data_change)
ACCEPT_OPTION = "dmops run --accept-data-change"


@dataclass
class ValidationReport:
    success: bool
    failures: list[str]            # one readable line per failed expectation
    result: dict                   # the GX validation result, JSON-able
    statistics: dict               # this dataset's reference statistics ("last validated" on success)
    docs_dir: Path | None = None   # Data Docs folder (index.html inside), when built
    dataset: str = "dataset"       # the dataset's name, for messages
    # where a user changes the gate's thresholds (params.yaml keys, not a Python class)
    thresholds: str = "pipeline.validate_data"
    # what else a failure left, said after the fix (the flow's line on dvc.lock: the refused
    # version put back, or why not and what to run; tasks/adapters/dvc.py put_back_version)
    after_failure: str | None = None
    # the failed comparisons with the last validated version (VERSUS_REFERENCE), one line each:
    # within `failures`, or, when the change was accepted as meant, beside them
    changes: list[str] = field(default_factory=list)
    change_accepted: bool = False

    @classmethod
    def unreadable(cls, processed_dir, problems: list[str],
                   dataset: str | None = None) -> "ValidationReport":
        """The failed report of a folder that could not be read: its problems, no statistics;
        `dataset` names it (default: the folder's name)."""
        return cls(success=False, failures=problems,
                   result={"success": False, "structure_problems": problems},
                   statistics={}, docs_dir=None,
                   dataset=dataset or Path(processed_dir).name)

    @property
    def evaluated(self) -> int:
        """How many expectations ran (for a folder that could not be read: its problems)."""
        return int(self.result.get("statistics", {}).get("evaluated_expectations",
                                                         len(self.failures)))

    def summary(self) -> str:
        """A multi-line message for people: what failed, where, and where the details are."""
        if self.success:
            rows = self.statistics.get("rows")
            accepted = self.changes if self.change_accepted else []
            passed = (f"passed all {self.evaluated} expectations" if not accepted else
                      f"passed {self.evaluated - len(accepted)} of {self.evaluated} expectations")
            lines = [f"dataset {self.dataset} {passed}" + (f" ({rows} rows)" if rows is not None else "")
                     + (f"; {len(accepted)} change(s) since the last validated version accepted as "
                        "meant (--accept-data-change), it becomes the gate's reference when the run goes on:"
                        if accepted else "")]
            lines += [f"  - {line}" for line in accepted]
        else:
            head = (f"dataset {self.dataset} cannot be validated, {len(self.failures)} "
                    "problem(s) reading its folder:" if "structure_problems" in self.result else
                    f"dataset {self.dataset} failed {len(self.failures)} of {self.evaluated} "
                    "expectations:")
            lines = [head, *(f"  - {line}" for line in self.failures),
                     "Fix the data (or, if the data is right, the thresholds under "
                     f"{self.thresholds} in params.yaml) and run again."]
            if self.changes and not self.change_accepted:
                lines.append(
                    f"{len(self.changes)} of these compare it with the last validated version. If "
                    "that change is meant (a new category, a column dropped, added or retyped, a "
                    f"shifted distribution), `{ACCEPT_OPTION}` validates this version on its own "
                    "checks only, once, and makes it the reference of the next run; a table of "
                    "other columns or categories (or samples of another shape) is another model: "
                    "give it a pipeline.model_name of its own.")
            elif self.changes:   # accepted, yet the version failed its own checks
                lines.append(f"Besides, {len(self.changes)} change(s) since the last validated "
                             "version accepted as meant (--accept-data-change):")
                lines += [f"  - {line}" for line in self.changes]
            if self.after_failure:
                lines.append(self.after_failure)
        if self.docs_dir is not None:
            lines.append(f"Data Docs: {Path(self.docs_dir) / 'index.html'}")
        return "\n".join(lines)


class DataValidationError(ValueError):
    """A dataset that failed the gate; str() is the report's summary."""

    def __init__(self, report: ValidationReport):
        super().__init__(report.summary())
        self.report = report

    def __reduce__(self):
        # pickled (e.g. by an orchestrator) and rebuilt from the report, not from the message
        return (type(self), (self.report,))


def gate_report(result: dict, lines_of, accept_change: bool = False,
                **fields) -> ValidationReport:
    """The ValidationReport of a GX result dict (JSON-able) whose expectations that compare with
    the last validated version carry meta[VERSUS_REFERENCE]: `lines_of(result)` gives the
    readable line of each failed expectation.  With `accept_change` the failed comparisons are
    a meant change of the data: listed as `changes`, they do not fail the report; every other
    failure still does.  `fields`: the report's other fields (statistics, docs_dir, dataset...)."""
    lines = lines_of(result)
    versus = [r for r in result.get("results", []) if _versus_reference(r)]
    changes = lines_of({**result, "results": versus}) if versus else []
    if accept_change:
        accepted = set(changes)
        failures = [line for line in lines if line not in accepted]
        success = not failures
    else:
        failures, success = lines, bool(result.get("success")) and not lines
    return ValidationReport(success=success, failures=failures, result=result, changes=changes,
                            change_accepted=accept_change, **fields)


def _versus_reference(r: dict) -> bool:
    return bool((r.get("expectation_config", {}).get("meta") or {}).get(VERSUS_REFERENCE))


def failure_lines(result: dict, order: list[str]) -> list[str]:
    """One line per failed expectation of a GX result dict, in the suite's `order` of checks."""
    failed = [r for r in result.get("results", []) if not r.get("success")]
    rank = {check: i for i, check in enumerate(order)}
    failed.sort(key=lambda r: rank.get(_check_name(r), len(rank)))
    return [_line(r) for r in failed]


def jsonable(value: Any) -> Any:
    """`value` with every non-finite float spelt as a string ('NaN', 'Infinity', '-Infinity'),
    numpy scalars as Python numbers and paths as strings, so strict JSON can hold it."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "shape", None) == ():
        value = value.item()  # numpy scalar
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, Path):
        return str(value)
    return value


def _check_name(r: dict) -> str:
    config = r.get("expectation_config", {})
    return (config.get("meta") or {}).get("check", config.get("type", "?"))


def _line(r: dict) -> str:
    config = r.get("expectation_config", {})
    kwargs = config.get("kwargs", {})
    column = kwargs.get("column") or (f"{kwargs['column_A']} vs {kwargs['column_B']}"
                                      if "column_A" in kwargs else "table")
    head = f"{_check_name(r)} ({column}): {config.get('description') or config.get('type')}"
    return f"{head}; observed {_observed(r)}; expected {_expected(config.get('type', ''), kwargs)}"


def _observed(r: dict) -> str:
    info = r.get("exception_info") or {}
    if info.get("raised_exception"):
        return f"an error while checking: {info.get('exception_message')}"
    result = r.get("result") or {}
    if "partial_missing_list" in result:  # distinct values against a set
        extra = [_fmt(v) for v in result.get("partial_unexpected_list") or []]
        missing = [_fmt(v) for v in result["partial_missing_list"]]
        parts = ([f"values outside the set {{{', '.join(extra)}}}"] if extra else []) + (
            [f"values of the set missing {{{', '.join(missing)}}}"] if missing else [])
        return "; ".join(parts) or "the distinct values differ from the set"
    if "observed_value" in result:
        value = result["observed_value"]
        return "no value (empty or NaN)" if value is None else _fmt(value)
    if "unexpected_count" in result:
        count, total = result["unexpected_count"], result.get("element_count")
        examples = [_example(row) for row in (result.get("partial_unexpected_index_list")
                                              or [])[:EXAMPLES]]
        if not examples:
            examples = [_fmt(v) for v in (result.get("partial_unexpected_list") or [])[:EXAMPLES]]
        return f"{count} of {total} rows unexpected" + (f", e.g. {', '.join(examples)}"
                                                        if examples else "")
    return "a failure without details (see the result dict)"


def _example(row: dict) -> str:
    row = dict(row)
    ident = row.pop("id", None)
    values = ", ".join(f"{k}={_fmt(v)}" for k, v in row.items())
    return f"{ident} ({values})" if ident is not None else values


def _expected(kind: str, kwargs: dict) -> str:
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    if "value_set" in kwargs:
        values = ", ".join(_fmt(v) for v in kwargs["value_set"])
        return f"{'exactly' if 'equal_set' in kind else 'each in'} {{{values}}}"
    if "value" in kwargs:
        return f"exactly {_fmt(kwargs['value'])}"
    if "threshold" in kwargs:
        return f"<= {_fmt(kwargs['threshold'])}"
    if "column_A" in kwargs:
        return f"{kwargs['column_A']} == {kwargs['column_B']} in every row"
    if kind == "expect_column_values_to_be_unique":
        return "no repeated value"
    if "not_be_null" in kind:
        return "no null/NaN"
    if low is not None and high is not None:
        return f"between {_fmt(low)} and {_fmt(high)}"
    if low is not None:
        return f">= {_fmt(low)}"
    if high is not None:
        return f"<= {_fmt(high)}"
    return "see the expectation"


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def docs_folder(docs_dir) -> Path | None:
    """The Data Docs folder, made when missing (None: no Data Docs)."""
    if docs_dir is None:
        return None
    docs_dir = Path(docs_dir)
    docs_dir.mkdir(parents=True, exist_ok=True)
    return docs_dir

"""Settings + the table's facts + reference statistics -> the gate's list of expectations.

Every expectation carries a short check name in meta["check"] (stable, for code and logs)
and a description with its thresholds (what Data Docs and the failure lines show).
"""

from __future__ import annotations

import great_expectations.expectations as gxe
from great_expectations.expectations.row_conditions import Column

from tasks.adapters.gx.expectations import ExpectColumnValueCountRatioToBeBetween
from tasks.adapters.gx.report import VERSUS_REFERENCE
from tasks.adapters.gx.settings import ValidationSettings
from tasks.adapters.gx.table import HARMLESS_SKIPS, SKIPPED_COLUMN, UNLABELLED, ProcessedTable

SPLITS = ["train", "val", "test"]
FLOAT32 = "float32"  # what training feeds the network; anything else is a wrong dataset


def build_expectations(table: ProcessedTable, settings: ValidationSettings,
                       reference: dict | None) -> list:
    """The expectations for this table, in the order the report lists them."""
    return [*_structure(table, settings), *_ingestion(table, settings), *_values(settings),
            *_labels(table, settings),
            *(_drift(table, settings, reference) if reference is not None else [])]


def _check(cls, check: str, description: str, versus_reference: bool = False, **kwargs):
    meta = {"check": check}
    if versus_reference:   # a comparison with the last validated version: a meant change fails it
        meta[VERSUS_REFERENCE] = True
    return cls(description=description, meta=meta, **kwargs)


def _structure(table: ProcessedTable, s: ValidationSettings) -> list:
    checks = [
        _check(gxe.ExpectTableRowCountToBeBetween, "rows_min",
               f"at least {s.min_rows} rows (samples)", min_value=s.min_rows),
        _check(gxe.ExpectTableRowCountToEqual, "rows_match_data",
               f"one manifest row per sample in data.npz ({table.n_samples})",
               value=table.n_samples),
        _check(gxe.ExpectColumnValuesToBeUnique, "ids_unique", "every id is unique", column="id"),
        _check(gxe.ExpectColumnPairValuesToBeEqual, "sha256_matches_data",
               "each row's sha256 is that of the sample with its id in data.npz",
               column_A="sha256", column_B="data_sha256"),
        _check(gxe.ExpectColumnValuesToBeInSet, "dtype", f"data.npz holds {FLOAT32} samples",
               column="data_dtype", value_set=[FLOAT32]),
        _check(gxe.ExpectColumnUniqueValueCountToBeBetween, "shape_single",
               "one sample shape for all rows", column="shape", min_value=1, max_value=1),
        _check(gxe.ExpectColumnPairValuesToBeEqual, "shape_matches_data",
               "each row's shape is the sample shape of data.npz",
               column_A="shape", column_B="data_shape"),
        _check(gxe.ExpectColumnValuesToNotBeNull, "nan_label",
               "every row has a numeric label (-1 when unlabelled)", column="label"),
        _check(gxe.ExpectColumnValuesToBeInSet, "split_values",
               f"split is one of {', '.join(SPLITS)}", column="split", value_set=SPLITS),
    ]
    if s.expected_shape_text is not None:
        checks.append(_check(gxe.ExpectColumnDistinctValuesToEqualSet, "shape_expected",
                             f"sample shape is {s.expected_shape_text}", column="shape",
                             value_set=[s.expected_shape_text]))
    return checks


def _ingestion(table: ProcessedTable, s: ValidationSettings) -> list:
    """Files of the source the loader skipped: at most max_skipped_files beyond hidden ones.
    The description names each reason with its folders and examples, so the failure line says
    what was dropped and where.  Folders written before meta.json recorded ingestion have no
    record to check."""
    if table.ingestion is None:
        return []
    dropped = {reason: info for reason, info in table.ingestion["skipped"].items()
               if reason not in HARMLESS_SKIPS and info["count"]}
    found = "; ".join(
        f"{info['count']} {reason.replace('_', ' ')} in "
        + ", ".join(f"{folder}/" for folder in info.get("folders", {}))
        + f" (e.g. {', '.join(info.get('examples', []))})" for reason, info in dropped.items())
    return [_check(gxe.ExpectColumnMaxToBeBetween, "files_skipped",
                   f"at most {s.max_skipped_files} source file(s) skipped for a reason other "
                   f"than being hidden (max_skipped_files); "
                   + (f"skipped: {found}" if found else "none skipped"),
                   column=SKIPPED_COLUMN, max_value=s.max_skipped_files)]


def _values(s: ValidationSettings) -> list:
    low, high = s.value_low, s.value_high
    # the population std of values confined to [low, high] is at most (high - low) / 2
    std_max = (high - low) / 2
    checks = [
        _check(gxe.ExpectColumnValuesToBeBetween, "nan_inf",
               "no NaN/inf values: every sample's nonfinite count is 0",
               column="nonfinite", min_value=0, max_value=0),
        _check(gxe.ExpectColumnValuesToNotBeNull, "nan_inf_count",
               "every row has a nonfinite count (not NaN)", column="nonfinite"),
    ]
    # GX skips nulls (pandas NaN) in value checks, so each statistic's NaN is checked on its own
    checks += [_check(gxe.ExpectColumnValuesToNotBeNull, f"nan_{column}",
                      f"per-sample {column} is not NaN", column=column)
               for column in ("min", "max", "mean", "std")]
    checks += [
        _check(gxe.ExpectColumnValuesToBeBetween, "range_min",
               f"per-sample min within [{low:g}, {high:g}]", column="min",
               min_value=low, max_value=high),
        _check(gxe.ExpectColumnValuesToBeBetween, "range_max",
               f"per-sample max within [{low:g}, {high:g}]", column="max",
               min_value=low, max_value=high),
        _check(gxe.ExpectColumnValuesToBeBetween, "range_mean",
               f"per-sample mean within [{low:g}, {high:g}]", column="mean",
               min_value=low, max_value=high),
        _check(gxe.ExpectColumnValuesToBeBetween, "range_std",
               f"per-sample std within [0, {std_max:g}], the most values in range can spread",
               column="std", min_value=0.0, max_value=std_max),
        # unique share = distinct / rows = 1 - (rows repeating an earlier row's sha256) / rows
        _check(gxe.ExpectColumnProportionOfUniqueValuesToBeBetween, "duplicates",
               f"at most {s.max_duplicate_fraction:.1%} of rows repeat an earlier sample "
               f"(unique sha256 share >= {1 - s.max_duplicate_fraction:g})",
               column="sha256", min_value=1 - s.max_duplicate_fraction),
    ]
    return checks


def _labels(table: ProcessedTable, s: ValidationSettings) -> list:
    checks = []
    if table.class_names is not None:
        k = len(table.class_names)
        checks.append(_check(gxe.ExpectColumnDistinctValuesToEqualSet, "labels",
                             f"labels are exactly the {k} classes 0..{k - 1} of meta.json "
                             "(every class present, no other label)",
                             column="label", value_set=list(range(k))))
    elif table.labelled:
        checks.append(_check(gxe.ExpectColumnValuesToBeBetween, "labels",
                             "every sample has a class label (label >= 0)",
                             column="label", min_value=0))
    if table.labelled:
        # among labelled rows: an unlabelled one (-1) is the labels check's failure, not a class
        checks.append(_check(ExpectColumnValueCountRatioToBeBetween, "class_balance",
                             f"largest class at most {s.max_class_ratio:g}x the smallest",
                             column="label", max_value=s.max_class_ratio,
                             row_condition=Column("label") != UNLABELLED))
    return checks


def _drift(table: ProcessedTable, s: ValidationSettings, reference: dict) -> list:
    checks = []
    # a reference spread of 0 would demand bit-identical means, which float summation in
    # another row order does not give: floor it far below any real change of the data
    floor = 1e-6 * (s.value_high - s.value_low)
    for column in ("mean", "std"):
        stats = _reference_value(reference, "per_sample", column)
        centre, spread = float(stats["mean"]), float(stats["std"])
        half_width = s.drift_tolerance * max(spread, floor)
        checks.append(_check(
            gxe.ExpectColumnMeanToBeBetween, f"drift_{column}",
            f"average per-sample {column} within {centre:.4g} ± {s.drift_tolerance:g} x "
            f"{spread:.3g} (last validated version's average ± tolerance x spread)",
            column=column, min_value=centre - half_width, max_value=centre + half_width,
            versus_reference=True))
    shape = _reference_value(reference, "shape")
    if shape is not None:
        checks.append(_check(gxe.ExpectColumnDistinctValuesToEqualSet, "drift_shape",
                             f"sample shape unchanged since the last validated version ({shape})",
                             column="shape", value_set=[shape], versus_reference=True))
    shares = _reference_value(reference, "label_shares")
    if shares:
        total = sum(shares.values())
        labels = sorted(shares, key=int)
        checks.append(_check(
            gxe.ExpectColumnKLDivergenceToBeLessThan, "drift_labels",
            f"label shares close to the last validated version's: KL(new || last) <= "
            f"{s.max_label_kl:g}", column="label", threshold=s.max_label_kl,
            partition_object={"values": [int(label) for label in labels],
                              "weights": [shares[label] / total for label in labels]},
            versus_reference=True))
    return checks


def _reference_value(reference: dict, *path: str):
    value = reference
    for depth, key in enumerate(path):
        if not isinstance(value, dict) or key not in value:
            raise ValueError(f"reference statistics lack {'.'.join(path[:depth + 1])!r}; pass the "
                             "`statistics` of the last successful ValidationReport, or None "
                             "for the first validated version")
        value = value[key]
    return value

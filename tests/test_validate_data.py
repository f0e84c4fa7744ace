"""The data-validation gate: real Great Expectations runs on processed folders on disk.

Bad datasets are written by hand (arrays + the project's own Dataset.manifest()), because
the loaders refuse them: the gate must catch what arrives from anywhere.  Each bad case
asserts the exact set of failed checks, so a check that fires for the wrong reason, or a
second check that fires along with it, shows up.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from diffusion.data import Dataset, load_dataset, load_image_folder, save_processed
from tasks.steps.validate_data import (DataValidationError, ValidationReport, ValidationSettings,
                                       require_valid, validate_dataset)

ROOT = Path(__file__).resolve().parents[1]


# --- helpers ------------------------------------------------------------------------------

def failed_checks(report: ValidationReport) -> set[str]:
    return {r["expectation_config"]["meta"]["check"]
            for r in report.result["results"] if not r["success"]}


def write_processed(folder: Path, x: np.ndarray, y: np.ndarray | None = None,
                    class_names: list[str] | None = None, edit_manifest=None,
                    name: str = "synthetic") -> Path:
    """A processed folder as save_processed lays it out, but without its validation."""
    n = len(x)
    ids = [f"{name}-{i:05d}" for i in range(n)]
    split = np.array(["train", "val", "test", "train", "train"] * (n // 5 + 1))[:n]
    ds = Dataset(name, torch.from_numpy(x), None if y is None else torch.from_numpy(y), split,
                 ids, "image", class_names)
    manifest = ds.manifest()
    if edit_manifest is not None:
        manifest = edit_manifest(manifest)
    folder.mkdir(parents=True)
    arrays = {"x": x, "split": split, "ids": np.array(ids)}
    if y is not None:
        arrays["y"] = y
    np.savez(folder / "data.npz", **arrays)
    manifest.to_csv(folder / "manifest.csv", index=False)
    (folder / "meta.json").write_text(json.dumps({"name": name, "kind": "image",
                                                  "class_names": class_names}))
    return folder


def synthetic(n: int = 300, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n distinct 1x8x8 samples uniform in [-1, 1], labels balanced over `classes`."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, size=(n, 1, 8, 8)).astype(np.float32)
    return x, (np.arange(n) % classes).astype(np.int64)


NAMES3 = ["a", "b", "c"]


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def digits_dir(digits, tmp_path_factory) -> Path:
    return save_processed(digits, tmp_path_factory.mktemp("processed") / "digits")


@pytest.fixture(scope="module")
def digits_reference(digits_dir) -> dict:
    report = validate_dataset(digits_dir, ValidationSettings())
    assert report.success, report.summary()
    return report.statistics


def write_digits_like(folder: Path, digits: Dataset, x: torch.Tensor) -> Path:
    return write_processed(folder, x.numpy(), digits.y.numpy(), digits.class_names, name="digits")


# --- the real dataset ---------------------------------------------------------------------

def test_real_digits_passes_with_data_docs_and_json_result(digits_dir, digits_reference, tmp_path):
    docs = tmp_path / "docs"
    start = time.perf_counter()
    report = validate_dataset(digits_dir, ValidationSettings(expected_shape=[1, 8, 8]),
                              reference=digits_reference, docs_dir=docs)
    seconds = time.perf_counter() - start
    print(f"\none validation of digits (1797 rows, {report.evaluated} expectations, "
          f"Data Docs): {seconds:.2f} s")

    assert report.success and report.failures == [], report.summary()
    # 28 = 27 + files_skipped (meta.json records what the loader skipped)
    assert report.evaluated == len(report.result["results"]) == 28
    require_valid(report)  # does not raise
    assert report.summary().startswith("dataset digits passed all 28 expectations (1797 rows)")
    assert (docs / "index.html").is_file() and report.docs_dir == docs
    validation_pages = list((docs / "validations").rglob("*.html"))
    assert validation_pages and "digits_data_gate" in validation_pages[0].as_posix()
    json.dumps(report.result, allow_nan=False)
    assert report.statistics["rows"] == 1797 and report.statistics["shape"] == "1x8x8"
    assert set(report.statistics["label_shares"]) == {str(k) for k in range(10)}


def test_result_of_a_bad_dataset_is_strict_json(tmp_path):
    x, y = synthetic()
    x[0, 0, 0, 0], x[1, 0, 0, 0] = np.nan, np.inf
    report = validate_dataset(write_processed(tmp_path / "d", x, y, NAMES3), ValidationSettings())
    assert not report.success
    text = json.dumps(report.result, allow_nan=False)  # GX reports the inf as an observed value
    assert "Infinity" in text
    json.dumps(report.statistics, allow_nan=False)


# --- each kind of bad data fails, and only on its own check ---------------------------

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_fails_and_the_message_names_it(tmp_path, bad):
    x, y = synthetic()
    x[7, 0, 3, 3] = bad
    report = validate_dataset(write_processed(tmp_path / "d", x, y, NAMES3), ValidationSettings())
    expected = {"nan_inf", "nan_min", "nan_max", "nan_mean", "nan_std"} if np.isnan(bad) else \
        {"nan_inf", "range_min" if bad < 0 else "range_max", "range_mean", "nan_std"}
    assert failed_checks(report) == expected
    with pytest.raises(DataValidationError) as caught:
        require_valid(report)
    message = str(caught.value)
    assert message == report.summary() and caught.value.report is report
    assert "no NaN/inf values" in message and "synthetic-00007" in message
    assert message.startswith(f"dataset synthetic failed {len(expected)} of ")
    assert "the thresholds under pipeline.validate_data in params.yaml" in message


def test_mixed_shapes_in_the_manifest_fail(tmp_path):
    x, y = synthetic()

    def two_shapes(manifest: pd.DataFrame):
        manifest.loc[:9, "shape"] = "1x8x9"
        return manifest

    report = validate_dataset(write_processed(tmp_path / "d", x, y, NAMES3, two_shapes),
                              ValidationSettings())
    assert failed_checks(report) == {"shape_single", "shape_matches_data"}
    assert any("10 of 300 rows" in line and "synthetic-00000" in line for line in report.failures)


def test_shape_other_than_expected_fails(tmp_path):
    x, y = synthetic()
    folder = write_processed(tmp_path / "d", x, y, NAMES3)
    assert validate_dataset(folder, ValidationSettings(expected_shape=[1, 8, 8])).success
    report = validate_dataset(folder, ValidationSettings(expected_shape=[3, 8, 8]))
    assert failed_checks(report) == {"shape_expected"}
    assert "values outside the set {1x8x8}" in report.failures[0]


# --- files of the source that the loader skipped ------------------------------------------

@pytest.fixture
def image_folder(tmp_path) -> Path:
    """120 distinct 8x8 images in 3 class folders, plus hidden tool droppings."""
    from PIL import Image

    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    for k in range(120):
        (root / "abc"[k % 3]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8)).astype(np.uint8), "L").save(
            root / "abc"[k % 3] / f"{k:03d}.png")
    (root / "a" / ".DS_Store").write_bytes(b"\0")
    (root / ".ipynb_checkpoints").mkdir()
    return root


def test_hidden_droppings_are_counted_but_pass(image_folder, tmp_path):
    folder = save_processed(load_image_folder(image_folder, size=8), tmp_path / "p" / "images")
    report = validate_dataset(folder, ValidationSettings())
    assert report.success, report.summary()


def test_a_skipped_user_file_fails_the_gate_naming_folder_and_file(image_folder, tmp_path):
    """Today: a file the loader skips (a format it does not read) left no trace anywhere."""
    (image_folder / "b" / "scan.heic").write_bytes(b"a photo in a format Pillow cannot read")
    folder = save_processed(load_image_folder(image_folder, size=8), tmp_path / "p" / "images")
    report = validate_dataset(folder, ValidationSettings())
    assert failed_checks(report) == {"files_skipped"}
    line = report.failures[0]
    assert "1 unsupported extension in b/ (e.g. b/scan.heic)" in line, line
    assert "observed 1; expected <= 0" in line, line
    assert validate_dataset(folder, ValidationSettings(max_skipped_files=1)).success


def test_float64_arrays_fail_on_dtype(tmp_path):
    x, y = synthetic()
    folder = write_processed(tmp_path / "d", x, y, NAMES3)
    np.savez(folder / "data.npz", x=x.astype(np.float64), ids=np.array(
        [f"synthetic-{i:05d}" for i in range(len(x))]))  # same values, so the sha256 still match
    assert failed_checks(validate_dataset(folder, ValidationSettings())) == {"dtype"}


def test_manifest_that_does_not_describe_data_npz_fails(tmp_path):
    x, y = synthetic()
    folder = write_processed(tmp_path / "d", x, y, NAMES3)
    changed = x.copy()
    changed[42] *= 0.5
    np.savez(folder / "data.npz", x=changed, ids=np.array(
        [f"synthetic-{i:05d}" for i in range(len(x) - 1)] + ["stranger"]))
    report = validate_dataset(folder, ValidationSettings())
    assert failed_checks(report) == {"sha256_matches_data"}
    line = report.failures[0]
    assert "2 of 300 rows" in line and "synthetic-00042" in line and "synthetic-00299" in line


def test_duplicated_half_fails(tmp_path):
    x, y = synthetic(n=300)
    x[150:], y[150:] = x[:150], y[:150]
    report = validate_dataset(write_processed(tmp_path / "d", x, y, NAMES3), ValidationSettings())
    assert failed_checks(report) == {"duplicates"}
    assert "observed 0.5;" in report.failures[0]


@pytest.mark.parametrize("repeats, passes", [(15, True), (16, False)])
def test_duplicate_fraction_counts_rows_that_repeat_an_earlier_row(tmp_path, repeats, passes):
    # 15 of 300 rows = 5.0 % repeat an earlier one: exactly max_duplicate_fraction.  Counting
    # every copy (first occurrence too) would make that 10 % and fail; 16 rows is 5.3 %
    x, y = synthetic(n=300)
    x[300 - repeats:] = x[:repeats]
    report = validate_dataset(write_processed(tmp_path / "d", x, y, NAMES3),
                              ValidationSettings(max_duplicate_fraction=0.05))
    assert report.success is passes and failed_checks(report) == (set() if passes else {"duplicates"})


def test_out_of_range_values_fail_and_name_the_samples(tmp_path):
    x, y = synthetic()
    x[[5, 9]] *= 1.2  # a few values beyond +-1, and the same rows' std still <= 1
    report = validate_dataset(write_processed(tmp_path / "d", x, y, NAMES3), ValidationSettings())
    assert failed_checks(report) == {"range_min", "range_max"}
    assert all("synthetic-00005" in line and "synthetic-00009" in line for line in report.failures)
    # the same data passes a gate configured for its range
    assert validate_dataset(tmp_path / "d", ValidationSettings(value_low=-1.2, value_high=1.2)).success


@pytest.mark.parametrize("counts, passes", [((150, 100, 50), True), ((160, 100, 40), False)])
def test_class_balance(tmp_path, counts, passes):
    x, _ = synthetic(n=sum(counts))
    y = np.repeat(np.arange(3), counts).astype(np.int64)  # largest/smallest = 3.0 and 4.0
    report = validate_dataset(write_processed(tmp_path / "d", x, y, NAMES3),
                              ValidationSettings(max_class_ratio=3.0))
    assert failed_checks(report) == (set() if passes else {"class_balance"})
    if not passes:
        assert "observed 4;" in report.failures[0]


def test_missing_class_and_unlabelled_rows_fail_on_labels(tmp_path):
    x, y = synthetic()
    y[y == 2] = 0  # class 'c' of meta.json never occurs
    report = validate_dataset(write_processed(tmp_path / "a", x, y, NAMES3), ValidationSettings())
    assert failed_checks(report) == {"labels"}
    assert "values of the set missing {2}" in report.failures[0]

    x, y = synthetic()
    y[:5] = -1  # five samples lost their label
    report = validate_dataset(write_processed(tmp_path / "b", x, y, NAMES3), ValidationSettings())
    assert failed_checks(report) == {"labels"}


def test_unlabelled_dataset_has_no_label_checks(tmp_path):
    x, _ = synthetic()
    report = validate_dataset(write_processed(tmp_path / "d", x), ValidationSettings())
    assert report.success, report.summary()
    checks = {r["expectation_config"]["meta"]["check"] for r in report.result["results"]}
    assert not checks & {"labels", "class_balance"}
    assert report.statistics["label_shares"] is None


def test_too_few_rows_fail(tmp_path):
    x, y = synthetic(n=60)
    report = validate_dataset(write_processed(tmp_path / "d", x, y, NAMES3), ValidationSettings())
    assert failed_checks(report) == {"rows_min"}
    assert "observed 60; expected >= 100" in report.failures[0]


# --- drift against the last validated version ------------------------------------------------

def test_drift_a_re_split_and_a_random_half_of_the_same_data_pass(digits, digits_reference,
                                                                  tmp_path):
    resplit = save_processed(load_dataset("digits", seed=1), tmp_path / "resplit")
    assert not np.array_equal(load_dataset("digits", seed=1).split, digits.split)
    report = validate_dataset(resplit, ValidationSettings(), reference=digits_reference)
    assert report.success, report.summary()
    assert {c for c in (r["expectation_config"]["meta"]["check"] for r in report.result["results"])
            if c.startswith("drift_")} == {"drift_mean", "drift_std", "drift_shape", "drift_labels"}

    keep = np.sort(np.random.default_rng(0).permutation(len(digits.ids))[:len(digits.ids) // 2])
    half = Dataset("digits", digits.x[keep], digits.y[keep], digits.split[keep],
                   [digits.ids[i] for i in keep], "image", digits.class_names)
    report = validate_dataset(save_processed(half, tmp_path / "half"), ValidationSettings(),
                              reference=digits_reference)
    assert report.success, report.summary()


@pytest.mark.parametrize("change, expected", [
    (lambda x: 0.5 * x, {"drift_mean", "drift_std"}),        # contrast halved: still in range
    (lambda x: x + 0.3, {"drift_mean", "range_max"}),        # brightness offset: std unchanged
])
def test_drift_of_scaled_or_offset_data_fails(digits, digits_reference, tmp_path, change, expected):
    folder = write_digits_like(tmp_path / "d", digits, change(digits.x))
    assert validate_dataset(folder, ValidationSettings()).success is ("range_max" not in expected)
    report = validate_dataset(folder, ValidationSettings(), reference=digits_reference)
    assert failed_checks(report) == expected
    assert any(line.startswith("drift_mean (mean): average per-sample mean within -0.3895")
               for line in report.failures)


def test_drift_of_label_shares_fails(digits, digits_reference, tmp_path):
    # keep 40 % of the samples of classes 0-4: their shares fall from ~0.10 to ~0.057, the
    # others rise to ~0.14; largest/smallest class stays below 3, so only the drift fires
    rng = np.random.default_rng(0)
    labels = digits.y.numpy()
    keep = (labels >= 5) | (rng.random(len(labels)) < 0.4)
    fewer = Dataset("digits", digits.x[keep], digits.y[keep], digits.split[keep],
                    [i for i, k in zip(digits.ids, keep) if k], "image", digits.class_names)
    folder = save_processed(fewer, tmp_path / "d")
    assert validate_dataset(folder, ValidationSettings()).success
    report = validate_dataset(folder, ValidationSettings(), reference=digits_reference)
    assert failed_checks(report) == {"drift_labels"}

    # the observed divergence is KL(new || reference) of the label shares
    p = np.bincount(labels[keep], minlength=10) / keep.sum()
    q = np.array([digits_reference["label_shares"][str(k)] for k in range(10)])
    (result,) = [r for r in report.result["results"]
                 if r["expectation_config"]["meta"]["check"] == "drift_labels"]
    assert result["result"]["observed_value"] == pytest.approx(np.sum(p * np.log(p / q)), rel=1e-9)
    assert result["result"]["observed_value"] > 0.05


def test_malformed_reference_is_the_callers_error(digits_dir, digits_reference):
    broken = {k: v for k, v in digits_reference.items() if k != "per_sample"}
    with pytest.raises(ValueError, match="reference statistics lack 'per_sample'"):
        validate_dataset(digits_dir, ValidationSettings(), reference=broken)


# --- folders that cannot be read, settings, the error object ----------------------------------

def test_unreadable_folder_gives_a_failed_report_naming_each_problem(tmp_path):
    x, y = synthetic()
    folder = write_processed(tmp_path / "d", x, y, NAMES3)
    (folder / "manifest.csv").unlink()
    (folder / "meta.json").write_text("{not json")
    report = validate_dataset(folder, ValidationSettings())
    assert not report.success and len(report.failures) == 2
    assert "manifest.csv: missing" in report.summary() and "meta.json: unreadable" in report.summary()
    json.dumps(report.result, allow_nan=False)
    with pytest.raises(DataValidationError, match="cannot be validated, 2 problem"):
        require_valid(report)

    pd.DataFrame({"id": ["a"]}).to_csv(folder / "manifest.csv", index=False)
    report = validate_dataset(folder, ValidationSettings())
    assert any("missing column(s) ['split', 'label'" in line for line in report.failures)


def test_empty_manifest_fails_without_crashing(tmp_path):
    x, y = synthetic()
    folder = write_processed(tmp_path / "d", x, y, NAMES3,
                             edit_manifest=lambda m: m.iloc[:0])
    report = validate_dataset(folder, ValidationSettings())
    assert not report.success
    assert {"rows_min", "rows_match_data"} <= failed_checks(report)


def test_settings_are_strict():
    with pytest.raises(ValueError, match="min_row"):
        ValidationSettings(min_row=10)
    with pytest.raises(ValueError, match="value_low=1.0 must be below value_high=-1.0"):
        ValidationSettings(value_low=1, value_high=-1)
    with pytest.raises(ValueError):
        ValidationSettings(max_duplicate_fraction=1.5)
    assert ValidationSettings(expected_shape=[1, 8, 8]).expected_shape_text == "1x8x8"


def test_validation_error_survives_pickling():
    report = ValidationReport(success=False, failures=["nan_inf (nonfinite): ..."],
                              result={"success": False}, statistics={}, dataset="d")
    error = pickle.loads(pickle.dumps(DataValidationError(report)))
    assert error.report == report and str(error) == report.summary()


def test_importing_the_step_does_not_import_great_expectations():
    code = ("import sys, tasks.steps.validate_data; "
            "print('great_expectations' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=60).stdout
    assert out.split() == ["False", "False"]

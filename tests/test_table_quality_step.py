"""The evaluation step's table part (tasks/steps/table_quality.py): each model's best setting
generates rows that are decoded and scored beside the floor.  Two generators whose rows are
known make the scores checkable: one that reproduces held-out real rows (a perfect
generator: it scores like the floor) and one that replays training rows (a copier: the privacy
scores must catch it)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from diffusion.data import Dataset
from tasks.steps.table_quality import table_quality
from test_table_data_step import small_table


class Replay(torch.nn.Module):
    """A 'denoiser' whose prediction of x0 is always the given rows: DDIM's last step returns
    its x0 prediction (sigma_min is its final noise level, eta 0), so the samples are these rows
    up to that last sigma."""

    def __init__(self, rows: torch.Tensor):
        super().__init__()
        self.rows = rows

    def forward(self, x, sigma):
        return self.rows[: len(x)].to(x.dtype)


@pytest.fixture(scope="module")
def churn_like(tmp_path_factory):
    from diffusion.config import DataConfig
    from tasks.steps.prepare_dataset import load_data

    folder = tmp_path_factory.mktemp("table")
    small_table(n=1200).to_csv(folder / "rows.csv", index=False)
    # val as large as test: the fresh-row generator replays val rows, one per test row
    return load_data(DataConfig(name="table", path=str(folder / "rows.csv"), target="churned",
                                id_column="customer", val_fraction=0.2, test_fraction=0.2))


def _best(*names: str) -> pd.DataFrame:
    return pd.DataFrame([{"model": name, "sampler": "ddim", "steps": 4, "nfe": 4, "fid": 0.0}
                         for name in names])


@pytest.fixture(scope="module")
def scored(churn_like, tmp_path_factory):
    """table_quality of a generator of fresh rows (the teacher) and a copier, with its folder
    and progress lines."""
    ds: Dataset = churn_like
    train, val = ds.subset("train"), ds.subset("val")
    sampling = {"grid": "karras", "sigma_min": 0.002, "sigma_max": 80.0, "rho": 7.0}
    models = {"teacher": (Replay(val.x), sampling),        # rows it was never trained on
              "copier": (Replay(train.x), sampling)}       # its own training rows
    best = pd.concat([_best("teacher"), _best("copier")])
    said = []
    folder = tmp_path_factory.mktemp("quality")
    out = table_quality(models, best, ds, folder, seed=0, device="cpu", log=said.append)
    return out, folder, said


def test_a_copier_is_caught_and_a_generator_of_fresh_rows_scores_like_the_floor(churn_like, scored):
    ds: Dataset = churn_like
    out, tmp_path, said = scored

    assert set(out["models"]) == {"ddim", "copier"}      # a teacher row is named by its sampler
    assert out["rows"] == len(ds.subset("test").ids)
    fresh, copier, floor = out["models"]["ddim"], out["models"]["copier"], out["floor"]
    # every training row replayed: each synthetic row is a training row
    assert copier["exact_copies"] == 1.0 and copier["dcr_median"] == 0.0
    assert fresh["exact_copies"] <= 0.05 and fresh["dcr_ratio"] > 0.8
    # fresh real rows: fidelity as high as the floor's within sampling noise (both ~240 rows)
    for key in ("column_shapes", "column_pair_trends"):
        assert abs(fresh[key] - floor[key]) < 0.06, (key, fresh[key], floor[key])
    assert abs(fresh["detection_auc"] - 0.5) < 0.15

    saved = json.loads((tmp_path / "table_quality.json").read_text())
    assert saved["models"]["copier"] == copier and saved["floor"] == floor
    csv = pd.read_csv(tmp_path / "table_quality.csv")
    assert list(csv["model"]) == ["floor (held-out real rows)", "ddim", "copier"]
    for name in ("ddim", "copier"):
        assert (tmp_path / f"association_{name}.png").stat().st_size > 1000
        assert out["files"][f"association_{name}"] == tmp_path / f"association_{name}.png"
    assert all(np.isfinite(v) for v in copier.values())
    # one progress line per scoring, as it is done: the floor first, then each model's setting
    assert [line.split(":")[0] for line in said] == [
        "rows of the floor (held-out real rows)", "rows of ddim (ddim, 4 NFE)", "rows of copier (ddim, 4 NFE)"]
    assert f"column shapes {copier['column_shapes']:.3f}" in said[2] and said[2].endswith(" s)")


def test_the_copiers_rows_are_refused_by_the_rows_guard_and_fresh_rows_pass_it(scored):
    """The register step's guard (tasks/steps/register_guard.py) on real scores: a model that
    replays its training rows is refused on both rules, with its numbers; fresh rows pass."""
    from diffusion.data_errors import DataError
    from tasks.steps.register_guard import RowsGuardSettings, check_served_rows, rows_refusal

    out, _, _ = scored
    guard = RowsGuardSettings()
    copier, fresh, floor = out["models"]["copier"], out["models"]["ddim"], out["floor"]
    broken = rows_refusal(copier, floor, guard)
    assert len(broken) == 2, broken
    assert broken[0].startswith("100.0% of its rows are exact copies of training rows against 0.0% ")
    assert "DCR ratio" in broken[1] and "is 0.000" in broken[1]
    assert rows_refusal(fresh, floor, guard) == []
    with pytest.raises(DataError) as e:
        check_served_rows({"floor": floor, "models": {"copier": copier}},
                          "copier (ddim, 4 NFE)", guard)
    assert str(e.value).startswith("the served rows of copier (ddim, 4 NFE) copy the training rows: ")
    assert "\n" not in str(e.value)
    check_served_rows({"floor": floor, "models": {"ddim": fresh}}, "ddim (ddim, 4 NFE)", guard)


def test_each_scored_setting_says_how_many_pairs_its_pair_trends_are_of_and_its_f1_ratio(scored):
    out, folder, said = scored
    saved = json.loads((folder / "table_quality.json").read_text())
    for scores in (out["floor"], *out["models"].values(), saved["floor"]):
        assert scores["column_pairs"] == 6.0                  # 4 described columns
        assert 0 <= scores["column_pair_trends_pairs"] <= 6
        assert scores["utility_f1_ratio"] == pytest.approx(scores["utility_f1"] / scores["utility_f1_real"])
    copier = out["models"]["copier"]
    pairs = int(copier["column_pair_trends_pairs"])
    assert (f"pair trends {copier['column_pair_trends']:.3f} ({pairs} of 6 pairs"
            if pairs else "(0 of 6 pairs scored: the column shapes' score)") in said[2], said[2]
    assert f"utility (AUC ratio) {copier['utility_ratio']:.3f}, F1 ratio {copier['utility_f1_ratio']:.3f}" in said[2]


def test_a_table_models_card_states_its_rows_scores_beside_the_floor():
    from tasks.adapters.model_card import model_card

    metrics = {"fid": 0.5, "fid_floor": 0.1, "table_column_shapes": 0.912, "table_floor_column_shapes": 0.97,
               "table_detection_auc": 0.71, "table_floor_detection_auc": 0.5, "table_dcr_ratio": 1.01}
    card = model_card("churn-diffusion", "3", metrics)
    rows = card.split("## Rows", 1)[1].split("##", 1)[0]
    assert "| column shapes (SDMetrics: 1 - KS or TV distance, mean over columns) | 0.912 | 0.97 |" in rows
    assert "| detection AUC, real vs synthetic rows (0.5: indistinguishable) | 0.71 | 0.5 |" in rows
    assert "0.912" not in card.split("## Rows", 1)[0]     # not repeated among the other numbers
    assert "## Rows" not in model_card("digits-diffusion", "1", {"fid": 0.5})

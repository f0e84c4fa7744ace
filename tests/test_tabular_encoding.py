"""diffusion.tabular.encoding: a table encodes to float32 vectors and decodes back -- categories
and integers exactly, numerical values within the quantile transform's resolution -- in both
categorical encodings, with its fitted state as JSON that rebuilds a bit-identical encoder."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from diffusion.data import DataError
from diffusion.tabular.encoding import TableEncoder
from diffusion.tabular.schema import infer_schema
from diffusion.tabular.tables import load_table

MODES = ("onehot", "analog_bits")


def _table(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    nulls = rng.random(n) < 0.1
    return pd.DataFrame({
        "income": rng.lognormal(10, 1, n),                          # full float precision
        "rate": np.round(rng.uniform(0, 5, n), 2),                  # two decimals
        "score": np.where(nulls, np.nan, rng.normal(0, 1, n)),      # nullable numerical
        "age": rng.integers(18, 90, n).astype(np.int32),
        "kids": pd.array(np.where(nulls[::-1], None, rng.poisson(1.2, n)), dtype="Int64"),
        "plan": rng.choice(["basic", "plus", "pro"], n),
        "region": pd.Categorical(rng.choice(["N", "E", "S", "W", "C"], n),
                                 categories=["N", "E", "S", "W", "C"], ordered=True),
        "member": rng.random(n) < 0.3,
        # a null string as pandas reads one from a CSV (decoding gives NaN, not None)
        "channel": np.where(rng.random(n) < 0.2, np.nan,
                            rng.choice(["web", "shop"], n).astype(object)),
    })


@pytest.fixture(scope="module")
def table():
    return _table(600)


def _local_gap(encoder: TableEncoder, name: str, values: np.ndarray) -> np.ndarray:
    """The wider of the two gaps between stored quantiles beside each value: decoding x's
    encoding interpolates within the interval holding x (or, for x on a quantile, one of the
    two beside it), so it cannot land farther from x than that width."""
    q = encoder._quantiles.quantiles_[:, encoder.numeric.index(name)]
    gaps = np.diff(q, prepend=q[0], append=q[-1])  # gaps[i]: left of q[i]; gaps[i + 1]: right
    i = np.clip(np.searchsorted(q, values, side="left"), 0, len(q) - 1)
    return np.maximum(gaps[i], gaps[i + 1])


@pytest.mark.parametrize("mode", MODES)
def test_encode_then_decode_returns_the_table(table, mode):
    encoder = TableEncoder(infer_schema(table), mode).fit(table)
    x = encoder.transform(table)
    assert x.dtype == np.float32 and x.shape == (len(table), encoder.dim)
    back = encoder.inverse_transform(x)
    assert list(back.columns) == list(table.columns)
    assert back.dtypes.to_dict() == table.dtypes.to_dict()
    exact = ["rate", "age", "kids", "plan", "region", "member", "channel"]
    pd.testing.assert_frame_equal(back[exact], table[exact])
    for name in ("income", "score"):
        present = table[name].notna().to_numpy()
        assert back[name].isna().to_numpy().tolist() == (~present).tolist()
        got, want = back[name].to_numpy()[present], table[name].to_numpy()[present]
        error = np.abs(got - want)
        assert (error <= _local_gap(encoder, name, want)).all()
        assert error.max() <= encoder.resolution()[name]
    # with 600 rows < 1000 quantiles every train value is a stored quantile, so only the
    # float32 rounding of z separates them: |dz| <= |z| 2**-24, and x moves by dx/dz times
    # that, dx/dz = pdf(z) (n_quantiles - 1) gap (references are 1/(n_quantiles - 1) apart)
    want = table["income"].to_numpy()
    z = x[:, encoder.column_slices["income"].start].astype(np.float64)
    slope = norm.pdf(z) * (encoder._quantiles.n_quantiles_ - 1) * _local_gap(encoder, "income", want)
    bound = 2 * slope * np.maximum(np.abs(z), 1) * 2.0 ** -24 + 1e-12 * np.abs(want)
    assert (np.abs(back["income"].to_numpy() - want) <= bound).all()


@pytest.mark.parametrize("mode", MODES)
def test_numerical_round_trip_on_more_rows_than_quantiles(mode):
    table = _table(3000, seed=1)[["income", "age", "plan"]]
    encoder = TableEncoder(infer_schema(table), mode).fit(table)
    assert encoder._quantiles.n_quantiles_ == 1000
    back = encoder.inverse_transform(encoder.transform(table))
    want = table["income"].to_numpy()
    error = np.abs(back["income"].to_numpy() - want)
    assert (error <= _local_gap(encoder, "income", want)).all()
    pd.testing.assert_frame_equal(back[["age", "plan"]], table[["age", "plan"]])


def test_layout_of_the_vectors(table):
    onehot = TableEncoder(infer_schema(table), "onehot").fit(table)
    widths = {n: s.stop - s.start for n, s in onehot.column_slices.items()}
    assert widths == {"income": 1, "rate": 1, "score": 2, "age": 1, "kids": 2, "plan": 3,
                      "region": 5, "member": 2, "channel": 3}  # nullable: + indicator / null
    starts = [s.start for s in onehot.column_slices.values()]
    assert starts == sorted(starts) and starts[0] == 0
    assert sum(widths.values()) == onehot.dim
    x = onehot.transform(table)
    for name in ("plan", "region", "member", "channel"):
        block = x[:, onehot.column_slices[name]]
        assert set(np.unique(block)) == {-1.0, 1.0} and (block.sum(1) == 2 - block.shape[1]).all()
    score = x[:, onehot.column_slices["score"]]
    null = table["score"].isna().to_numpy()
    assert (score[null] == [0.0, 1.0]).all() and (score[~null, 1] == -1.0).all()
    bits = TableEncoder(infer_schema(table), "analog_bits").fit(table)
    widths = {n: s.stop - s.start for n, s in bits.column_slices.items()}
    assert [widths[n] for n in ("plan", "region", "member", "channel")] == [2, 3, 1, 2]
    codes = bits.transform(table)[:, bits.column_slices["region"]]
    index = table["region"].cat.codes.to_numpy()  # C = 4 -> +1 -1 -1
    assert (codes[index == 4] == [1, -1, -1]).all() and (codes[index == 0] == [-1, -1, -1]).all()


def test_decoding_by_argmax_and_clipping(table):
    schema = infer_schema(table[["age", "region"]])
    encoder = TableEncoder(schema, "analog_bits").fit(table[["age", "region"]])
    x = np.array([[50.0, 1.0, 1.0, 1.0],      # bits 111 = 7: no category has it
                  [-50.0, 0.9, -0.2, 0.1],     # nearest pattern 101 = 4: "C"
                  [0.0, -0.1, -0.1, -0.1]])
    back = encoder.inverse_transform(x)
    assert back["age"].tolist() == [int(table["age"].max()), int(table["age"].min()),
                                    back["age"][2]]
    assert back["region"].tolist()[1:] == ["C", "N"]
    assert back["region"][0] in ("S", "W", "C")  # one of the patterns nearest to 111
    onehot = TableEncoder(schema, "onehot").fit(table[["age", "region"]])
    y = np.zeros((1, onehot.dim))
    y[0, onehot.column_slices["region"].start + 2] = 0.3
    assert onehot.inverse_transform(y)["region"].tolist() == ["S"]


@pytest.mark.parametrize("mode", MODES)
def test_json_state_rebuilds_a_bit_identical_encoder(table, mode):
    encoder = TableEncoder(infer_schema(table, target="plan"), mode).fit(table)
    text = encoder.to_json()
    state = json.loads(text)  # plain JSON: no pickle anywhere
    assert state["format"] == "dmops-table-encoder" and state["categorical"] == mode
    again = TableEncoder.from_json(text)
    assert again.schema == encoder.schema and again.column_slices == encoder.column_slices
    x = encoder.transform(table)
    assert again.transform(table).tobytes() == x.tobytes()
    assert np.array_equal(again._quantiles.quantiles_, encoder._quantiles.quantiles_)
    noise = np.random.default_rng(0).normal(size=x.shape)
    pd.testing.assert_frame_equal(again.inverse_transform(noise), encoder.inverse_transform(noise))
    assert TableEncoder.from_json(again.to_json()).to_json() == text


def test_state_errors():
    with pytest.raises(DataError, match="not JSON"):
        TableEncoder.from_json("{")
    with pytest.raises(DataError, match="not a table encoder state"):
        TableEncoder.from_json("{}")
    table = _table(50)[["income", "plan"]]
    state = TableEncoder(infer_schema(table)).fit(table).to_dict()
    del state["quantile"]["columns"]["income"]
    with pytest.raises(DataError, match=r"lacks the fitted transform of column\(s\) \['income'\]"):
        TableEncoder.from_dict(state)


def test_transform_errors_name_the_column_and_value(table):
    encoder = TableEncoder(infer_schema(table)).fit(table)
    with pytest.raises(DataError, match=r"column 'plan': value\(s\) \['gold'\] \(1 row\(s\), "
                                        r"first at row 3\) are not among the categories"):
        encoder.transform(table.assign(plan=table["plan"].where(table.index != 3, "gold")))
    with pytest.raises(DataError, match=r"column 'age': 1 null\(s\), first at row 5"):
        encoder.transform(table.assign(age=table["age"].astype(float).where(table.index != 5)))
    with pytest.raises(DataError, match=r"the table lacks column\(s\) \['member'\]"):
        encoder.transform(table.drop(columns="member"))
    with pytest.raises(DataError, match="column 'income': dtype object"):
        encoder.transform(table.assign(income="many"))
    with pytest.raises(DataError, match=r"shape \(2, 3\); accepted: \(N, 20\)"):
        encoder.inverse_transform(np.zeros((2, 3)))
    bad = encoder.transform(table.head(2))
    bad[1, encoder.column_slices["plan"].start] = np.nan
    with pytest.raises(DataError, match="first at row 1, dimension 7 \\(column 'plan'\\)"):
        encoder.inverse_transform(bad)
    with pytest.raises(DataError, match="categorical='bits'; accepted: onehot, analog_bits"):
        TableEncoder(encoder.schema, "bits")
    with pytest.raises(DataError, match="not fit"):
        TableEncoder(encoder.schema).transform(table)


@pytest.mark.parametrize("name", ["churn", "diamonds"])
def test_built_in_tables_round_trip(name):
    ds = load_table(name)
    rows = ds.table.sample(n=min(len(ds.table), 3000), random_state=0).reset_index(drop=True)
    frame = rows[ds.schema.names]
    encoder = TableEncoder(ds.schema).fit(frame)
    back = encoder.inverse_transform(encoder.transform(frame))
    # every column of both is categorical, integer or numerical with at most 2 decimals
    pd.testing.assert_frame_equal(back, frame)


def test_a_binary_integer_target_decodes_to_its_dtype_and_values():
    df = pd.DataFrame({"x": np.linspace(0, 1, 40), "y": np.array([0, 1] * 20, dtype=np.int64)})
    schema = infer_schema(df, target="y")
    encoder = TableEncoder(schema, "analog_bits").fit(df)
    back = encoder.inverse_transform(encoder.transform(df))
    assert str(back["y"].dtype) == "int64" and back["y"].tolist() == df["y"].tolist()

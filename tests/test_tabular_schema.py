"""diffusion.tabular.schema: inference rules, the JSON shape, declared schemas completed from the
data, and check_table's errors naming the column and what was seen."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from diffusion.data import DataError
from diffusion.tabular.schema import (TableSchema, check_table, complete_schema, conform,
                                      describe, infer_schema)


@pytest.fixture
def mixed():
    return pd.DataFrame({
        "key": ["a1", "a2", "a3", "a4"],
        "flag": [True, False, True, True],
        "grade": pd.Categorical(["low", "high", "mid", "low"], categories=["low", "mid", "high"],
                                ordered=True),
        "city": ["Paris", "Oslo", None, "Oslo"],
        "count": np.array([3, 1, 2, 3], dtype=np.int32),
        "visits": pd.array([1, None, 4, 2], dtype="Int64"),
        "whole": [1.0, 2.0, 3.0, 4.0],
        "price": [1.5, np.nan, 2.25, 3.0],
    })


def test_inference_rules(mixed):
    schema = infer_schema(mixed, target="price", id_column="key")
    got = {c.name: (c.type, c.dtype, c.nullable, c.categories, c.ordered) for c in schema.columns}
    assert got == {
        "flag": ("categorical", "bool", False, (False, True), False),
        "grade": ("categorical", "category", False, ("low", "mid", "high"), True),  # own order
        "city": ("categorical", "object", True, ("Oslo", "Paris"), False),          # sorted
        "count": ("integer", "int32", False, None, None),
        "visits": ("integer", "Int64", True, None, None),
        "whole": ("numerical", "float64", False, None, None),  # whole floats stay numerical
        "price": ("numerical", "float64", True, None, None),
    }
    assert schema.names == ["flag", "grade", "city", "count", "visits", "whole", "price"]
    assert schema.target == "price" and schema.id == "key"
    # few distinct values do not make an integer column categorical
    assert infer_schema(pd.DataFrame({"n": [0, 1] * 50})).columns[0].type == "integer"


def test_unusable_columns_are_named():
    with pytest.raises(DataError, match="column 'when' has dtype datetime64"):
        infer_schema(pd.DataFrame({"when": pd.to_datetime(["2024-01-01"]), "v": [1.0]}))
    with pytest.raises(DataError, match=r"column 'mix' \(object\) mixes values of types \['int', 'str'\]"):
        infer_schema(pd.DataFrame({"mix": ["a", 1]}, dtype=object))
    with pytest.raises(DataError, match="column 'empty' .* holds only nulls"):
        infer_schema(pd.DataFrame({"empty": [None, None]}, dtype=object))
    # a blank column of a CSV reads as float64 NaN: refused too, not left to the gate (trial)
    with pytest.raises(DataError, match=r"column 'notes' \(float64\) holds only nulls: nothing to model"):
        infer_schema(pd.DataFrame({"v": [1.0, 2.0], "notes": [np.nan, np.nan]}))
    with pytest.raises(DataError, match="target 'nope' is not a column"):
        infer_schema(pd.DataFrame({"v": [1.0]}), target="nope")
    with pytest.raises(DataError, match="id column 'nope' is not a column"):
        infer_schema(pd.DataFrame({"v": [1.0]}), id_column="nope")


def test_json_round_trip_and_shape(mixed):
    schema = infer_schema(mixed, target="price", id_column="key")
    text = json.dumps(schema.to_dict())
    again = TableSchema.from_dict(json.loads(text))
    assert again == schema and again.to_dict() == schema.to_dict()
    data = schema.to_dict()
    assert set(data) == {"columns", "target", "id"}
    assert data["columns"][1] == {"name": "grade", "type": "categorical", "dtype": "category",
                                  "nullable": False, "categories": ["low", "mid", "high"],
                                  "ordered": True}
    assert data["columns"][3] == {"name": "count", "type": "integer", "dtype": "int32",
                                  "nullable": False}


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(extra=1), r"unknown key\(s\) \['extra'\]"),
    (lambda d: d["columns"][0].update(type="text"), "column 'flag': type 'text'; accepted"),
    (lambda d: d["columns"][3].pop("dtype"), r"column 'count' lacks \['dtype'\]"),
    (lambda d: d["columns"][3].update(dtype="object"), "column 'count': dtype object cannot hold"),
    (lambda d: d["columns"][3].update(categories=["a"]), "column 'count': integer but gives"),
    (lambda d: d.update(target="key"), "target 'key' is not one of its columns"),
    (lambda d: d.update(id="count"), "id column 'count' is also listed in columns"),
    (lambda d: d["columns"][2].update(categories=["x", "x"]), "column 'city': categories repeat"),
    (lambda d: d["columns"][3].update(min=5, max=1), "column 'count': min 5 is above max 1"),
])
def test_from_dict_names_what_is_wrong(mixed, change, message):
    data = infer_schema(mixed, target="price", id_column="key").to_dict()
    change(data)
    with pytest.raises(DataError, match=message):
        TableSchema.from_dict(data)


def test_declared_schema_is_completed_from_the_data(mixed):
    declared = {"columns": [{"name": "flag", "type": "categorical"},
                            {"name": "grade"},
                            {"name": "city", "type": "categorical", "categories": ["Oslo", "Paris", "Rome"]},
                            {"name": "count", "type": "categorical"},   # a code, not a count
                            {"name": "visits", "type": "integer"},
                            {"name": "whole", "type": "integer"},       # whole floats as integers
                            {"name": "price", "type": "numerical", "dtype": "float64",
                             "nullable": True}],
                "target": "price", "id": "key"}
    schema = complete_schema(declared, mixed)
    inferred = infer_schema(mixed, target="price", id_column="key")
    assert schema.column("flag") == inferred.column("flag")
    assert schema.column("grade") == inferred.column("grade")
    assert schema.column("city").categories == ("Oslo", "Paris", "Rome")  # declared kept
    count = schema.column("count")
    assert (count.type, count.dtype, count.categories) == ("categorical", "int32", (1, 2, 3))
    assert (schema.column("whole").type, schema.column("whole").dtype) == ("integer", "float64")
    assert "price.dtype" not in schema.filled and "whole.dtype" in schema.filled
    assert "grade.categories" in schema.filled and "city.categories" not in schema.filled
    check_table(mixed, schema)  # the data fits the completed schema
    assert any("inferred from the data: " in line and "grade.type" in line
               for line in describe(schema))
    # only the target declared: everything else inferred
    only_target = complete_schema({"target": "price"}, mixed, id_column="key")
    assert only_target == inferred


def test_declared_schema_must_match_the_tables_columns(mixed):
    with pytest.raises(DataError, match=r"declared column\(s\) \['ghost'\] missing from the table"):
        complete_schema({"columns": [{"name": "ghost"}]}, mixed)
    with pytest.raises(DataError, match=r"column\(s\) \['city', 'count'.*does not list"):
        complete_schema({"columns": [{"name": "flag"}, {"name": "grade"}]}, mixed,
                        id_column="key")
    with pytest.raises(DataError, match="the schema's target is 'whole' but 'price' was asked"):
        complete_schema({"target": "whole"}, mixed, target="price")


@pytest.fixture
def schema(mixed):
    declared = infer_schema(mixed, id_column="key").to_dict()
    declared["columns"][6]["min"] = 0
    return TableSchema.from_dict(declared)


@pytest.mark.parametrize("change, message", [
    (lambda t: t.drop(columns="count"), r"missing column\(s\) \['count'\]"),
    (lambda t: t.assign(extra=1), r"unexpected column\(s\) \['extra'\]"),
    (lambda t: t.assign(count=t["count"].astype("int64")), "column 'count': dtype int64, the schema says int32"),
    (lambda t: t.assign(city=["Paris", "Oslo", "Rome", "Oslo"]),
     r"column 'city': value\(s\) \['Rome'\] \(1 row\(s\), first 2\) not among the schema's categories"),
    (lambda t: t.assign(whole=[1.0, np.nan, 3.0, 4.0]),
     r"column 'whole': 1 null\(s\) \(first at row\(s\) 1\) but the schema says not nullable"),
    (lambda t: t.assign(price=[1.0, -2.0, 3.0, 4.0]), r"column 'price': 1 value\(s\) beyond the declared min 0"),
    (lambda t: t.assign(whole=[1.0, np.inf, 3.0, 4.0]), r"column 'whole': 1 infinite value"),
    (lambda t: t.assign(key=["a1", "a1", "a3", "a4"]), r"id column 'key': 1 value repeats: 'a1' at rows 0 and 1; ids must be unique"),
    (lambda t: t.assign(whole=["1", "2", "3", "4"]), "column 'whole': dtype object, the schema says float64"),
])
def test_check_table_names_the_column_and_what_was_seen(mixed, schema, change, message):
    check_table(mixed, schema)
    with pytest.raises(DataError, match=message):
        check_table(change(mixed.copy()), schema, where="t.csv")


def test_integer_check_and_every_problem_in_one_message(mixed):
    declared = infer_schema(mixed, id_column="key").to_dict()
    declared["columns"][5]["type"] = "integer"  # "whole": float64 declared integer
    strict = TableSchema.from_dict(declared)
    bad = mixed.assign(whole=[1.0, 2.5, 3.0, 4.0], city=["Rome"] * 4)
    with pytest.raises(DataError) as info:
        check_table(bad, strict, where="t.csv")
    text = str(info.value)
    assert text.startswith("t.csv: ") and "\n" not in text
    assert "column 'whole': 1 non-whole value(s), e.g. [2.5]" in text and "column 'city'" in text


def test_conform_casts_losslessly_and_leaves_the_rest_to_check(mixed):
    schema = infer_schema(mixed, id_column="key")
    as_read = mixed.assign(grade=mixed["grade"].astype(object), count=mixed["count"].astype("int64"))
    back = conform(as_read, schema)
    pd.testing.assert_frame_equal(back, mixed)
    with pytest.raises(DataError, match="column 'grade': value"):
        conform(as_read.assign(grade=["low", "top", "mid", "low"]), schema)


def test_a_two_valued_integer_target_is_a_class_label():
    """A 0/1 target read from a CSV is int64: as `integer` its utility would be a regression's
    R^2 of a 0/1 column (and be dropped when that is <= 0); as a class it gets AUC and F1."""
    df = pd.DataFrame({"x": np.arange(8) * 1.5, "n": [0, 1] * 4, "churned": [0, 1, 1, 0] * 2})
    schema = infer_schema(df, target="churned")
    col = {c.name: c for c in schema.columns}
    assert (col["churned"].type, col["churned"].dtype, col["churned"].categories) == \
        ("categorical", "int64", (0, 1))
    assert col["n"].type == "integer"  # the same values in a feature stay integer
    # three values are not a binary label; a declared type is kept
    assert infer_schema(df.assign(churned=[0, 1, 2, 0] * 2), target="churned").columns[2].type == "integer"
    declared = complete_schema({"columns": [{"name": "x"}, {"name": "n"},
                                            {"name": "churned", "type": "integer"}]}, df, "churned")
    assert declared.columns[2].type == "integer"
    assert complete_schema({"target": "churned"}, df).columns[2].type == "categorical"

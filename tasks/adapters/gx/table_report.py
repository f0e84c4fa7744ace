"""The readable line each failed expectation of the table gate becomes, in the image gate's
style ("<check> (<column>): <description>; observed ...; expected ..."), with what a table's
failures need said: the missing and unexpected column names, the dtype seen, the share of
nulls, the new categories with their row counts, the offending rows by the id column, the moments and
shares that drifted."""

from __future__ import annotations

from typing import Any

from tasks.adapters.gx.report import failure_lines

EXAMPLES = 3     # offending rows named per failed expectation; the result dict holds more
VALUES_SHOWN = 5  # new categories named per failed expectation


def table_failure_lines(result: dict, expectations: list, id_column: str | None = None) -> list[str]:
    """One line per failed expectation of a GX result dict, in the order of `expectations`;
    offending rows are named by the table's `id_column` (its values), else by their row ids
    ("row-00012": the row's position in the file)."""
    rank = {(e.meta["check"], e.meta.get("column")): i for i, e in enumerate(expectations)}
    failed = [r for r in result.get("results", []) if not r.get("success")]
    failed.sort(key=lambda r: rank.get(_key(r), len(rank)))
    return [_line(r, id_column) for r in failed]


def _key(r: dict) -> tuple[str, str | None]:
    meta = r.get("expectation_config", {}).get("meta") or {}
    return meta.get("check", "?"), meta.get("column")


def _line(r: dict, id_column: str | None = None) -> str:
    config = r.get("expectation_config", {})
    check, column = _key(r)
    info = r.get("exception_info") or {}
    kwargs, res = config.get("kwargs", {}), r.get("result") or {}
    observed_expected = (None if info.get("raised_exception")
                         else _describe(check, kwargs, res, id_column))
    if observed_expected is None:  # the image gate's wording serves the generic checks
        return failure_lines({"results": [r]}, [])[0]
    observed, expected = observed_expected
    return (f"{check} ({column or 'table'}): {config.get('description')}; observed {observed}; "
            f"expected {expected}")


def _describe(check: str, kwargs: dict, res: dict,
              id_column: str | None = None) -> tuple[str, str] | None:
    details = res.get("details") or {}
    if check in ("columns", "columns_vs_reference"):
        mismatched = details.get("mismatched") or {}
        parts = [f"{what} {', '.join(map(repr, mismatched[what]))}"
                 for what in ("missing", "unexpected") if mismatched.get(what)]
        # named rather than counted: the id column is one of them but not a modelled column
        names = [c for c in kwargs["column_set"]
                 if not c.startswith("__gate") and c not in ("_id", "_split")]
        source = "schema.json names" if check == "columns" else "the last validated version had"
        return "; ".join(parts) or "other columns", \
            f"exactly the columns {source} ({', '.join(names)})"
    if check == "columns_order":
        schema = [c for c in kwargs["column_list"]]
        seen = res.get("observed_value") or []
        return f"the order {', '.join(c for c in seen if c in schema)}", \
            f"the order {', '.join(schema)}"
    if check in ("type", "type_vs_reference"):
        return str(res.get("observed_value")), " or ".join(kwargs["kinds"]) + " values"
    if check in ("nulls", "nulls_vs_reference"):
        count, total = res.get("unexpected_count", 0), res.get("element_count", 0)
        share = count / total if total else 0.0
        limit = 1.0 - kwargs.get("mostly", 1.0)
        return (f"{share:.1%} nulls ({count} of {total} rows{_examples(res, id_column)})",
                f"at most {limit:.1%}" if check == "nulls" else
                "none: the last validated version had no nulls in this column")
    if check in ("categories", "categories_vs_reference"):
        # SUMMARY results hold the first unexpected rows only: their distinct values are
        # named, the row count is the whole table's
        new = list(dict.fromkeys(res.get("partial_unexpected_list") or []))
        values = ", ".join(repr(v) for v in new[:VALUES_SHOWN])
        where = "schema.json" if check == "categories" else "the last validated version"
        return (f"{res.get('unexpected_count')} of {res.get('element_count')} rows with a "
                f"category not in {where}, e.g. {values}{_examples(res, id_column, ' at')}",
                "each value one of " + _short(kwargs["value_set"]))
    if check in ("finite", "range"):
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        values = [v for v in res.get("partial_unexpected_list") or [] if v is not None]
        seen = f", values such as {', '.join(_fmt(v) for v in values[:EXAMPLES])}" if values else ""
        return (f"{res.get('unexpected_count')} of {res.get('element_count')} rows outside"
                f"{seen}{_examples(res, id_column, ' at' if values else ', e.g.')}",
                "finite values" if check == "finite" else _between(low, high))
    if check == "duplicates":
        unique = res.get("observed_value")
        if not unique:  # GX gives 0 (or nothing) for a table without rows
            return "no rows to compare", f"at most {1 - kwargs['min_value']:.2%}"
        return (f"{1 - unique:.2%} of rows repeat an earlier row",
                f"at most {1 - kwargs['min_value']:.2%}")
    if check in ("drift_mean", "drift_std"):
        value = res.get("observed_value")
        if value is None:
            return "no value (no non-null values)", _between(kwargs["min_value"],
                                                             kwargs["max_value"])
        return _fmt(value), _between(kwargs["min_value"], kwargs["max_value"])
    if check == "drift_categories":
        changes = ", ".join(f"{v!r} {new:.3f} (was {old:.3f})"
                            for v, new, old in details.get("largest_changes", []))
        return (f"total variation distance {res.get('observed_value', float('nan')):.3f}; "
                f"largest changes: {changes}", f"<= {kwargs['threshold']:.3f}")
    return None


def _examples(res: dict, id_column: str | None = None, lead: str = ", e.g.") -> str:
    """", e.g. customer_id C00231, C00240" naming the first offending rows by the table's id
    column, or ", e.g. row-00012, row-00040" (their positions) when it has none; `lead`
    begins it (" at" after example values: "e.g. 'titanium' at customer_id C00231")."""
    rows = (res.get("partial_unexpected_index_list") or [])[:EXAMPLES]
    ids = [str(row.get("_id")) for row in rows if isinstance(row, dict) and "_id" in row]
    if not ids:
        return ""
    return f"{lead} {id_column + ' ' if id_column else ''}{', '.join(ids)}"


def _between(low, high) -> str:
    if low is not None and high is not None:
        return f"between {_fmt(low)} and {_fmt(high)}"
    return f">= {_fmt(low)}" if low is not None else f"<= {_fmt(high)}"


def _short(values: list) -> str:
    shown = ", ".join(repr(v) for v in values[:10])
    return "{" + shown + (f", ... ({len(values)} in all)" if len(values) > 10 else "") + "}"


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)

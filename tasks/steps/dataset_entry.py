"""A dataset entry of params.yaml (`datasets.<name>`) as the user knows it: how messages name it,
and the checks of it that cost next to nothing, made before DVC runs its stages.

Imports nothing heavy (no torch or scikit-learn; pandas only when a table is checked), so that
`dmops run` and `dmops fingerprint` answer a bad entry at once.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from diffusion.data_errors import DataError
from diffusion.data_settings import DataConfig


def entry_label(name: str, data: DataConfig) -> str:
    """How messages name dataset `name`: its entry in params.yaml, with the file or folder it
    reads, e.g. "datasets.customers (customers.csv)"; "datasets.churn" for a built-in set."""
    return f"datasets.{name}" + (f" ({data.path})" if data.path else "")


@contextmanager
def named_errors(name: str):
    """Re-raise a DataError of the block as one line that starts with `datasets.<name>` (unless
    it already does): the user finds the fault by the entry's name, not by a file's."""
    try:
        yield
    except DataError as exc:
        message = " ".join(str(exc).split())
        if message.startswith(f"datasets.{name}") and message == str(exc):
            raise
        raise DataError(message if message.startswith(f"datasets.{name}")
                        else f"datasets.{name}: {message}") from None


def check_dataset(data: DataConfig, name: str, repo=".") -> None:
    """The checks of entry `datasets.<name>` (settings `data`, already validated) that cost next
    to nothing, so that a bad entry is one immediate line rather than a failed DVC stage: its
    source (`data.path`, relative to `repo` as the stages read it) exists -- a folder, an .npz,
    a table file -- and a table reads as its format (a CSV's header and first row, a Parquet
    file's footer; a CSV split on data.sep, not one column named with another delimiter), has a
    row and holds the target and id columns
    (diffusion.tabular.table_files.check_source).  Nothing is hashed or read whole.

    Raises DataError naming the entry.  What only reading everything finds (a declared schema
    the values do not fit, repeated ids, unreadable images) is `dmops prepare`'s, in the stage.
    """
    path = None if data.path is None else Path(data.path)
    if path is not None and not path.is_absolute():
        path = Path(repo) / path
    with named_errors(name):
        if data.is_table:
            from diffusion.tabular.table_files import check_source

            check_source(str(path) if path is not None else data.name, data.target,
                         data.id_column, label=entry_label(name, data), sep=data.sep)
        elif path is not None:
            from tasks.steps.data_fingerprint import source_files

            source_files(data.model_copy(update={"path": str(path)}), hash_files=False)

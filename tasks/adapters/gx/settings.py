"""The thresholds of the data-validation gate (defaults fit the 8x8 digits in [-1, 1])."""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field, model_validator

from diffusion.settings import Settings
from tasks.adapters.gx.table_settings import TableValidationSettings


class ValidationSettings(Settings):
    """What a processed dataset must satisfy to be trained on.

    drift_tolerance is a standardised mean difference: the average of a per-sample statistic
    (mean, std) may move by at most drift_tolerance times its spread across samples in the
    last validated version.  A new draw of n rows from the same distribution moves it by
    about sqrt(1/n + 1/n_ref) spreads (0.14 at n = n_ref = 100, four standard errors = 0.57),
    so 1.0 does not fire on sampling noise at min_rows, while halving digits' contrast
    (x -> 0.5 x) moves the per-sample mean by 2.9 and the per-sample std by 8 spreads.

    max_label_kl bounds KL(new label shares || last validated shares).  Sampling noise alone
    gives 2 n KL ~ chi2(K - 1), about (K - 1) / (2 n) = 0.0025 for digits (K = 10, n = 1797);
    one of ten classes going missing gives ln(10/9) = 0.105.
    """

    model_config = ConfigDict(allow_inf_nan=False)  # extra="forbid" comes from Settings

    min_rows: Annotated[int, Field(ge=1)] = 100
    value_low: float = -1.0
    value_high: float = 1.0
    max_class_ratio: Annotated[float, Field(ge=1.0)] = 3.0
    max_duplicate_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = 0.05
    drift_tolerance: Annotated[float, Field(gt=0.0)] = 1.0
    max_label_kl: Annotated[float, Field(gt=0.0)] = 0.05
    expected_shape: list[Annotated[int, Field(ge=1)]] | None = None
    # files of the source (an image folder) the loader skipped for any reason but being hidden
    # (an unsupported extension, a broken link, ...): 0, so a user's dropped file is never
    # silent; raise it to accept e.g. a README.md beside the class folders
    max_skipped_files: Annotated[int, Field(ge=0)] = 0
    # a table's own thresholds (kind "table"; the image gate does not read them); a table
    # reads min_rows and max_duplicate_fraction above and none of the image-only fields
    table: TableValidationSettings = Field(default_factory=TableValidationSettings)

    @model_validator(mode="after")
    def _range_not_empty(self) -> ValidationSettings:
        if not self.value_low < self.value_high:
            raise ValueError(f"value_low={self.value_low} must be below value_high={self.value_high}")
        if self.expected_shape is not None and not self.expected_shape:
            raise ValueError("expected_shape=[] names no dimension; give e.g. [1, 8, 8] or leave it unset")
        return self

    @property
    def expected_shape_text(self) -> str | None:
        """expected_shape as the manifest writes shapes ('1x8x8'), or None."""
        return None if self.expected_shape is None else "x".join(map(str, self.expected_shape))

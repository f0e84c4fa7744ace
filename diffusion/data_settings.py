"""The `data` section: which dataset diffusion/data.py loads, and how it is split."""

from __future__ import annotations

from typing import Annotated, Literal, Union

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


class DataConfig(Settings):
    name: Literal["digits", "folder", "npz", "moons", "swiss_roll", "gmm8"] = "digits"
    path: str | None = None                       # for 'folder' and 'npz'
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

    @field_validator("background", mode="before")
    @classmethod
    def _background(cls, value):
        background_rgb(value)  # ValueError names what is accepted
        return list(value) if isinstance(value, tuple) else value

    @model_validator(mode="after")
    def _check(self):
        if self.name in ("folder", "npz") and not self.path:
            raise ValueError(f"data.path is required when data.name is {self.name!r}")
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError("data.val_fraction + data.test_fraction must be below 1 "
                             "(something has to be left to train on)")
        return self

    def loader_options(self) -> dict:
        """The options data.load_dataset takes for this dataset."""
        common = {"seed": self.seed, "val_fraction": self.val_fraction,
                  "test_fraction": self.test_fraction}
        if self.name == "folder":
            return {"path": self.path, "size": self.image_size, "channels": self.channels,
                    "background": self.background, "fit": self.fit, **common}
        if self.name == "npz":
            return {"path": self.path, **common}
        if self.name == "digits":
            return common
        return {"n": self.n, **common}

"""Numbers with their spread or interval, in words a person reads (card, promotion reason).

One rule for every "value ± spread" and "[lo, hi]": the value is printed with `digits`
significant digits, and its spread or interval ends are rounded at the value's last printed
decimal place, so nothing finer than the value itself is shown.  A spread or end that rounds
to zero prints as zero at that place ("0.0123 ± 0.00000"), never as float noise ("± 1e-15"):
a KID over subsets that are the whole set, or the paired interval of two identical models,
reads as what it is.
"""

from __future__ import annotations

import math

DIGITS = 4          # significant digits of a printed value
_MAX_PLACES = 10    # beyond this a zero is written "0" (no run of zeros)


def value_text(value: float, digits: int = DIGITS, sign: bool = False) -> str:
    """`value` with `digits` significant digits ('0.0123', '+1.5' with `sign`)."""
    return f"{float(value):{'+' if sign else ''}.{digits}g}"


def decimal_places(scale: float, digits: int = DIGITS) -> int | None:
    """The decimal place of `scale`'s last printed digit at `digits` significant digits (2 for
    12.34, 5 for 0.01234, negative for 12340); None when `scale` is 0 or not finite."""
    scale = abs(float(scale))
    if scale == 0 or not math.isfinite(scale):
        return None
    return digits - 1 - math.floor(math.log10(scale))


def _at_place(x: float, places: int | None, digits: int, sign: bool) -> str:
    """`x` rounded at `places` decimals, then printed with `digits` significant digits; a zero
    is written with the places' zeros and no sign."""
    if places is None or not math.isfinite(x):
        return value_text(x, digits, sign)
    rounded = round(float(x), places)
    if rounded == 0:
        return f"{0:.{places}f}" if 0 < places <= _MAX_PLACES else "0"
    return value_text(rounded, digits, sign)


def plus_minus(value: float, spread: float, digits: int = DIGITS) -> str:
    """'value ± spread' with the spread at the value's precision: plus_minus(0.0123, 1e-15)
    -> '0.0123 ± 0.00000'; plus_minus(0.004, 0.001) -> '0.004 ± 0.001'."""
    places = decimal_places(value, digits)
    return f"{value_text(value, digits)} ± {_at_place(abs(spread), places, digits, False)}"


def interval_text(lo: float, hi: float, scale: float, digits: int = DIGITS,
                  sign: bool = False) -> str:
    """'[lo, hi]', each end at the precision of `scale` (the value the interval is about, e.g.
    the estimate, or the larger of two compared values for an interval of their difference);
    `sign` prints '+' on nonzero ends."""
    places = decimal_places(scale, digits)
    return f"[{_at_place(lo, places, digits, sign)}, {_at_place(hi, places, digits, sign)}]"


def difference_text(difference: float, scale: float, digits: int = DIGITS) -> str:
    """A signed difference at the precision of `scale` ('+0.012', '0.0000' for float noise)."""
    return _at_place(difference, decimal_places(scale, digits), digits, True)

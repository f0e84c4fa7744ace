"""Progress of a long loop, for a person: a live bar on a terminal, a few plain lines anywhere
else.

tqdm redraws its bar with carriage returns.  Written to a file, a pipe or a log collector,
every redraw lands on the same "line": one `make run` log held bars of up to 171,000
characters.  So `Progress` keeps tqdm's bar only where its stream is a terminal.  Elsewhere
it writes info records to this module's logger (`diffusion.progress`, shown by
diffusion/messages.py and sent to a flow run's logs with the rest of the core's messages):
one when at least `every_fraction` of the steps *and* `every_s` seconds have passed since the
previous one (whichever is rarer), and one at the end.  A loop therefore writes at most
ceil(1 / every_fraction) + 1 lines, each of bounded length:

    train: 1200/5000 steps (24 %), loss=0.0312, images_s=410; 2.1 min elapsed, about 6.5 min left
    train: 5000/5000 steps in 8.7 min (9.6 step/s), loss=0.0288, images_s=412
"""

from __future__ import annotations

import logging
import math
import sys
import time
from typing import Callable, TextIO

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

MAX_VALUE_CHARS = 24   # a postfix value longer than this is cut: lines stay short


def duration(seconds: float) -> str:
    """'42 s', '3.1 min', '2.4 h': a duration as a person reads it (`seconds` >= 0)."""
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _number(x: float) -> str:
    """3 significant digits, never in exponent form: '0.0123', '9.6', '412', '15000'."""
    return f"{x:.0f}" if x >= 100 else f"{x:.3g}"


def is_terminal(stream) -> bool:
    """Whether `stream` is an open terminal (a closed or odd stream is not)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class Progress:
    """The progress of steps `initial` .. `total` of a loop, with tqdm's `update`,
    `set_postfix` and `close`.  `stream` (default: sys.stderr, where tqdm writes) decides the
    form: a live tqdm bar on a terminal, else the plain lines of the module docstring.
    `enabled=False` shows nothing.  `every_fraction` in (0, 1], `every_s` >= 0 and `clock`
    (seconds, monotonic) set the line cadence; ValueError for values outside those ranges."""

    def __init__(self, total: int, *, initial: int = 0, desc: str = "", unit: str = "step",
                 enabled: bool = True, stream: TextIO | None = None,
                 every_fraction: float = 0.1, every_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        if not 0 < every_fraction <= 1 or every_s < 0:
            raise ValueError(f"every_fraction={every_fraction!r} (accepted: (0, 1]), "
                             f"every_s={every_s!r} (accepted: >= 0)")
        stream = sys.stderr if stream is None else stream
        self.total, self.n, self.desc, self.unit = int(total), int(initial), desc, unit
        self._initial, self._enabled, self._clock = int(initial), enabled, clock
        self._min_steps = max(1, math.ceil(every_fraction * self.total))
        self._every_s = every_s
        self._postfix: dict[str, str] = {}
        self._bar = None
        if enabled and is_terminal(stream):
            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit,
                             dynamic_ncols=True, file=stream)
        self._t0 = self._last_t = clock()
        self._last_n = self.n

    def set_postfix(self, **values) -> None:
        """Values shown after the count (`loss="0.0312"`), on the bar and in the next line."""
        self._postfix = {k: str(v)[:MAX_VALUE_CHARS] for k, v in values.items()}
        if self._bar is not None:
            self._bar.set_postfix(**values)

    def update(self, n: int = 1) -> None:
        """`n` more steps done; a plain line when the cadence says one is due."""
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
            return
        if not self._enabled or self.n >= self.total:
            return   # the last step's line is close()'s
        now = self._clock()
        if self.n - self._last_n >= self._min_steps and now - self._last_t >= self._every_s:
            self._last_n, self._last_t = self.n, now
            elapsed = now - self._t0
            # the rate of this session's steps (a resumed loop's earlier steps took no time here)
            left = (self.total - self.n) * elapsed / (self.n - self._initial)
            logger.info(f"{self._head()} ({100 * self.n / max(1, self.total):.0f} %)"
                        f"{self._tail()}; {duration(elapsed)} elapsed, about {duration(left)} left")

    def close(self) -> None:
        """End the bar, or write the final line when any step was done."""
        if self._bar is not None:
            self._bar.close()
            return
        done = self.n - self._initial
        if not self._enabled or done <= 0:
            return
        elapsed = self._clock() - self._t0
        rate = f" ({_number(done / elapsed)} {self.unit}/s)" if elapsed > 0 else ""
        logger.info(f"{self._head()} in {duration(elapsed)}{rate}{self._tail()}")

    def _head(self) -> str:
        return f"{self.desc}: {self.n}/{self.total} {self.unit}s"

    def _tail(self) -> str:
        return "".join(f", {k}={v}" for k, v in self._postfix.items())

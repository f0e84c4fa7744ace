"""How the core tells a person what it is doing, and how an application shows it.

The core reports two kinds of thing, each one way:
- per-step numbers (loss, learning rate, throughput) go to the caller's
  `on_log(step, metrics)` (diffusion.loop.optimise and the trainers that wrap it);
- human-readable messages ("resuming from ...", "feature extractor: reused ...", a warning
  about an unverified copy) go through Python's standard `logging`, each module writing to
  `logging.getLogger(__name__)`: info for progress, warning for warnings.

The core itself never prints and never configures logging (a library leaves that to the
application).  An application that wants the messages on its console calls `show_messages()`
once: the command line, a benchmark script, the test session.
"""

from __future__ import annotations

import logging
import sys

LOGGER = "diffusion"   # the parent of every core module's logger


class _CurrentStream(logging.StreamHandler):
    """A stream handler writing to whatever `sys.<name>` is when the record is emitted, as
    logging.lastResort does: Typer's CliRunner and pytest's capsys swap sys.stdout/stderr per
    call, and a handler holding the stream of its creation would write to a closed one."""

    def __init__(self, name: str):
        self._stream_name = name
        super().__init__()

    @property
    def stream(self):
        return getattr(sys, self._stream_name)

    @stream.setter
    def stream(self, _value):
        pass   # StreamHandler.__init__ assigns one; the stream is looked up per record


class _LevelPrefix(logging.Formatter):
    """'warning: <message>', 'error: <message>': the prefix the command line uses for errors."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {super().format(record)}"


def show_messages(info: str = "stdout") -> logging.Logger:
    """Show the core's messages on the console: info records as their bare message on
    `info` ("stdout" or "stderr", looked up per record), warnings and errors as
    "warning: <message>" on stderr.  Sets the "diffusion" logger to INFO and stops its records
    from also reaching the root logger's handlers (Prefect's console handler, for one, would
    print each line a second time); handlers added to the "diffusion" logger itself, such as
    Prefect's API handler under PREFECT_LOGGING_EXTRA_LOGGERS=diffusion, still get them.
    Idempotent: a second call replaces the handlers of the first.  Raises ValueError for any
    other `info`.  Returns the "diffusion" logger."""
    if info not in ("stdout", "stderr"):
        raise ValueError(f"info={info!r}; accepted: 'stdout' or 'stderr'")
    logger = logging.getLogger(LOGGER)
    for handler in [h for h in logger.handlers if isinstance(h, _CurrentStream)]:
        logger.removeHandler(handler)
    progress = _CurrentStream(info)
    progress.setFormatter(logging.Formatter("%(message)s"))
    progress.addFilter(lambda record: record.levelno < logging.WARNING)
    warnings = _CurrentStream("stderr")
    warnings.setLevel(logging.WARNING)
    warnings.setFormatter(_LevelPrefix("%(message)s"))
    logger.addHandler(progress)
    logger.addHandler(warnings)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger

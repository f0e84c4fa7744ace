"""The one error type of the local stack: its message says what is wrong and what to do."""

from __future__ import annotations


class StackError(RuntimeError):
    """The local stack cannot start, stop or be reached; the message names the service and a fix."""

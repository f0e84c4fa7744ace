"""`say(text)`: the default `log` of the pipeline's steps, a print looked up when it is called.

Inside a flow run Prefect's `log_prints` replaces `builtins.print` so that prints become the
run's log records; a `log=print` default is bound once, at import, to the original print and
so reaches only the console.  `say` finds whichever print is current.
"""

from __future__ import annotations


def say(text: str) -> None:
    print(text, flush=True)

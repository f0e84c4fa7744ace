"""The core's messages in a flow run's Prefect logs, however the run was started.

The core reports through the `diffusion` logger (diffusion/messages.py): the evaluation's
rows, progress lines, what was reused.  Prefect sends a logger's records to the run's logs
when PREFECT_LOGGING_EXTRA_LOGGERS names it at the moment Prefect configures logging, which
is when its engine is first imported.  `dmops run` imports flows/pipeline.py, which sets that
variable, before Prefect; a deployment's flow run does it the other way round (the worker's
`python -m prefect.engine` loads the flow's module last), so there the variable comes too
late and every row reached only the worker's console.  `send_core_messages_to_prefect`, called
in the flow, gives the logger Prefect's own handlers for extra loggers in either order.
"""

from __future__ import annotations

import logging

from diffusion.messages import LOGGER

PREFECT_EXTRA = "prefect.extra"   # the logger whose handlers Prefect copies to extra loggers


def send_core_messages_to_prefect() -> logging.Logger:
    """Add the handlers Prefect gives its extra loggers (its API handler: records of a flow or
    task run go to that run's logs) to the `diffusion` logger, each once.  Returns it."""
    core = logging.getLogger(LOGGER)
    for handler in logging.getLogger(PREFECT_EXTRA).handlers:
        if handler not in core.handlers:
            core.addHandler(handler)
    return core

"""StepResult: what every pipeline step hands back to the flow, in one shape.

A pydantic model, so Prefect persists it as JSON (tasks/prefect_tasks.py sets the JSON result
serializer: nothing the pipeline writes is a pickle) and the flow reads every step the same way:
`teacher.run_id`, `evaluation.run_id`, `teacher.folders["teacher"]`, `dataset.details["md5"]`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class StepResult(BaseModel):
    """One step's outputs.

    step:     the step's name ("train_teacher", "distill_consistency", "evaluate", ...)
    run_id:   its MLflow run, nested under the flow's run
    folders:  model name -> model folder on this machine ({"teacher": ".../model"})
    weights:  model name -> sha256 of that model's weights, what downstream caches are keyed by
    metrics:  the step's headline numbers, as logged to its MLflow run
    details:  JSON-able facts particular to the step: the dataset version (name, path, md5,
              remote), the gate's summary and statistics, the evaluation table, the registered
              version, the promotion decision
    """

    step: str
    run_id: str
    folders: dict[str, str] = Field(default_factory=dict)
    weights: dict[str, str] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    details: dict[str, Any] = Field(default_factory=dict)

"""The pipeline's steps as plain functions, one module per step: what `dmops <command>` runs
and what each Prefect task (tasks/prefect_tasks.py) wraps.  A step that the flow runs returns
a `StepResult` (tasks/step_result.py)."""

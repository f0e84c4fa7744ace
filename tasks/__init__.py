"""The pipeline's steps and their connections to the outside, apart from the Prefect flow.

    steps/              one module per step, plain Python: the work `dmops <command>` and the
                        flow's tasks call (no Prefect)
    adapters/           the servers and tools the steps talk to: MLflow (tracking, registry,
                        pyfunc), S3 (releases, promotion lease and history, the gate's drift
                        reference), Great Expectations (gx/), DVC, and bounded retries
    prefect_tasks.py    the only module here that imports Prefect: one thin @task per step,
                        with retries, timeouts and cache keys
    pipeline_settings.py  the `pipeline` section of params.yaml, typed
"""

"""Adapters: the servers and tools the pipeline's steps talk to, each behind one module.

    servers.py              retries with backoff, client bounds, ServerUnavailable
    missing_env.py          what to say when the environment names no server (and the fix)
    tracking.py             MLflow runs of the flow and its steps; metric_logger.py its loss points
    registry.py             the MLflow model registry (register, resolve, download, verify)
    model_ref.py            NAME@ALIAS / NAME/VERSION, parsed without MLflow (the CLI checks it early)
    pyfunc_model.py         the model as MLflow serves it
    pyfunc_entry.py         the models-from-code file MLflow runs to build the served model
    pyfunc_package.py       the code and pinned requirements a logged model carries
    experiment.py           the MLflow experiment, created as a model-training one
    dataset_input.py        the DVC dataset as an MLflow run input
    ui_links.py             links into the MLflow and Prefect UIs
    release.py              immutable S3 releases and their manifests
    model_card.py           the model card (release README.md, version description)
    diffusers_interop.py    the diffusers scheduler config a release ships
    promotion_lock.py       the per-model promotion lease in S3
    promotion_history.py    the append-only promotion history in S3
    pending_promotion.py    a promotion decision stored before it is carried out
    drift_reference.py      the data gate's reference statistics in S3
    dvc.py                  the DVC stage and remote
    torchrun.py             launch a module as torchrun ranks; a failed rank as one error
    gx/                     the data gate's Great Expectations suite, checkpoint and report
"""

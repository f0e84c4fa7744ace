"""Adapters: the servers and tools the pipeline's steps talk to, each behind one module.

    servers.py              retries with backoff, client bounds, ServerUnavailable
    tracking.py             MLflow runs of the flow and its steps; metric_logger.py its loss points
    registry.py             the MLflow model registry (register, resolve, download, verify)
    pyfunc_model.py         the model as MLflow serves it
    release.py              immutable S3 releases and their manifests
    promotion_lock.py       the per-model promotion lease in S3
    promotion_history.py    the append-only promotion history in S3
    pending_promotion.py    a promotion decision stored before it is carried out
    drift_reference.py      the data gate's reference statistics in S3
    dvc.py                  the DVC stage and remote
    gx/                     the data gate's Great Expectations suite, checkpoint and report
"""

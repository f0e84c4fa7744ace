"""The versioned dataset as an MLflow dataset input of a run: what fills the runs list's
Dataset column and the run page's Datasets section.

MLflow only records a reference (name, digest, source): the data itself stays where DVC put it.
The digest is DVC's md5 of the processed folder, the same value every registered version is
tagged with (`dataset_md5`), and the source the object DVC pushed it as, so a reader can go from
a run to the exact data version.
"""

from __future__ import annotations

from mlflow import MlflowClient
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import DatasetInput, InputTag

from tasks.adapters.servers import mlflow_call

CONTEXT_TAG = "mlflow.data.context"   # MLflow's own key: the UI shows it beside the dataset


def dataset_reference(name: str, md5: str, source_uri: str) -> MetaDataset:
    """MLflow's reference to DVC dataset `name` of content hash `md5`, pushed to `source_uri`
    (an s3:// URI)."""
    return MetaDataset(source=resolve_dataset_source(source_uri), name=name, digest=md5)


def log_dataset_input(run_ids: list[str], name: str, md5: str, source_uri: str,
                      context: str = "training") -> None:
    """Record the dataset as an input of each run of `run_ids`, with `context` (training,
    evaluation, ...).  Raises ServerUnavailable when MLflow stays away."""
    entity = dataset_reference(name, md5, source_uri)._to_mlflow_entity()
    dataset_input = DatasetInput(entity, tags=[InputTag(CONTEXT_TAG, context)])
    client = MlflowClient()
    for run_id in run_ids:
        mlflow_call(client.log_inputs, run_id, datasets=[dataset_input])

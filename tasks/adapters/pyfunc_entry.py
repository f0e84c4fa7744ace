"""The file MLflow runs to build the served model ("models from code").

`register_model` logs the model with this file as its `python_model`: MLflow copies it into the
model and executes it at load time, after it has put the model's carried code
(tasks.adapters.pyfunc_package) on sys.path; `set_model` hands MLflow the sampler.  Nothing is
pickled: the model is this source, the carried project code and the safetensors weights.
"""

from mlflow.models import set_model

from tasks.adapters.pyfunc_model import DiffusionSampler

set_model(DiffusionSampler())

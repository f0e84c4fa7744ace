# The image of the team's cluster (infra/k8s/): the MLflow server, the Prefect server and worker, and
# every flow run's Job run it, so servers and pipeline share one set of library versions.
#   docker build -t <registry>/dmops:<tag> . && docker push <registry>/dmops:<tag>
# then set that name in infra/k8s/kustomization.yaml (`images`) and in $DMOPS_IMAGE for
# `dmops deploy --pool-type kubernetes`.
FROM python:3.11-slim

# git: DVC and the lineage tags (git commit) need the checkout, so .git is copied too
RUN apt-get update && apt-get install -y --no-install-recommends git \
    && rm -rf /var/lib/apt/lists/*

# Without constraints.txt, pip takes PyPI's default torch wheel, the CUDA build the GPU Jobs need.
# Editable: the flow runs from /opt/dmops (infra/k8s/prefect.yaml's pull step), the code the
# lineage hashes is the code that runs.
WORKDIR /opt/dmops
COPY . .
RUN pip install --no-cache-dir -e ".[kubernetes]" \
    && useradd --uid 10001 --create-home dmops \
    && chown -R dmops /opt/dmops \
    && git config --system --add safe.directory /opt/dmops

USER 10001
ENV HOME=/home/dmops PYTHONUNBUFFERED=1 PREFECT_SERVER_ANALYTICS_ENABLED=false \
    MLFLOW_DISABLE_TELEMETRY=true GX_ANALYTICS_ENABLED=false

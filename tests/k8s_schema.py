"""Offline checks of Kubernetes objects for tests/test_k8s_*.py: the Kubernetes JSON schemas that
kubernetes-validate ships (strict: an unknown field is an error, as a typo would be), and the
Secrets and keys infra/k8s/kustomization.yaml generates."""

from __future__ import annotations

import copy
from pathlib import Path

import kubernetes_validate
import yaml

K8S = Path(__file__).resolve().parents[1] / "infra" / "k8s"
# The oldest Kubernetes the manifests are written for (and the oldest schemas of the pinned
# kubernetes-validate); every field used exists there and in every later version.
KUBERNETES_VERSION = "1.31"


def assert_valid(obj: dict) -> None:
    """Raises AssertionError naming the object and the schema's complaint when `obj` does not
    pass the strict schema of its kind at KUBERNETES_VERSION."""
    obj = copy.deepcopy(obj)
    if obj.get("kind") == "Job" and "prefect.io/flow-run-id" in (obj["metadata"].get("labels") or {}):
        # prefect-kubernetes insists on these two in the pod template's spec (its worker refuses a
        # template without them), where they are no PodSpec field: the API server drops them with
        # a warning. They are Job fields, and the Job runs one pod either way.
        pod = obj["spec"]["template"]["spec"]
        assert pod.pop("parallelism") == 1 and pod.pop("completions") == 1
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        name = obj.get("metadata", {}).get("name") or obj.get("metadata", {}).get("generateName")
        raise AssertionError(f"{obj.get('kind')} {name}: {e.message} at "
                             f"{'.'.join(map(str, e.absolute_path)) or '(top)'}") from None


def secret_keys() -> set[tuple[str, str]]:
    """(Secret name, key) of every key kustomization.yaml's secretGenerator makes: the keys of
    each env file, as its committed *.env.example lists them."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    keys = set()
    for secret in kustomization["secretGenerator"]:
        [env_file] = secret["envs"]
        for line in (K8S / f"{env_file}.example").read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                keys.add((secret["name"], line.split("=", 1)[0]))
    return keys


def secret_refs(obj) -> set[tuple[str, str]]:
    """(Secret name, key) of every secretKeyRef anywhere in `obj`."""
    if isinstance(obj, dict):
        found = {(obj["secretKeyRef"]["name"], obj["secretKeyRef"]["key"])} if "secretKeyRef" in obj else set()
        return found.union(*(secret_refs(v) for v in obj.values()))
    if isinstance(obj, list):
        return set().union(*(secret_refs(v) for v in obj))
    return set()

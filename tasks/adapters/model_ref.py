"""How a registered model version is named on the command line and in code: NAME@ALIAS or
NAME/VERSION, optionally after "models:/" (MLflow's model URI scheme).

Apart from tasks/adapters/registry.py because it imports nothing: the CLI checks a reference
before it imports MLflow (a bad argument answers in a fraction of a second).
"""

from __future__ import annotations


class RegistryError(RuntimeError):
    """A registry request that cannot be served; the message says what and what to do."""


def parse_model_ref(ref: str) -> tuple[str, str | None, str | None]:
    """"name@alias" | "name/version" (optionally prefixed "models:/") -> (name, alias, version),
    alias or version None.  RegistryError, with both forms as examples, for anything else."""
    text = ref[len("models:/"):] if ref.startswith("models:/") else ref
    if "@" in text:
        name, alias = text.rsplit("@", 1)
        if name and alias:
            return name, alias, None
    elif "/" in text:
        name, version = text.rsplit("/", 1)
        if name and version.isdigit():
            return name, None, version
    raise RegistryError(f"{ref!r} names no model version; use NAME@ALIAS (e.g. "
                        "digits-diffusion@champion) or NAME/VERSION (e.g. digits-diffusion/3)")

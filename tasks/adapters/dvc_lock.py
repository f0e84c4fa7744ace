"""dvc.lock's entries of one dataset's stages (`fingerprint@<name>`, `prepare@<name>`): taken as
they are just before a run's `dvc repro`, and written back when the data gate refuses the version
that repro recorded (tasks/adapters/dvc.py `put_back_version`), so a refused version does not stay
the dataset's current one.

    before = lock_entries(repo, "digits")      # JSON-able; {"stages": {stage: entry or None}}
    ... dvc repro prepare@digits, the gate refuses ...
    put_entries(repo, before)                  # those two entries back, every other one as it is

The file is read and written with DVC's own YAML functions (ruamel.yaml; a round trip for the
write), as DVC writes it: an entry written back from `lock_entries` has the bytes DVC gave it,
and every other stage's entry (another dataset's, a concurrent run's) keeps its own.
"""

from __future__ import annotations

import os
from pathlib import Path

LOCK = "dvc.lock"


class LockFileError(RuntimeError):
    """dvc.lock cannot be read or written; the message names the file and the reason."""


def dataset_stages(dataset: str) -> tuple[str, str]:
    """The DVC stages of dataset `dataset` (dvc.yaml's foreach over `datasets`), in run order."""
    return f"fingerprint@{dataset}", f"prepare@{dataset}"


def processed_out(dataset: str) -> str:
    """The processed folder of `dataset`, as `prepare@<dataset>` names its output."""
    return f"data/processed/{dataset}"


def lock_entries(repo: str | Path, dataset: str) -> dict:
    """dvc.lock's entries of `dataset`'s stages in the repository `repo`, as plain JSON-able
    values: {"stages": {"fingerprint@<dataset>": entry | None, "prepare@<dataset>": entry |
    None}} (None: the stage has no entry, or there is no dvc.lock).  LockFileError when the
    file cannot be read or is not a lock file."""
    stages = _read(Path(repo) / LOCK).get("stages") or {}
    return {"stages": {stage: _plain(stages.get(stage)) for stage in dataset_stages(dataset)}}


def output_md5(entries: dict | None, dataset: str) -> str | None:
    """The md5 (`<md5>.dir`) that `entries` (lock_entries' answer) record for `dataset`'s
    processed folder; None when they record no version of it."""
    entry = ((entries or {}).get("stages") or {}).get(dataset_stages(dataset)[1]) or {}
    for out in entry.get("outs") or []:
        if out.get("path") == processed_out(dataset):
            return out.get("md5")
    return None


def put_entries(repo: str | Path, entries: dict) -> None:
    """Write `entries` (lock_entries' answer) into `repo`'s dvc.lock: each of their stages gets
    its entry back, a stage whose entry is None loses its entry; every other stage's entry stays
    as the file has it now.  As DVC does, a lock file left without stages is removed.  The file
    is replaced at once (a reader sees the old or the new one); LockFileError when it cannot be
    read or written."""
    from dvc.utils.serialize import dumps_yaml, parse_yaml_for_update

    path = Path(repo) / LOCK
    try:
        data = parse_yaml_for_update(path.read_text(), str(path)) if path.exists() else {}
    except Exception as e:  # noqa: BLE001 - DVC's YAML errors and OSError: one line
        raise LockFileError(f"{path} cannot be read: {e}") from None
    stages = data.get("stages")
    for stage, entry in entries["stages"].items():
        if entry is not None:
            if stages is None:
                data.setdefault("schema", "2.0")
                stages = data["stages"] = {}
            stages[stage] = entry
        elif stages is not None and stage in stages:
            del stages[stage]
    try:
        if not stages:
            path.unlink(missing_ok=True)
            return
        temporary = path.with_name(f".{LOCK}.{os.getpid()}.tmp")
        temporary.write_text(dumps_yaml(data))
        os.replace(temporary, path)
    except OSError as e:
        raise LockFileError(f"{path} cannot be written: {e}") from None


def _read(path: Path) -> dict:
    from dvc.utils.serialize import parse_yaml

    if not path.exists():
        return {}
    try:
        data = parse_yaml(path.read_text(), str(path))
    except Exception as e:  # noqa: BLE001 - DVC's YAML errors and OSError: one line
        raise LockFileError(f"{path} cannot be read: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("stages") or {}, dict):
        raise LockFileError(f"{path} is not a DVC lock file (no `stages` mapping)")
    return data


def _plain(value):
    """ruamel's safe-loaded values as plain dicts, lists and scalars (JSON-able)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value

"""The S3 credentials of the local stack: generated once, kept in a 0600 file, never printed."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from infra.errors import StackError


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)   # repr() and logs must never show it


def load_credentials(path: Path) -> Credentials:
    """The credentials stored at `path`; StackError when the stack was never started."""
    if not path.exists():
        raise StackError(f"no stack credentials at {path}: start the stack first with `dmops up` "
                         f"(or point --state-dir / DMOPS_STACK_DIR at the stack's state folder)")
    try:
        data = json.loads(path.read_text())
        return Credentials(str(data["access_key_id"]), str(data["secret_access_key"]))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StackError(f"{path} is not a valid credentials file ({e}); stop the stack "
                         f"(`dmops down`), delete the file and run `dmops up` to generate new keys") from None


def load_or_create_credentials(path: Path) -> Credentials:
    """Stored credentials, or new random ones written to `path` (mode 0600) on first start."""
    if path.exists():
        return load_credentials(path)
    creds = Credentials(access_key_id="DMOPS" + secrets.token_hex(8).upper(),
                        secret_access_key=secrets.token_hex(20))
    write_private_json(path, {"access_key_id": creds.access_key_id,
                              "secret_access_key": creds.secret_access_key})
    return creds


def write_seaweedfs_identities(path: Path, creds: Credentials, more: Sequence[dict] = ()) -> None:
    """SeaweedFS S3 identities with one all-powerful user and no anonymous identity, so
    unsigned requests are refused. Rewritten at every start from the credentials file.
    `more`: further identities in the same format (the team stack's roles, infra/team.py)."""
    config = {"identities": [{
        "name": "dmops",
        "credentials": [{"accessKey": creds.access_key_id, "secretKey": creds.secret_access_key}],
        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
    }, *more]}
    write_private_json(path, config)


def write_private_json(path: Path, data: dict) -> None:
    """Write JSON readable by the owner only, atomically (no moment with wider permissions)."""
    write_private_text(path, json.dumps(data, indent=2) + "\n")


def write_private_text(path: Path, text: str) -> None:
    """Write `text` readable by the owner only (0600), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)

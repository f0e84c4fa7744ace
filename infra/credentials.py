"""The S3 credentials of the local stack: generated once, kept in a 0600 file, never printed."""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence, TypeVar

from infra.errors import StackError

T = TypeVar("T")


@dataclass(frozen=True)
class Credentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)   # repr() and logs must never show it


def load_secrets(path: Path, parse: Callable[[dict], T], missing: str,
                 invalid: Callable[[Exception], str]) -> T:
    """`parse` of the JSON secrets file at `path`.  StackError(`missing`) when it does not
    exist; StackError(`invalid(error)`) when it cannot be read or does not hold what `parse`
    expects (the message says what is lost with it and the fix)."""
    if not path.exists():
        raise StackError(missing)
    try:
        return parse(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise StackError(invalid(e)) from None


def load_credentials(path: Path) -> Credentials:
    """The credentials stored at `path`; StackError when the stack was never started."""
    return load_secrets(
        path, lambda data: Credentials(str(data["access_key_id"]), str(data["secret_access_key"])),
        f"no stack credentials at {path}: start the stack first with `dmops up` "
        f"(or point --state-dir / DMOPS_STACK_DIR at the stack's state folder)",
        lambda e: f"{path} is not a valid credentials file ({e}); stop the stack (`dmops down`), "
                  f"delete the file and run `dmops up` to generate new keys")


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

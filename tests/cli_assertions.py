"""Assertions shared by the tests of CLI commands run through Typer's CliRunner."""

import hashlib
from pathlib import Path


def fails_cleanly(result, code: int, *fragments):
    """A user-facing failure: exit `code`, one line on stderr naming each fragment, no traceback."""
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def digest(folder: Path) -> str:
    """sha256 over every file under `folder` (names and bytes): 'nothing was written'."""
    h = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()

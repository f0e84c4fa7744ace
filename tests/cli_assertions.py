"""Assertions shared by the tests of CLI commands run through Typer's CliRunner."""


def fails_cleanly(result, code: int, *fragments):
    """A user-facing failure: exit `code`, one line on stderr naming each fragment, no traceback."""
    assert result.exit_code == code, (result.stdout, result.stderr, result.exception)
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr

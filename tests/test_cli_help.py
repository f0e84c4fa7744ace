"""Every `dmops` command's --help reads whole: piped to a file (no terminal) no line is wrapped,
so no token is cut; in a terminal (60, 80, 100 columns), where Click wraps prose (and breaks words at
hyphens), every example a user may copy -- a URI, a model reference, a setting, a command line
-- is still whole (flows/cli_options.py: examples sit in Click's no-rewrap `\\b` paragraphs)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.main import get_command
from typer.testing import CliRunner

from flows.cli import app

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = [[]] + [[name] for name in get_command(app).commands]


def _texts(command: list[str], summaries: bool = True) -> list[str]:
    """The help texts the command's --help is made of: its docstring and every parameter's, and
    for `dmops` itself each command's first sentence (`summaries`; in a terminal Click shortens
    them to a line, ending in "...")."""
    group = get_command(app)
    cmd = group if not command else group.commands[command[0]]
    texts = [cmd.help or ""]
    if not command and summaries:
        texts += [c.get_short_help_str(10_000) for c in group.commands.values()]
    texts += [getattr(p, "help", None) or "" for p in cmd.params]
    return [t.split("\f")[0].replace("\b", " ") for t in texts]


def _example(token: str) -> bool:
    """A token a user would copy: a path, URI, model reference, setting, option or number."""
    return bool(re.search(r"[@/:=$_<>0-9`]", token)) or token.startswith("-")


def _tokens(text: str) -> set[str]:
    return set(text.split())


def _help(command: list[str], width: int | None = None) -> str:
    extra = {} if width is None else {"terminal_width": width}
    result = CliRunner().invoke(app, [*command, "--help"], **extra)
    assert result.exit_code == 0, (command, result.stderr)
    return result.stdout


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "dmops")
def test_help_into_a_pipe_cuts_no_token(command):
    text = _help(command)
    shown = _tokens(text)
    for source in _texts(command):
        missing = [t for t in source.split() if t not in shown]
        assert not missing, (command, missing, text)
    hyphen_breaks = [line for line in text.splitlines() if re.search(r"\w-$", line)]
    assert not hyphen_breaks, (command, hyphen_breaks)


@pytest.mark.parametrize("width", [60, 80, 100])
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "dmops")
def test_help_in_a_terminal_keeps_every_example_whole(command, width):
    text = _help(command, width=width)
    shown = _tokens(text)
    for source in _texts(command, summaries=False):
        cut = [t for t in source.split() if _example(t) and t not in shown]
        assert not cut, (command, cut, text)


def test_help_piped_from_a_real_process_is_plain_and_unwrapped(tmp_path):
    """As a user runs it: `dmops sample --help > file`, no Rich box, the release example whole."""
    with open(tmp_path / "help.txt", "w") as out:
        subprocess.run([sys.executable, "-m", "flows.cli", "sample", "--help"], cwd=tmp_path,
                       stdout=out, check=True, env={"PATH": "/usr/bin:/bin", "COLUMNS": "80",
                                                    "PYTHONPATH": str(ROOT)})
    text = (tmp_path / "help.txt").read_text()
    assert "s3://dmops-releases/digits-diffusion/3/" in text.split()
    assert "digits-diffusion@champion" in text.split()
    assert not set("╭│╰…") & set(text), text

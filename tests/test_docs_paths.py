"""The docs point at files that exist, and nothing in the repository points outside it.

Every backticked repository path in README.md and docs/architecture.md (a span whose first
segment is a top-level name git tracks, e.g. `diffusion/samplers.py` or `tasks/steps/`) must
exist in the working tree, and so must every entry of the layout tree in docs/architecture.md
(its ```text block).  A path with a placeholder (`tasks/adapters/<name>.py`) is checked up to
the folder before the placeholder.  And no tracked .py, .md or .yaml file names the design or
environment notes that live outside the repository.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "docs/architecture.md")
# built from parts, so that this file does not itself mention what it forbids
OUTSIDE_NOTES = ("DESIGN" + ".md", "ENVIRONMENT" + ".md")

FENCE = re.compile(r"^```.*?^```[ \t]*$", re.MULTILINE | re.DOTALL)
INLINE = re.compile(r"`([^`\n]+)`")
PLACEHOLDER = re.compile(r"[<{*]")


def tracked_files() -> list[str]:
    return subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.splitlines()


def top_level_names() -> set[str]:
    """The names git tracks at the top of the repository (folders and files)."""
    return {path.split("/")[0] for path in tracked_files()}


def repository_paths(text: str, top: set[str]) -> list[str]:
    """The backticked spans of `text` outside fenced blocks that are repository paths: no
    whitespace, no URL scheme, first segment a tracked top-level name.  Spans with a
    placeholder are cut to the folder before it."""
    found = []
    for span in INLINE.findall(FENCE.sub("", text)):
        span = span.strip()
        if not span or any(c.isspace() for c in span) or "://" in span:
            continue
        cut = PLACEHOLDER.search(span)
        if cut:
            span = span[:cut.start()].rpartition("/")[0]
            if not span:
                continue
        if span.split("/")[0] in top:
            found.append(span)
    return found


def tree_paths(text: str) -> list[str]:
    """The entries of the ```text layout tree: one per line, first word a file or folder
    (folders end in '/'), nesting by indentation (two spaces a level)."""
    found = []
    for block in re.findall(r"^```text\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
        stack: list[tuple[int, str]] = []  # (indent, folder path)
        for line in block.splitlines():
            if not line.strip():
                continue
            indent = len(line) - len(line.lstrip(" "))
            name = line.split()[0]
            while stack and stack[-1][0] >= indent:
                stack.pop()
            path = (stack[-1][1] if stack else "") + name
            found.append(path)
            if name.endswith("/"):
                stack.append((indent, path))
    return found


def test_path_extraction_on_a_sample():
    text = ("See `diffusion/samplers.py`, `tasks/steps/`, `tasks/adapters/<name>.py`, "
            "`s3://dmops-releases/x/`, `dmops run`, `model.json`, `data/processed/<name>/`.\n"
            "```bash\n`flows/not_checked.py`\n```\n"
            "```text\ndiffusion/     core\n  samplers.py  samplers\n  distill/     students\n"
            "    shared.py  shared\ntasks/        steps\n```\n")
    assert repository_paths(text, {"diffusion", "tasks", "flows"}) == [
        "diffusion/samplers.py", "tasks/steps/", "tasks/adapters"]
    assert tree_paths(text) == ["diffusion/", "diffusion/samplers.py", "diffusion/distill/",
                                "diffusion/distill/shared.py", "tasks/"]


@pytest.mark.parametrize("doc", DOCS)
def test_every_backticked_repository_path_exists(doc):
    text = (ROOT / doc).read_text()
    paths = repository_paths(text, top_level_names())
    assert paths, f"{doc}: no repository path found: the extraction is broken"
    missing = sorted({p for p in paths if not (ROOT / p).exists()})
    assert not missing, f"{doc} names paths that do not exist: {missing}"


def test_every_entry_of_the_layout_tree_exists():
    paths = tree_paths((ROOT / "docs" / "architecture.md").read_text())
    assert len(paths) > 20, f"the layout tree has {len(paths)} entries: the extraction is broken"
    missing = [p for p in paths if not (ROOT / p).exists()]
    assert not missing, f"docs/architecture.md's layout tree names paths that do not exist: {missing}"


def test_the_layout_tree_lists_every_module_of_the_code_folders():
    listed = set(tree_paths((ROOT / "docs" / "architecture.md").read_text()))
    modules = [p for p in tracked_files() if p.split("/")[0] in ("diffusion", "tasks", "flows", "infra")
               and p.endswith(".py") and not p.endswith("__init__.py")]
    assert len(modules) > 30, modules  # the listing itself works
    unlisted = sorted(p for p in modules if p not in listed)
    assert not unlisted, f"docs/architecture.md's layout tree leaves out {unlisted}"


def test_no_tracked_file_points_to_notes_outside_the_repository():
    offenders = []
    for path in tracked_files():
        if path.endswith((".py", ".md", ".yaml")) and (ROOT / path).is_file():
            text = (ROOT / path).read_text(errors="replace")
            offenders += [f"{path}: {name}" for name in OUTSIDE_NOTES if name in text]
    assert not offenders, f"files that cite notes outside the repository: {offenders}"

"""What the pipeline passes on of `dvc repro`'s output: the stages' own lines and the hint to
commit dvc.lock, not the hints that do not apply to a pipeline (push, auto staging)."""

from __future__ import annotations

from tasks.adapters.dvc import readable_repro_output

# `dvc repro prepare@digits` (DVC 3.67) in a fresh repository, as the pipeline's first run sees it
FIRST_RUN = """Running stage 'fingerprint@digits':
> dmops fingerprint --set dataset=digits --out data/source/digits.json
Generating lock file 'dvc.lock'
Updating lock file 'dvc.lock'

Running stage 'prepare@digits':
> dmops prepare --set dataset=digits --no-finite-check --fingerprint data/source/digits.json
digits: 1797 samples of shape (1, 8, 8) (train 1258, val 180, test 359) -> data/processed/digits
Updating lock file 'dvc.lock'

To track the changes with git, run:

\tgit add data/processed/.gitignore dvc.lock data/source/.gitignore

To enable auto staging, run:

\tdvc config core.autostage true
Use `dvc push` to send your updates to remote storage.
"""


def test_the_push_and_autostage_hints_go_and_the_commit_hint_is_one_line():
    said = readable_repro_output(FIRST_RUN).splitlines()
    assert said[-1] == ("To track the changes with git, run: git add data/processed/.gitignore "
                        "dvc.lock data/source/.gitignore")
    assert said[:3] == ["Running stage 'fingerprint@digits':",
                        "> dmops fingerprint --set dataset=digits --out data/source/digits.json",
                        "Generating lock file 'dvc.lock'"]
    assert not any("dvc push" in line or "autostage" in line or not line.strip() for line in said)
    assert len(said) == 9


def test_an_up_to_date_repro_keeps_what_dvc_says():
    text = "Stage 'prepare@digits' didn't change, skipping\nData and pipelines are up to date.\n"
    assert readable_repro_output(text) == text.strip()
    assert readable_repro_output("") == ""

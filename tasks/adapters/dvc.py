"""DVC: the dataset's `prepare@<name>` stage run through DVC in the project's git repository,
its output pushed to the DVC remote in S3, and its version (DVC's md5 of the output folder).

dvc.yaml has one such stage per entry of params.yaml's `datasets`; its command is `dmops
prepare` (tasks/steps/prepare_dataset.py), and dvc.yaml says what it depends on, so DVC reruns
it only when the source, the code or the entry's settings changed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import yaml

from diffusion.data_errors import DataError

from .dvc_lock import (LockFileError, dataset_stages, lock_entries, output_md5, processed_out,
                       put_entries)
from .servers import S3, ServerUnavailable, boto_config, retry_call


class DVCError(RuntimeError):
    """A DVC command failed; the message carries its output."""


class StageRefused(DVCError, DataError):
    """A stage's `dmops` command refused its input (exit code 2 and one `error: ...` line: the
    dataset entry's data or settings, or a disk that refused the write).  The message is that
    line alone, which names the entry; `output` keeps DVC's whole transcript.  A DataError: a
    retry reads the same input, and a command reports it as the user's to fix (exit code 2)."""

    def __init__(self, line: str, output: str):
        super().__init__(line)
        self.output = output


# DVC's last line when a stage's command failed: "ERROR: failed to reproduce 'prepare@x':
# failed to run: dmops prepare ..., exited with 2"
_EXITED = re.compile(r"^ERROR: .*failed to run: .*, exited with (\d+)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class DatasetVersion:
    name: str
    path: str        # the processed folder, absolute
    md5: str         # DVC's content hash of the folder (".dir" md5 in dvc.lock)
    remote: str      # where `dvc push` put it
    # dvc.lock's entries of the dataset's stages just before this run's `dvc repro`
    # (dvc_lock.lock_entries): what put_back_version restores when the gate refuses the version.
    # Not the version's identity: the flow takes it out of the dataset it hands to the steps
    # (their cache keys), and None where no repro ran here
    lock_before: dict | None = field(default=None, compare=False)


def run_dvc(repo: Path, *args: str, env: dict[str, str] | None = None) -> str:
    # the stage's command is `dmops ...`: the venv's bin must be on PATH even when the
    # caller did not activate it
    full_env = {**os.environ, **(env or {})}
    full_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{full_env.get('PATH', '')}"
    # --wait-for-lock: two flow runs in one checkout (a worker serving a nightly and an
    # on-demand run, or two `dmops run`) take DVC's repository lock in turn; without it the
    # second fails at once with "Unable to acquire lock".  DVC's lock is a file lock that dies
    # with its process, so a crashed holder cannot make the wait endless.
    cmd = [str(Path(sys.executable).parent / "dvc"), "--wait-for-lock", *args]
    proc = subprocess.run(cmd, cwd=repo, env=full_env, capture_output=True, text=True)
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr).strip()
        # a stage's `dmops` command says what went wrong in one `error: ...` line: lead with it
        said = [line[len("error: "):] for line in output.splitlines() if line.startswith("error: ")]
        exited = _EXITED.findall(output)
        if said and exited and exited[-1] == "2":   # the stage refused its input: that line alone
            raise StageRefused(said[-1], output)
        raise DVCError(f"`dvc {' '.join(args)}` failed in {repo} (exit {proc.returncode})"
                       f"{': ' + said[-1] if said else ''}:\n{output[-3000:]}")
    return proc.stdout


# what configure_remote sets in .dvc/config.local, besides the endpoint: bounded like every other
# request to the store, so a hung store costs a push seconds, not botocore's default 60 s per
# connection attempt
REMOTE_TIMEOUTS = {"connect_timeout": "5", "read_timeout": "60"}


def _dvc_config(repo: Path):
    """DVC's own reader of the repository's configuration (system, global, .dvc/config and
    .dvc/config.local, as the `dvc` command merges them), in this process: a `dvc remote ...`
    subprocess is a Python start-up of 1-2 s for a few lines of INI."""
    from dvc.config import Config, ConfigError

    try:
        return Config(dvc_dir=Path(repo) / ".dvc"), ConfigError
    except ConfigError as e:
        raise DVCError(f"{repo}: DVC's configuration cannot be read: {e}") from None


def _remote_url(config, repo: Path, remote: str) -> str:
    remotes = config.read()["remote"]   # every level merged, as `dvc remote list` shows them
    if remote not in remotes:
        raise DVCError(f"{repo}: DVC remote {remote!r} is not defined (remotes: "
                       f"{', '.join(sorted(remotes)) or 'none'}); add it with `dvc remote add -d "
                       f"{remote} s3://<bucket>/<prefix>` and commit .dvc/config")
    return remotes[remote]["url"]


def configure_remote(repo: Path, remote: str, endpoint_url: str) -> None:
    """Point `remote` (defined in .dvc/config, committed) at this machine's S3 endpoint, with
    REMOTE_TIMEOUTS.  The settings go to .dvc/config.local, which git ignores, written as `dvc
    remote modify --local` writes them and only when one differs (a second run in the same
    checkout writes nothing); credentials are never written: DVC reads them from
    AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the environment.  DVCError when the remote is
    not defined (naming the fix) or DVC refuses the configuration."""
    repo = Path(repo)
    config, config_error = _dvc_config(repo)
    _remote_url(config, repo, remote)
    wanted = {"endpointurl": endpoint_url, **REMOTE_TIMEOUTS}
    if all(config.read("local")["remote"].get(remote, {}).get(key) == value
           for key, value in wanted.items()):
        return
    try:
        with config.edit("local") as local:
            local["remote"].setdefault(remote, {}).update(wanted)
    except config_error as e:
        raise DVCError(f"{repo}: DVC refused the settings of remote {remote!r}: {e}") from None


def remote_object_uri(repo: Path, remote: str, md5: str) -> str:
    """Where DVC 3 keeps the object of content hash `md5` on `remote` (<url>/files/md5/<2>/<rest>,
    a folder's being its `.dir` listing), e.g. s3://dmops-dvc/datasets/files/md5/3f/1c...dir.
    DVCError when the remote is not defined."""
    config, _ = _dvc_config(Path(repo))
    url = _remote_url(config, Path(repo), remote)
    return f"{url.rstrip('/')}/files/md5/{md5[:2]}/{md5[2:]}"


def prepare_stage(dataset: str) -> str:
    """The name of dataset `dataset`'s prepare stage (dvc.yaml's foreach over `datasets`)."""
    return dataset_stages(dataset)[1]


def stage_md5(repo: Path, stage: str, out: str) -> str:
    """The md5 that dvc.lock records for output `out` of stage `stage`."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    for entry in lock["stages"].get(stage, {}).get("outs", []):
        if entry["path"] == out:
            return entry["md5"]
    raise DVCError(f"{repo / 'dvc.lock'}: stage {stage} has no output {out!r}")


def _say(text: str) -> None:
    # print looked up at each call, not bound as a default argument at import: inside a flow
    # run with log_prints Prefect replaces builtins.print, and only the replacement sends the
    # line to the run's logs
    print(text, flush=True)


# what `dvc repro` adds for a person at a terminal: the pipeline pushes right after, and a
# pipeline does not turn on auto staging in its user's repository
_HINTS = ("Use `dvc push` to send your updates to remote storage.",
          "To enable auto staging, run:", "dvc config core.autostage true")


def readable_repro_output(output: str) -> str:
    """`dvc repro`'s output without its blank lines and the hints in _HINTS; its hint to
    commit the changed files (dvc.lock, .gitignore files) becomes one line."""
    lines, kept = [line for line in output.splitlines() if line.strip()], []
    for line in lines:
        if line.strip() in _HINTS:
            continue
        if kept and kept[-1] == "To track the changes with git, run:":
            kept[-1] += " " + line.strip()
        else:
            kept.append(line)
    return "\n".join(kept)


@contextmanager
def _repository_turn(repo: Path, log) -> Iterator[None]:
    """Hold this checkout's prepare lock (`.dvc/tmp/dmops-prepare.lock`, an flock) for the
    block, waiting for it when another process holds it.  Two flow runs in one checkout run
    `dvc repro` at once when a worker serves two runs or two people start one: DVC's own
    per-stage lock then fails the second at once ("... is busy, it is being blocked by"), and
    `--wait-for-lock` waits for the repository lock only.  The lock dies with its process."""
    import fcntl

    path = repo / ".dvc" / "tmp" / "dmops-prepare.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another run is preparing the dataset in {repo}; waiting for it")
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield   # closing the file releases the lock


def dvc_prepare(repo, dataset: str, remote: str, endpoint_url: str,
                env: dict[str, str] | None = None, log=_say) -> DatasetVersion:
    """`dvc repro prepare@<dataset>` then `dvc push` in `repo` (`dataset`: a name of
    params.yaml's `datasets`); returns the dataset's version, its `lock_before` dvc.lock's
    entries of the dataset's stages as they were just before the repro (taken in the checkout's
    turn: put_back_version restores them if the gate refuses the version).  What DVC says goes
    to `log` (default: print) as readable_repro_output.  `dvc repro` of that one stage runs only its own
    stages (fingerprint@<dataset>, prepare@<dataset>): another entry of `datasets`, even a
    malformed one, is not run, and its settings are not checked.  StageRefused when the
    stage's command refused the entry (its one line names it); DVCError for any other failure
    of DVC."""
    repo = Path(repo).resolve()
    if not (repo / ".dvc").is_dir():
        raise DVCError(f"{repo} is not a DVC repository (no .dvc folder); run `git init && dvc init`")
    stage = prepare_stage(dataset)
    with _repository_turn(repo, log):
        configure_remote(repo, remote, endpoint_url)
        try:   # what a refused version is put back to: the entries as they are now, in turn
            before = lock_entries(repo, dataset)
        except LockFileError as e:
            raise DVCError(f"{e}; DVC cannot run the stage either: put back the committed one "
                           "with `git checkout dvc.lock`") from None
        log(f"dvc repro {stage} in {repo}")
        said = readable_repro_output(run_dvc(repo, "repro", stage, env=env))
        if said:
            log(said)
        out = processed_out(dataset)
        md5 = stage_md5(repo, stage, out)
        # --with-deps: the source fingerprint goes to the remote too, the record of what the
        # version was made from
        run_dvc(repo, "push", "-r", remote, "--with-deps", stage, env=env)
    log(f"dataset {dataset}: md5 {md5}, pushed to DVC remote {remote!r}")
    return DatasetVersion(dataset, str(repo / out), md5, remote, lock_before=before)


def put_back_version(repo, dataset: str, before: dict | None, refused_md5: str, remote: str,
                     env: dict[str, str] | None = None, log=_say) -> str:
    """After the data gate refused version `refused_md5` of `dataset`, which this run's `dvc
    repro` recorded: dvc.lock's entries of the dataset's stages (fingerprint@<dataset>,
    prepare@<dataset>) go back to `before` (DatasetVersion.lock_before: as they were just before
    that repro, uncommitted edits included; a stage that had no entry loses its entry) and the
    folders they version (data/processed/<dataset>, data/source/<dataset>.json) back to what they
    record, from the DVC cache (`dvc checkout --with-deps prepare@<dataset>`); every other
    stage's entry stays.  Done in the checkout's prepare turn (`_repository_turn`), so a
    concurrent run's `dvc repro` never meets half of it.  Returns the one line that says what
    was put back or, where nothing was, why and what to do: no entries taken before (None),
    dvc.lock recorded the refused version before this run already, another run has recorded
    another version since, the cache lacks the version before (`dvc pull` then), or dvc.lock or
    DVC failed.  Never raises for those: the gate's refusal stays the run's error."""
    repo = Path(repo).resolve()
    stage, folder = prepare_stage(dataset), processed_out(dataset)
    if before is None:
        return _do_not_commit(stage, "was not read before this run's `dvc repro`")
    earlier = output_md5(before, dataset)
    if earlier == refused_md5:
        return _do_not_commit(stage, "recorded this refused version before this run already")
    try:
        with _repository_turn(repo, log):
            now = output_md5(lock_entries(repo, dataset), dataset)
            if now != refused_md5:   # another run's version since this run's repro: theirs
                return (f"dvc.lock's stage {stage} records "
                        + (f"another version (md5 {now})" if now else "no version")
                        + " than the refused one since this run's `dvc repro` (another run): "
                        "left as it is")
            put_entries(repo, before)
            stages = " and ".join(dataset_stages(dataset))
            if earlier is None:   # the dataset's first version: nothing to check out
                return (f"dvc.lock no longer records the refused version (its stages {stages} "
                        f"had no entry before this run); {folder} still holds it (git ignores "
                        "it) until a version passes the gate")
            try:
                run_dvc(repo, "checkout", "--with-deps", stage, env=env)
            except DVCError:
                return (f"dvc.lock's stages {stages} are back at the version before this run "
                        f"(md5 {earlier}), but {folder} still holds the refused one: the DVC cache "
                        f"lacks the version before; `dvc pull -r {remote} --with-deps {stage}` "
                        "brings it")
    except (LockFileError, DVCError) as e:
        first = str(e).splitlines()[0]
        return _do_not_commit(stage, f"could not be put back ({first})")
    return (f"dvc.lock's stages {stages} and {folder} are back at the version before this run "
            f"(md5 {earlier}); the refused version (md5 {refused_md5}) stays in the DVC cache")


def put_back_new_version(repo, dataset: str, before: dict | None, refused_md5: str, remote: str,
                         env: dict[str, str] | None = None, log=_say) -> str | None:
    """put_back_version for a version refused after the gate passed it (another model layout
    than the registered one's): only when this run's `dvc repro` recorded it (`before` records
    another version, or none); None when dvc.lock recorded it already or was not read, since
    then this run changed nothing to undo and the data itself was not faulted."""
    if before is None or output_md5(before, dataset) == refused_md5:
        return None
    return put_back_version(repo, dataset, before, refused_md5, remote, env, log)


def _do_not_commit(stage: str, why: str) -> str:
    """The line for a refused version that dvc.lock still records: do not commit it, and how to
    return to the last committed version."""
    return (f"dvc.lock's stage {stage} {why}: it records the refused version, so do not commit "
            f"it; `git checkout dvc.lock && dvc checkout --with-deps {stage}` brings back the "
            "last committed version")


def raise_if_store_down(endpoint_url: str, error: DVCError) -> None:
    """DVC reports a store that is down as a many-line "unexpected error": ask the store itself,
    with the bounded retries, and raise ServerUnavailable naming it (chained to DVC's error)
    when it does not answer, or ServerRefused when it refuses the keys themselves (an unknown
    access key or a wrong secret: one line naming the key and the fix).  A store that answers
    otherwise, even with another refusal, leaves DVC's error."""
    import boto3

    from .servers import refused

    s3 = boto3.client("s3", endpoint_url=endpoint_url, config=boto_config())
    try:
        retry_call(s3.list_buckets, server=S3, url=endpoint_url)
    except ServerUnavailable as down:
        raise down from error
    except Exception as answered:  # noqa: BLE001 - the store answered
        denied = refused(answered)
        if denied is not None and denied.status == 401:
            raise denied from error
        # anything else: DVC's own error says what went wrong


def dir_md5(folder: Path) -> str:
    """DVC's md5 of a folder ('<md5>.dir', as dvc.lock records it), computed from its files."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem
    from dvc_objects.fs.memory import MemoryFileSystem

    # an in-memory object store without DVC's state database: every file is hashed anew
    _, _, obj = build(HashFileDB(MemoryFileSystem(), "/objects"), str(folder), LocalFileSystem(), "md5")
    return obj.hash_info.value

"""A promotion decision carried out as one transaction, as the user sees it.

Acting on a decision changes two servers that share no transaction: the S3 store (the release,
the history) and MLflow (the `champion` alias, the version's tags).  An outage or a crash between
the two used to leave a release, published as final, that the registry never heard of.  So:

1. before anything changes, the whole decision is stored as the model's *pending promotion*,
   `s3://<bucket>/<model>/_promotion/pending.json` (a conditional create, tasks/adapters/pending_promotion.py; promotions of one
   model hold its lease, tasks.adapters.promotion_lock, so there is at most one);
2. `complete` carries it out.  Each step looks at what is there first, so running it again
   after an interruption is harmless: the release is written (or found), verified, `champion`
   moved when it still points at the champion the decision was made against, the tags set, and
   the history entry appended once (its key ends with the decision id);
3. the pending record is deleted last.

Until step 3 the release is not final: readers (tasks.adapters.release `read_release`, `verify_release`)
refuse a release whose version is the pending one.  The next promotion of the model finds a
record left by a run that failed (`recover`, under the lease) and finishes it:

- release complete and verifying, `champion` still on the champion the decision was made
  against (or already moved) -> completed: alias, tags and history as if never interrupted;
- release missing, incomplete or corrupt, or `champion` moved by someone else meanwhile ->
  rolled back: the release is deleted (manifest first), the version tagged
  `promotion: rolled_back` with the reason, and the history records a `rolled_back` decision.

Either way the run says so in one line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tasks.adapters.pending_promotion import (PendingPromotion, PromotionInterrupted, clear_pending,
                                              read_pending)
from tasks.adapters.promotion_history import append_entry, find_entry
from tasks.adapters.registry import CHAMPION, champion_version, set_alias, set_version_tags
from tasks.adapters.release import (ReleaseError, delete_release, read_manifest, sha256_file,
                                    verify_release, write_release)
from tasks.adapters.servers import S3, retry_call, s3_url_from_env
from tasks.say import say

PROMOTED, REJECTED, ROLLED_BACK = "promoted", "rejected", "rolled_back"


@dataclass(frozen=True)
class Completion:
    """What a pending promotion became: outcome (PROMOTED | REJECTED | ROLLED_BACK), the
    champion after it, the release URI (None unless promoted), the reason recorded, the key of
    its history entry."""
    outcome: str
    champion: str | None
    release: str | None
    reason: str
    history_key: str


# --- carrying it out -----------------------------------------------------------------------

def _same_files(manifest: dict, files: dict[str, Path]) -> bool:
    listed = {entry["path"]: entry["sha256"] for entry in manifest.get("files", [])}
    return listed == {name: sha256_file(Path(path)) for name, path in files.items()}


def _release(s3, bucket: str, record: PendingPromotion, files: dict[str, Path] | None,
             metadata: dict | None) -> str | None:
    """Make sure the record's release exists and verifies; returns None when it does, else why
    it cannot (only when `files` is None: a recovery has no files to write it again)."""
    uri = record.release
    existing = read_manifest(s3, uri)
    if existing is None:
        if files is None:
            return f"its release {uri} was never completed"
        try:
            write_release(s3, bucket, record.model, record.version, files, metadata or {})
        except ReleaseError:
            existing = read_manifest(s3, uri)   # another writer of this version won
            if existing is None:
                raise
    if existing is not None and files is not None and not _same_files(existing, files):
        # a retried promotion may find its own finished release; anything else is a conflict
        raise ReleaseError(f"release {uri} already exists with other files; releases are "
                           "immutable: register a new version instead")
    try:
        # as a reader would: champion never points at a bad release
        retry_call(verify_release, s3, uri, allow_pending=True, server=S3, url=s3_url_from_env())
    except ReleaseError as e:
        if files is not None:
            raise
        return f"its release fails verification ({e})"
    return None


def _set_tags(record: PendingPromotion, outcome: str, reason: str, release: str | None) -> None:
    tags = {"promotion": outcome, "promotion_reason": reason}
    if record.entry.get("outcome"):   # the rule's word: promote, keep or tie (tasks/steps/promote.py)
        tags["promotion_outcome"] = str(record.entry["outcome"])
    if release:
        tags["release"] = release
    set_version_tags(record.model, record.version, tags,
                     f"promotion tags of {record.model}/{record.version}")


def _record(s3, bucket: str, record: PendingPromotion, outcome: str, champion: str | None,
            reason: str, release: str | None, completed_by: str | None) -> Completion:
    """Tags, history entry (once) and the end of the pending record."""
    _set_tags(record, outcome, reason, release)
    key = find_entry(s3, bucket, record.model, record.decision_id)
    if key is None:
        entry = {**record.entry, "model": record.model, "version": record.version,
                 "previous_champion": record.previous_champion, "champion": champion,
                 "decision": outcome, "reason": reason, "release": release,
                 "flow_run_id": record.flow_run_id}
        if completed_by is not None:
            entry["completed_by"] = completed_by
        key = append_entry(s3, bucket, entry, entry_id=record.decision_id)
    clear_pending(s3, bucket, record)
    return Completion(outcome, champion, release, reason, key)


def _roll_back(s3, bucket: str, record: PendingPromotion, champion: str | None, why: str,
               completed_by: str | None) -> Completion:
    if champion == record.version:
        raise PromotionInterrupted(
            f"cannot roll back the {record.describe()}: {why}, but champion already points at "
            f"v{record.version}; move the alias back by hand, then promote again")
    if record.release is not None:
        retry_call(delete_release, s3, record.release, server=S3, url=s3_url_from_env())
    return _record(s3, bucket, record, ROLLED_BACK, champion,
                   f"{record.reason}; rolled back: {why}", None, completed_by)


def complete(s3, bucket: str, record: PendingPromotion, files: dict[str, Path] | None = None,
             metadata: dict | None = None, lock=None, completed_by: str | None = None) -> Completion:
    """Carry out the stored `record` (see the module doc); safe to run again.

    files/metadata: the release to write on a win (None when recovering: an unfinished
    release is then rolled back); lock: the PromotionLock, checked right before `champion`
    moves; completed_by: the flow run that finishes another run's record.
    Raises ReleaseError (a conflicting or corrupt release while not recovering),
    PromotionLockLost, ServerUnavailable; the pending record then stays."""
    if not record.promoted:
        return _record(s3, bucket, record, REJECTED, record.previous_champion, record.reason,
                       None, completed_by)
    current = champion_version(record.model)
    if current not in (record.version, record.previous_champion):
        return _roll_back(s3, bucket, record, current,
                          f"champion moved to v{current} since the decision was made against "
                          f"{_version(record.previous_champion)}", completed_by)
    problem = _release(s3, bucket, record, files, metadata)
    if problem is not None:
        return _roll_back(s3, bucket, record, current, problem, completed_by)
    if current != record.version:
        if lock is not None:
            lock.check()
        set_alias(record.model, CHAMPION, record.version)
    return _record(s3, bucket, record, PROMOTED, record.version, record.reason, record.release,
                   completed_by)


def _version(version: str | None) -> str:
    return "no champion" if version is None else f"v{version}"


def recover(s3, bucket: str, model: str, lock=None, flow_run_id: str | None = None,
            log=say) -> tuple[PendingPromotion, Completion] | None:
    """Finish the pending promotion a failed run left for `model` (hold the model's lease);
    None when there is none.  Says what it found and what it did, one line each."""
    record = read_pending(s3, bucket, model)
    if record is None:
        return None
    log(f"promotion: found the unfinished {record.describe()}; finishing it")
    done = complete(s3, bucket, record, lock=lock, completed_by=flow_run_id)
    what = {PROMOTED: f"completed: v{record.version} is champion, release {done.release}",
            REJECTED: "completed: recorded as rejected",
            ROLLED_BACK: f"rolled back ({done.reason.rsplit('; rolled back: ', 1)[-1]}); "
                         f"champion stays {_version(done.champion)}"}[done.outcome]
    log(f"promotion: the unfinished {record.describe()} was {what}")
    return record, done

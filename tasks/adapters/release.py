"""Immutable model releases in S3: what serving code reads.

A release lives at `s3://<bucket>/<model>/<version>/` and holds the model folder itself
(model.json, `unet/...` weights in diffusers layout or net.safetensors), plus the model card
`README.md` (tasks/adapters/model_card.py), `metrics.json`, for a model diffusers can sample
the scheduler config `scheduler/scheduler_config.json` (tasks/adapters/diffusers_interop.py),
and `manifest.json`.

Why the layout is what it is: two writers may release the same version at once (a retried task,
two promotions).  Each writer uploads its files under a prefix of its own,
`<model>/<version>/objects/<writer-id>/<path>`, that nobody else ever writes, and then creates
`<model>/<version>/manifest.json` with a conditional write (If-None-Match: *), which the store
grants to exactly one writer.  The manifest lists every file with its object key, sha256 and
size: it is the only thing that makes a writer's objects part of the release, so a losing
writer's late uploads land beside the release and never inside it, and no object a published
manifest names is ever written again.  A prefix without a manifest is an interrupted write, never
a release.  Readers resolve every file through the manifest and verify every checksum before they
hand the folder to `diffusion.model.load_for_sampling`; `verify_release` does the same without
keeping the files, and the promotion runs it before it moves `champion`.

A release is final only once its promotion is complete: while the model's pending-promotion
record (`<model>/_promotion/pending.json`, tasks.steps.promotion_transaction) names the version,
readers refuse it, because the registry may not know it yet.

Releases written before this layout (format dmops-release/1: files directly under the version
prefix) are still read and verified the same way.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from botocore.exceptions import ClientError

from diffusion.atomic import atomic_folder, atomic_write_text
from diffusion.checksums import sha256_file
from tasks.adapters.diffusers_interop import SCHEDULER_CONFIG, diffusers_scheduler

MANIFEST = "manifest.json"
FORMAT = "dmops-release/2"
READABLE_FORMATS = ("dmops-release/1", FORMAT)   # /1: files at <version>/<path>, no object keys
OBJECTS = "objects"                              # <version>/objects/<writer-id>/<path>
PENDING = "_promotion/pending.json"              # <model>/_promotion/pending.json
_CHUNK = 1 << 20


class ReleaseError(RuntimeError):
    """A release that cannot be written or read; the message says which and why."""


# --- helpers ------------------------------------------------------------------------

def release_uri(bucket: str, model: str, version: str) -> str:
    return f"s3://{bucket}/{model}/{version}/"


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/a/b/` -> ("bucket", "a/b/"); the prefix always ends with one slash."""
    if not uri.startswith("s3://"):
        raise ReleaseError(f"{uri!r} is not an S3 URI; expected s3://<bucket>/<model>/<version>/")
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    prefix = prefix.strip("/")
    if not bucket or not prefix:
        raise ReleaseError(f"{uri!r} names no release; expected s3://<bucket>/<model>/<version>/")
    return bucket, prefix + "/"


def _check_relative(name: str, where: str) -> str:
    """Release file names are relative POSIX paths inside the release: no escaping it."""
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or "\\" in name or str(path) != name:
        raise ReleaseError(f"{where}: file name {name!r} must be a plain relative path "
                           "such as 'model.json' or 'unet/config.json'")
    return name


def folder_files(folder, prefix: str = "") -> dict[str, Path]:
    """Every file under `folder` keyed by its relative POSIX path (sub-folders such as the
    diffusers `unet/` kept), optionally under `prefix`; hidden files are skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ReleaseError(f"{folder} is not a folder")
    files = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            files[str(PurePosixPath(prefix, *rel.parts))] = path
    return files


def pending_key(model: str) -> str:
    """Key of the model's pending-promotion record (tasks.steps.promotion_transaction)."""
    return f"{model}/{PENDING}"


def _error_code(error: ClientError) -> str:
    return error.response.get("Error", {}).get("Code", "")


def is_missing(error: ClientError) -> bool:
    return _error_code(error) in ("404", "NoSuchKey", "NotFound")


def _get_manifest(s3, bucket: str, prefix: str) -> dict | None:
    try:
        body = s3.get_object(Bucket=bucket, Key=prefix + MANIFEST)["Body"].read()
    except ClientError as e:
        if is_missing(e):
            return None
        raise
    try:
        return json.loads(body)
    except json.JSONDecodeError as e:
        raise ReleaseError(f"s3://{bucket}/{prefix}{MANIFEST} is not valid JSON: {e}") from None


def read_manifest(s3, uri: str) -> dict | None:
    """The manifest of the release at `uri`, or None when there is none (yet)."""
    return _get_manifest(s3, *parse_s3_uri(uri))


def s3_client_from_env():
    """A boto3 S3 client configured by the environment alone (AWS_ENDPOINT_URL_S3,
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ...), as the stack's `client_env()` sets it;
    transient errors are retried by botocore (`tasks.adapters.servers.boto_config`)."""
    import boto3

    from tasks.adapters.servers import boto_config

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("MLFLOW_S3_ENDPOINT_URL")
    # boto_config: path-style addressing (a loopback or self-hosted endpoint has no per-bucket
    # DNS names) and botocore's standard retries of transient errors with backoff
    return boto3.client("s3", endpoint_url=endpoint, config=boto_config())


# --- writing ------------------------------------------------------------------------

def _check_segment(part: str, what: str) -> str:
    # "_"-names (`_history`, `_promotion`) are the model's bookkeeping beside its versions
    if not part or "/" in part or part in (".", "..") or part.startswith("_"):
        raise ReleaseError(f"{what} {part!r} cannot be one segment of an S3 path "
                           "(no '/', not empty, not starting with '_')")
    return part


def is_precondition_failed(error: ClientError) -> bool:
    return _error_code(error) in ("PreconditionFailed", "412")


def _delete_prefix(s3, bucket: str, prefix: str) -> None:
    """Delete every object under `prefix` (a writer's own objects prefix, never a release's)."""
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})


def write_release(s3, bucket: str, model: str, version: str, files: dict[str, Path],
                  metadata: dict) -> str:
    """Upload `files` (release-relative name -> local file) under a prefix unique to this call,
    s3://bucket/model/version/objects/<writer-id>/, then create `manifest.json` (conditionally:
    exactly one writer of a version succeeds) listing each file with its object key, sha256 and
    size, plus `metadata`.  Returns the release URI s3://bucket/model/version/.

    Raises ReleaseError when the version already has a manifest (releases are immutable), also
    when another writer's manifest appeared during the upload; the losing writer's objects are
    then removed (they are its own, under its own prefix, and no manifest names them).  A
    manifest write refused because an earlier try of the same request (a botocore retry after
    a lost response) created it is a success: the manifest read back names this writer."""
    version = str(version)
    _check_segment(model, "model name")
    _check_segment(version, "version")
    uri = release_uri(bucket, model, version)
    prefix = f"{model}/{version}/"
    if not files:
        raise ReleaseError(f"nothing to release to {uri}: the file list is empty")
    writer = uuid.uuid4().hex
    objects = f"{OBJECTS}/{writer}/"
    entries = []
    for name, path in sorted(files.items()):
        _check_relative(name, uri)
        if name == MANIFEST:
            raise ReleaseError(f"{uri}: {MANIFEST} is written by the release itself; "
                               "do not pass one in the file list")
        path = Path(path)
        if not path.is_file():
            raise ReleaseError(f"cannot release {name!r} to {uri}: {path} is not a file")
        entries.append({"path": name, "key": objects + name, "sha256": sha256_file(path),
                        "size": path.stat().st_size})
    try:
        manifest_text = json.dumps({
            "format": FORMAT, "model": model, "version": version, "writer": writer,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "files": entries, "metadata": metadata,
        }, indent=2, sort_keys=True)
    except TypeError as e:
        raise ReleaseError(f"release metadata for {uri} is not JSON-serialisable: {e}") from None

    if _get_manifest(s3, bucket, prefix) is not None:
        raise ReleaseError(f"release {uri} already exists (it has a {MANIFEST}); releases are "
                           "immutable: register and release a new model version instead")
    for entry in entries:
        s3.upload_file(str(files[entry["path"]]), bucket, prefix + entry["key"])
        size = s3.head_object(Bucket=bucket, Key=prefix + entry["key"])["ContentLength"]
        if size != entry["size"]:
            raise ReleaseError(f"upload of {entry['path']} to {uri} stored {size} bytes, expected "
                               f"{entry['size']}; the file changed while uploading? retry")
    try:
        s3.put_object(Bucket=bucket, Key=prefix + MANIFEST, Body=manifest_text.encode(),
                      ContentType="application/json", IfNoneMatch="*")
    except ClientError as e:
        if not is_precondition_failed(e):
            raise
        # botocore retries a PUT whose response was lost; if the lost attempt created the
        # manifest, the retry is refused (412) by our own manifest.  Only the manifest says
        # who won: deleting our objects now would break our own published release for good.
        winner = _get_manifest(s3, bucket, prefix)
        if winner is not None and winner.get("writer") == writer:
            return uri
        _delete_prefix(s3, bucket, prefix + objects)
        raise ReleaseError(f"release {uri} was completed by another writer meanwhile; "
                           "releases are immutable") from None
    return uri


# --- reading ------------------------------------------------------------------------

def _refuse_pending(s3, bucket: str, prefix: str) -> None:
    """ReleaseError when the release under `prefix` (<model>/<version>/) is the one a pending,
    unfinished promotion is writing: the registry may not know it yet."""
    model, version = prefix.rstrip("/").rsplit("/", 1) if prefix.count("/") >= 2 else ("", "")
    if not model:
        return
    try:
        record = json.loads(s3.get_object(Bucket=bucket, Key=pending_key(model))["Body"].read())
    except ClientError as e:
        if is_missing(e):
            return
        raise
    except json.JSONDecodeError:
        return
    if str(record.get("version")) == version and record.get("promoted"):
        raise ReleaseError(
            f"release s3://{bucket}/{prefix} is not final: the promotion of {model} v{version} "
            f"(flow run {record.get('flow_run_id') or 'none'}, started {record.get('started')}) "
            f"is under way or was interrupted; the model's next promotion completes it or "
            f"removes the release")


def _published_manifest(s3, bucket: str, prefix: str, allow_pending: bool = False) -> dict:
    """The manifest of a published release, checked for format and file names; ReleaseError
    when there is no release (or only an interrupted one) under the prefix, or (unless
    `allow_pending`) when its promotion is still pending."""
    uri = f"s3://{bucket}/{prefix}"
    if not allow_pending:
        _refuse_pending(s3, bucket, prefix)
    manifest = _get_manifest(s3, bucket, prefix)
    if manifest is None:
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1).get("KeyCount", 0)
        if listed:
            raise ReleaseError(f"incomplete release {uri}: files but no {MANIFEST} (an interrupted "
                               "write); do not use it: release the version again")
        raise ReleaseError(f"no release at {uri}: nothing is stored under this prefix")
    if manifest.get("format") not in READABLE_FORMATS or not isinstance(manifest.get("files"), list):
        raise ReleaseError(f"{uri}{MANIFEST} has format {manifest.get('format')!r}; "
                           f"this version reads {' or '.join(map(repr, READABLE_FORMATS))}")
    for entry in manifest["files"]:
        _check_relative(entry["path"], f"{uri}{MANIFEST}")
        _check_relative(_object_key(entry), f"{uri}{MANIFEST}")
    return manifest


def _object_key(entry: dict) -> str:
    """Where a manifest entry's bytes are, relative to the release prefix: format 2 names its
    object, format 1 stored each file under its own name."""
    return entry.get("key", entry["path"])


def _fetch_verified(s3, bucket: str, prefix: str, entry: dict, sink=None) -> None:
    """Stream one manifest entry's object, hashing it (and writing it to the binary file
    `sink` when given); ReleaseError naming the file when it is missing or differs."""
    uri = f"s3://{bucket}/{prefix}"
    name = entry["path"]
    try:
        body = s3.get_object(Bucket=bucket, Key=prefix + _object_key(entry))["Body"]
    except ClientError as e:
        if is_missing(e):
            raise ReleaseError(f"release {uri} lists {name} in its manifest but the file "
                               "is missing from the store") from None
        raise
    h, size = hashlib.sha256(), 0
    for block in body.iter_chunks(_CHUNK):
        h.update(block)
        size += len(block)
        if sink is not None:
            sink.write(block)
    digest = h.hexdigest()
    if digest != entry["sha256"] or size != entry["size"]:
        raise ReleaseError(f"checksum mismatch for {name} in release {uri}: the manifest "
                           f"says sha256 {entry['sha256'][:12]}... ({entry['size']} bytes), "
                           f"the stored file has {digest[:12]}... ({size} bytes); the "
                           "release is corrupt or was modified: do not use it")


@contextmanager
def _worded_refusals():
    """An S3 refusal of this client's keys (wrong key or secret, a role that may not read the
    bucket) as ServerRefused: one line naming the store, the access key and the fix."""
    from tasks.adapters.servers import refused

    try:
        yield
    except ClientError as e:
        denied = refused(e)
        if denied is None:
            raise
        raise denied from e


def verify_release(s3, uri: str, allow_pending: bool = False) -> dict:
    """Read every file of the release at `uri` as a reader would (through its manifest) and
    check its sha256 and size, keeping nothing; returns the manifest.  Raises ReleaseError
    naming the first file that is missing or differs, or when the release's promotion is
    pending (`allow_pending`: the promotion itself verifies before it completes);
    ServerRefused when the store refuses the client's keys."""
    bucket, prefix = parse_s3_uri(uri)
    with _worded_refusals():
        manifest = _published_manifest(s3, bucket, prefix, allow_pending)
        for entry in manifest["files"]:
            _fetch_verified(s3, bucket, prefix, entry)
    return manifest


def read_release(s3, uri: str, dest) -> Path:
    """Download the release at `uri` into the folder `dest` (replaced atomically), verify
    every file against the manifest's sha256 and size, and return `dest`: a model folder
    `diffusion.model.load_for_sampling` reads.  ServerRefused (tasks/adapters/servers.py) when
    the store refuses the client's keys: one line naming the access key and the fix."""
    with _worded_refusals():
        return _read_release(s3, uri, dest)


def _read_release(s3, uri: str, dest) -> Path:
    bucket, prefix = parse_s3_uri(uri)
    manifest = _published_manifest(s3, bucket, prefix)
    with atomic_folder(dest, "release copy") as tmp:
        for entry in manifest["files"]:
            local = tmp / entry["path"]
            local.parent.mkdir(parents=True, exist_ok=True)
            with open(local, "wb") as sink:
                _fetch_verified(s3, bucket, prefix, entry, sink)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return Path(dest)


def delete_release(s3, uri: str) -> None:
    """Remove the release at `uri`, manifest first (so it stops being a release at once), then
    every object under its prefix.  Only for a release no promotion completed: published
    releases are immutable."""
    bucket, prefix = parse_s3_uri(uri)
    s3.delete_object(Bucket=bucket, Key=prefix + MANIFEST)
    _delete_prefix(s3, bucket, prefix)


# --- what goes into a release ---------------------------------------------------------

def prepare_release_files(model_dir, card: str, metrics: dict, workdir=None) -> dict[str, Path]:
    """The file list for `write_release`: the model folder's files (relative paths kept),
    README.md = `card`, metrics.json = `metrics` and, when diffusers has a scheduler for the
    model's served sampling, `scheduler/scheduler_config.json` (tasks/adapters/diffusers_interop.py),
    the written ones in `workdir` (a new temporary folder when None).  Raises ReleaseError when
    `model_dir` has no model.json, diffusion.model.ModelError when it is not valid."""
    from diffusion.model import read_spec   # torch: only where a release is written

    files = folder_files(model_dir)
    if "model.json" not in files:
        raise ReleaseError(f"{model_dir} is not a model folder: it has no model.json")
    workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="dmops-release-"))
    atomic_write_text(workdir / "README.md", card, "model card")
    atomic_write_text(workdir / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True),
                      "release metrics")
    files.update({"README.md": workdir / "README.md", "metrics.json": workdir / "metrics.json"})
    scheduler = diffusers_scheduler(read_spec(model_dir))
    if scheduler is not None:
        path = workdir / SCHEDULER_CONFIG
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, scheduler.config_json(), "diffusers scheduler config")
        files[SCHEDULER_CONFIG] = path
    return files

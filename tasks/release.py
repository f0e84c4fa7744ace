"""Immutable model releases in S3: what serving code reads.

A release lives at `s3://<bucket>/<model>/<version>/` and is the model folder itself (model.json,
`unet/...` weights in diffusers layout or net.safetensors), plus the model card `README.md`,
`metrics.json` and `manifest.json`.  The manifest lists every file with its sha256 and size and is
written LAST: a prefix without one is an interrupted write, never a release, and its leftovers may
be overwritten; a prefix with one is final and is never written again.  Readers verify every
checksum before they hand the folder to `diffusion.model.load_for_sampling`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

from botocore.exceptions import ClientError

from diffusion.atomic import atomic_folder

MANIFEST = "manifest.json"
FORMAT = "dmops-release/1"
_CHUNK = 1 << 20


class ReleaseError(RuntimeError):
    """A release that cannot be written or read; the message says which and why."""


# --- helpers ------------------------------------------------------------------------

def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks so multi-GB weights do not need the memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


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


def _error_code(error: ClientError) -> str:
    return error.response.get("Error", {}).get("Code", "")


def _is_missing(error: ClientError) -> bool:
    return _error_code(error) in ("404", "NoSuchKey", "NotFound")


def _get_manifest(s3, bucket: str, prefix: str) -> dict | None:
    try:
        body = s3.get_object(Bucket=bucket, Key=prefix + MANIFEST)["Body"].read()
    except ClientError as e:
        if _is_missing(e):
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
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ...), as the stack's `client_env()` sets it."""
    import boto3
    from botocore.config import Config

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("MLFLOW_S3_ENDPOINT_URL")
    # path-style: a loopback or self-hosted endpoint has no per-bucket DNS names
    return boto3.client("s3", endpoint_url=endpoint,
                        config=Config(s3={"addressing_style": "path"}))


# --- writing ------------------------------------------------------------------------

def write_release(s3, bucket: str, model: str, version: str, files: dict[str, Path],
                  metadata: dict) -> str:
    """Upload `files` (release-relative name -> local file) to s3://bucket/model/version/,
    then `manifest.json` listing each with sha256 and size, plus `metadata`.  Returns the URI.

    Refuses a version that already has a manifest (releases are immutable); leftovers of an
    interrupted write (files, no manifest) are overwritten."""
    version = str(version)
    for part, what in ((model, "model name"), (version, "version")):
        if not part or "/" in part or part in (".", ".."):
            raise ReleaseError(f"{what} {part!r} cannot be one segment of an S3 path")
    uri = release_uri(bucket, model, version)
    prefix = f"{model}/{version}/"
    if not files:
        raise ReleaseError(f"nothing to release to {uri}: the file list is empty")
    entries = []
    for name, path in sorted(files.items()):
        _check_relative(name, uri)
        if name == MANIFEST:
            raise ReleaseError(f"{uri}: {MANIFEST} is written by the release itself; "
                               "do not pass one in the file list")
        path = Path(path)
        if not path.is_file():
            raise ReleaseError(f"cannot release {name!r} to {uri}: {path} is not a file")
        entries.append({"path": name, "sha256": sha256_file(path), "size": path.stat().st_size})
    try:
        manifest_text = json.dumps({
            "format": FORMAT, "model": model, "version": version,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "files": entries, "metadata": metadata,
        }, indent=2, sort_keys=True)
    except TypeError as e:
        raise ReleaseError(f"release metadata for {uri} is not JSON-serialisable: {e}") from None

    if _get_manifest(s3, bucket, prefix) is not None:
        raise ReleaseError(f"release {uri} already exists (it has a {MANIFEST}); releases are "
                           "immutable: register and release a new model version instead")
    for entry in entries:
        s3.upload_file(str(files[entry["path"]]), bucket, prefix + entry["path"])
        size = s3.head_object(Bucket=bucket, Key=prefix + entry["path"])["ContentLength"]
        if size != entry["size"]:
            raise ReleaseError(f"upload of {entry['path']} to {uri} stored {size} bytes, expected "
                               f"{entry['size']}; the file changed while uploading? retry")
    try:
        # If-None-Match makes the store refuse a manifest that appeared since the check above
        # (a concurrent writer), so two releases can never both claim one version.
        s3.put_object(Bucket=bucket, Key=prefix + MANIFEST, Body=manifest_text.encode(),
                      ContentType="application/json", IfNoneMatch="*")
    except ClientError as e:
        if _error_code(e) in ("PreconditionFailed", "412"):
            raise ReleaseError(f"release {uri} was completed by another writer meanwhile; "
                               "releases are immutable") from None
        raise
    return uri


# --- reading ------------------------------------------------------------------------

def read_release(s3, uri: str, dest) -> Path:
    """Download the release at `uri` into the folder `dest` (replaced atomically), verify
    every file against the manifest's sha256 and size, and return `dest`: a model folder
    `diffusion.model.load_for_sampling` reads."""
    bucket, prefix = parse_s3_uri(uri)
    uri = f"s3://{bucket}/{prefix}"
    manifest = _get_manifest(s3, bucket, prefix)
    if manifest is None:
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1).get("KeyCount", 0)
        if listed:
            raise ReleaseError(f"incomplete release {uri}: files but no {MANIFEST} (an interrupted "
                               "write); do not use it: release the version again")
        raise ReleaseError(f"no release at {uri}: nothing is stored under this prefix")
    if manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), list):
        raise ReleaseError(f"{uri}{MANIFEST} has format {manifest.get('format')!r}; "
                           f"this version reads {FORMAT!r}")
    with atomic_folder(dest) as tmp:
        for entry in manifest["files"]:
            name = _check_relative(entry["path"], f"{uri}{MANIFEST}")
            local = tmp / name
            local.parent.mkdir(parents=True, exist_ok=True)
            try:
                s3.download_file(bucket, prefix + name, str(local))
            except ClientError as e:
                if _is_missing(e):
                    raise ReleaseError(f"release {uri} lists {name} in its manifest but the file "
                                       "is missing from the store") from None
                raise
            digest, size = sha256_file(local), local.stat().st_size
            if digest != entry["sha256"] or size != entry["size"]:
                raise ReleaseError(f"checksum mismatch for {name} in release {uri}: the manifest "
                                   f"says sha256 {entry['sha256'][:12]}... ({entry['size']} bytes), "
                                   f"the stored file has {digest[:12]}... ({size} bytes); the "
                                   "release is corrupt or was modified: do not use it")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return Path(dest)


# --- what goes into a release ---------------------------------------------------------

# metadata keys that name the data's content hash, in the order they are looked for
_DATA_HASH_KEYS = ("data_hash", "dataset_md5", "dataset_hash")


def _cell(value) -> str:
    text = f"{value:.6g}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def model_card(model: str, version: str, metrics: dict, metadata: dict | None = None, *,
               spec: dict | None = None, uri: str | None = None) -> str:
    """The release's README.md: what the model is (from `spec`, its model.json), where it
    came from (`metadata`: data hash, git commit, ... as the pipeline tags it), how good it is
    (`metrics`), how it samples and how to load it."""
    metadata = dict(metadata or {})
    spec = spec or {}
    sampling, data, net = spec.get("sampling") or {}, spec.get("data") or {}, spec.get("net") or {}
    where = uri or f"s3://<bucket>/{model}/{version}/"
    data_hash = next((metadata.pop(k) for k in _DATA_HASH_KEYS if k in metadata), "unknown")
    lines = [f"# {model}, version {version}", "", "| | |", "|---|---|",
             f"| data hash | {_cell(data_hash)} |",
             f"| git commit | {_cell(metadata.pop('git_commit', 'unknown'))} |"]
    if spec:
        lines += [f"| network | {net.get('kind', '?')} {net.get('channels', '')} |",
                  f"| preconditioning | {(spec.get('precond') or {}).get('kind', '?')} |",
                  f"| data | {data.get('dataset', '?')}, samples of shape "
                  f"{tuple(data.get('shape', ()))} |"]
    if "distillation" in spec:
        d = spec["distillation"]
        lines.append(f"| distilled | {d.get('method', '?')}, {d.get('student_steps', '?')} step(s) |")
    lines += [f"| {_cell(k)} | {_cell(v)} |" for k, v in sorted(metadata.items())]
    lines += ["", "## Metrics", ""]
    if metrics:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {_cell(k)} | {_cell(v)} |" for k, v in sorted(metrics.items())]
    else:
        lines.append("No metrics were recorded.")
    lines += ["", "## Sampling", ""]
    if sampling:
        lines.append(f"Default sampler `{sampling.get('sampler', 'heun')}`, "
                     f"{sampling.get('steps', '?')} steps, grid `{sampling.get('grid', 'karras')}`, "
                     f"sigma in [{sampling.get('sigma_min', '?')}, {sampling.get('sigma_max', '?')}]; "
                     "`dmops sample --sampler/--steps` override them.")
    else:
        lines.append("The default sampler and steps are stored in `model.json` (`sampling`).")
    lines += ["", "## How to load", "",
              "Every file is listed with its sha256 in `manifest.json`, written last; "
              "`read_release` verifies them all before anything is loaded.", "",
              "```bash", f"dmops sample --release {where} --n 64 --seed 0 --out samples.png", "```",
              "", "```python",
              "from diffusion.model import load_for_sampling",
              "from diffusion.samplers import generate",
              "from tasks.release import read_release, s3_client_from_env", "",
              f"folder = read_release(s3_client_from_env(), \"{where}\", \"{model}-{version}\")",
              "denoiser, spec = load_for_sampling(folder)",
              "x = generate(denoiser, tuple(spec[\"data\"][\"shape\"]), 16, seed=0, **spec[\"sampling\"]).x",
              "```", ""]
    return "\n".join(lines)


def prepare_release_files(model_dir, card: str, metrics: dict, workdir=None) -> dict[str, Path]:
    """The file list for `write_release`: the model folder's files (relative paths kept),
    README.md = `card`, metrics.json = `metrics`, the last two written to `workdir`
    (a new temporary folder when None)."""
    files = folder_files(model_dir)
    if "model.json" not in files:
        raise ReleaseError(f"{model_dir} is not a model folder: it has no model.json")
    workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="dmops-release-"))
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "README.md").write_text(card)
    (workdir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True))
    files.update({"README.md": workdir / "README.md", "metrics.json": workdir / "metrics.json"})
    return files


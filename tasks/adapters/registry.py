"""The MLflow model registry adapter: put a model folder in the registry, and get one back out.

`register_model` logs the folder as a pyfunc (tasks.adapters.pyfunc_model) under an MLflow run, registers
it as a new version of `name` carrying the caller's lineage tags (data hash, git commit, validation
result, metrics, Prefect flow-run id) and points the `challenger` alias at it.  Promotion
(tasks.steps.promote) later moves `champion`.  `download_model` returns the plain model folder of a
version, ready for `diffusion.model.load_for_sampling`.

Integrity: registration records the sha256 of every file of the model folder, model.json
included, as the version tag `files_sha256` (compact JSON).  Tags live in the tracking database,
apart from the artifact store that holds the files, so `download_model` can tell a corrupted
stored copy from the registered one and refuses it naming the file and the version; the pyfunc
carries the same sums in its MLmodel `model_config` for `mlflow.pyfunc.load_model`
(tasks.adapters.pyfunc_model).  The folder itself is verified against its model.json before it is
registered, so a damaged local copy never becomes the registered truth.

The tracking server comes from the environment (MLFLOW_TRACKING_URI), as MLflow always reads it.

Transient server errors (tasks.adapters.servers): MLflow's client retries each request itself (bounded by
MLFLOW_RETRY_ENV); reads and alias moves, safe to repeat, are retried again by `retry_call`,
and a failure names the MLflow server.  Registration is not safe to repeat blindly: each call
of `mlflow.register_model` makes a new version.  So `register_model` is idempotent per flow run
instead: a version already registered with the same run tag (`mlflow_parent_run_id`, else
`prefect_flow_run_id`) and the same `weights_sha256` is reused, never registered twice, when a
retried task (Prefect's retries, after e.g. the alias move failed) registers again.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from diffusion.atomic import atomic_folder
from diffusion.checksums import file_sha256s, find_mismatch, folder_files, warn_unverified

from tasks.adapters.model_ref import RegistryError, parse_model_ref
from tasks.adapters.servers import MLFLOW, RetryPolicy, ServerRefused, mlflow_call

# diffusion.model (torch, diffusers) is imported inside the functions that read a model folder:
# a request the registry answers with an error (no such model, alias or version; a server
# away) is answered without seconds of torch's import (benchmarks/cli_latency.py)

CHALLENGER = "challenger"
CHAMPION = "champion"
FILES_TAG = "files_sha256"
# Model version tag values may hold 100 000 characters on MLflow 3 (5 000 on older servers):
# stay within the smaller, about 40 files (a UNet folder has 3).
MAX_FILES_TAG = 5000


class RegistryServerError(RegistryError):
    """The MLflow server answered a registry request with an error (not a missing name)."""


class CorruptCopyError(RegistryError):
    """A registered version whose stored files differ from the sha256 recorded at registration."""


# --- tags: strings only, and never a secret ----------------------------------------------

# Key words and value shapes that mean a credential: tags are readable by everyone who can
# open the registry, so a match is refused rather than stored.
_SECRET_KEY_WORDS = ("password", "passwd", "secret", "token", "api_key", "apikey",
                     "access_key", "private_key", "credential")
_SECRET_VALUE_PATTERNS = {
    "an AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "a private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "a GitHub token": re.compile(r"\b(ghp|gho|ghs|ghu|github_pat)_[A-Za-z0-9_]{20,}"),
    "an API key": re.compile(r"\bsk-[A-Za-z0-9_-]{20,}"),
    "a password inside a URL": re.compile(r"://[^/\s:@]+:[^/\s@]+@"),
}
_SECRET_ENV_WORDS = ("SECRET", "PASSWORD", "TOKEN")


def check_tags(tags: dict[str, str], where: str = "model version tags") -> dict[str, str]:
    """Refuse tags that are not str -> str or that look like they hold a secret (by key name,
    by value shape, or by containing the value of a secret environment variable).  The
    message names the tag, never the value."""
    if not isinstance(tags, dict):
        raise RegistryError(f"{where} must be a dict of str -> str, got {type(tags).__name__}")
    secrets_in_env = [v for k, v in os.environ.items()
                      if any(w in k.upper() for w in _SECRET_ENV_WORDS) and len(v) >= 8]
    for key, value in tags.items():
        if not isinstance(key, str) or not key:
            raise RegistryError(f"{where}: tag key {key!r} must be a non-empty string")
        if not isinstance(value, str):
            raise RegistryError(f"{where}: tag {key!r} has a {type(value).__name__} value; tag "
                                "values must be strings: format numbers with str() or f'{x:.6g}'")
        if any(word in key.lower() for word in _SECRET_KEY_WORDS):
            raise RegistryError(f"{where}: tag {key!r} is named like a credential; tags are "
                                "visible to every registry user: do not store secrets in them")
        for what, pattern in _SECRET_VALUE_PATTERNS.items():
            if pattern.search(value):
                raise RegistryError(f"{where}: tag {key!r} looks like it holds {what}; tags are "
                                    "visible to every registry user: remove it")
        if any(secret in value for secret in secrets_in_env):
            raise RegistryError(f"{where}: tag {key!r} contains the value of a secret environment "
                                "variable; tags are visible to every registry user: remove it")
    return tags


# --- registering --------------------------------------------------------------------------

@contextmanager
def _logging_run(run_id: str | None):
    """The active run, or the run `run_id` (resumed for the duration), to log the model under."""
    active = mlflow.active_run()
    if run_id is None:
        if active is None:
            raise RegistryError("no active MLflow run to log the model under: call "
                                "register_model inside `with mlflow.start_run():` or pass run_id")
        yield active.info.run_id
    elif active is not None and active.info.run_id == run_id:
        yield run_id
    else:
        with mlflow.start_run(run_id=run_id, nested=active is not None):
            yield run_id


# Tags that name the flow run registering a version, most specific first: with the weights'
# sha256 they say "this run already registered these weights".
RUN_TAGS = ("mlflow_parent_run_id", "prefect_flow_run_id")


def registered_by_run(name: str, tags: dict[str, str]) -> str | None:
    """The version of `name` that the flow run named by `tags` (its first RUN_TAGS entry)
    already registered with the same `weights_sha256`, or None: no such version, or `tags`
    names no run or no weights (then nothing can be matched)."""
    key = next((k for k in RUN_TAGS if tags.get(k)), None)
    weights = tags.get("weights_sha256")
    if key is None or not weights or "'" in tags[key] or "'" in name:
        return None
    found = mlflow_call(MlflowClient().search_model_versions,
                    f"name = '{name}' and tags.{key} = '{tags[key]}'")
    same = [int(v.version) for v in found if v.tags.get("weights_sha256") == weights]
    return str(min(same)) if same else None


# MLflow's info lines at every registration ("Validating input example against model
# signature", "Waiting up to 300 seconds ..."; its prints, `_no_mlflow_prints`): the step says
# in one line what it registered
_REGISTRATION_CHATTER = ("mlflow.pyfunc", "mlflow.models", "mlflow.tracking._model_registry",
                         "mlflow.store.model_registry")


@contextmanager
def _quiet(*names: str):
    """Info records of the loggers `names` dropped for the duration; warnings still pass."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


@contextmanager
def _no_mlflow_prints():
    """MLflow's own stderr stream (its `eprint`: "Registered model ... already exists",
    "Created version ...") off for the duration; it carries only such notices here."""
    from mlflow.utils.logging_utils import MLFLOW_LOGGING_STREAM

    was = MLFLOW_LOGGING_STREAM.enabled
    MLFLOW_LOGGING_STREAM.enabled = False
    try:
        yield
    finally:
        MLFLOW_LOGGING_STREAM.enabled = was


def register_model(model_dir, name: str, tags: dict[str, str], run_id: str | None = None) -> str:
    """Log `model_dir` as a pyfunc under the active (or given) run, register it as a new
    version of `name` with `tags`, point alias `challenger` at it, and return the version.

    Idempotent per flow run: when `tags` name the run (RUN_TAGS) and the weights
    (`weights_sha256`) and that run already registered those weights, that version gets the
    alias and is returned; nothing is logged or registered again.  Raises RegistryError (bad
    tags, no run, a model folder too large for the checksum tag), ServerUnavailable (the MLflow
    server kept failing), diffusion.model.ModelError (`model_dir` is not a model folder, or one
    of its files differs from the sha256 its model.json recorded).

    The version also gets the tag FILES_TAG: {relative path: sha256} of every file of
    `model_dir` as compact JSON, what `download_model` verifies."""
    from diffusion.model import read_spec, verify_model_folder
    from tasks.adapters.pyfunc_model import ARTIFACT, input_example, signature
    from tasks.adapters.pyfunc_package import ENTRY, code_paths, pip_requirements

    check_tags(tags)
    model_dir = Path(model_dir)
    spec = read_spec(model_dir)  # a model folder, not a run or checkpoint: what gets served
    verify_model_folder(model_dir, spec)  # never register a damaged copy as the truth
    earlier = registered_by_run(name, tags)
    if earlier is not None:
        print(f"{name} version {earlier} holds these weights, registered by this flow run "
              "before (a retried registration): reusing it")
        set_alias(name, CHALLENGER, earlier)
        return earlier
    files = files_sha256(model_dir)
    with _logging_run(run_id), warnings.catch_warnings(), code_paths() as code, \
            _quiet(*_REGISTRATION_CHATTER):
        # MLflow suggests type hints on predict; the explicit signature below already says it all
        warnings.filterwarnings("ignore", message=".*type hints.*")
        # MLflow's own input-example writer compares columns with a range, which pandas 3
        # deprecates: nothing a user of dmops can act on, printed at every registration
        warnings.filterwarnings("ignore", message="Operation with range is deprecated",
                                module="mlflow.models.utils")
        # models from code: the entry file and the project code it imports travel with the
        # model and nothing is pickled, so it loads where dmops is not installed
        info = mlflow.pyfunc.log_model(
            name=name, python_model=str(ENTRY), code_paths=code,
            artifacts={ARTIFACT: str(model_dir)},
            signature=signature(spec.shape, spec.data.table), input_example=input_example(),
            pip_requirements=pip_requirements(), model_config=model_config(files))
    # tags travel with the registration itself, so no version is ever seen without its lineage.
    # Not retried here (a second try could make a second version): MLflow's own request
    # retries apply; one try through retry_call only makes a failure name the server.
    with _quiet(*_REGISTRATION_CHATTER), _no_mlflow_prints():
        version = str(mlflow_call(mlflow.register_model, info.model_uri, name,
                                  tags={**tags, FILES_TAG: files_tag(files)},
                                  policy=RetryPolicy(attempts=1)).version)
    set_alias(name, CHALLENGER, version)
    return version


def files_sha256(model_dir) -> dict[str, str]:
    """{relative POSIX path: sha256} of every file of a model folder, model.json included."""
    return file_sha256s(model_dir, folder_files(model_dir))


def files_tag(files: dict[str, str]) -> str:
    """`files` as the FILES_TAG value: compact JSON, sorted; RegistryError when too long."""
    text = json.dumps(files, sort_keys=True, separators=(",", ":"))
    if len(text) > MAX_FILES_TAG:
        raise RegistryError(f"the model folder has {len(files)} files; their sha256 sums take "
                            f"{len(text)} characters, more than a model version tag holds "
                            f"({MAX_FILES_TAG}): save the weights in fewer files")
    return text


def model_config(files: dict[str, str]) -> dict:
    """The pyfunc's MLmodel model_config: its files' sums (checked by load_context) and the
    device (overridable with mlflow.pyfunc.load_model(..., model_config={"device": "cuda"}))."""
    return {FILES_TAG: files, "device": "cpu"}


def recorded_files(name: str, version: str, tags: dict[str, str]) -> dict[str, str] | None:
    """The FILES_TAG of a version's `tags` as a dict, or None when it was registered without
    one; RegistryError when the tag is not what registration writes."""
    text = tags.get(FILES_TAG)
    if text is None:
        return None
    try:
        files = json.loads(text)
    except json.JSONDecodeError:
        files = None
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise RegistryError(f"models:/{name}/{version} has a {FILES_TAG} tag that is not a JSON "
                            "object of sha256 sums (edited by hand?): its files cannot be "
                            "verified; re-register the model")
    return files


def verify_registered_copy(folder, name: str, version: str, tags: dict[str, str] | None = None,
                           source: str = "MLflow artifact store") -> None:
    """Check a copy of the model folder of `name`/`version` (downloaded, or the local folder it
    was registered from) against the sha256 sums recorded at registration (FILES_TAG of
    `tags`, read from the registry when None).  Raises CorruptCopyError naming the version,
    `source` and the first file that differs or is missing; a version registered without the
    tag passes with a one-line warning."""
    tags = tags if tags is not None else version_tags(name, version)
    files = recorded_files(name, version, tags)
    where = f"models:/{name}/{version} ({source})"
    if files is None:
        warn_unverified(f"{where} was registered without file checksums (no {FILES_TAG} tag): "
                        "its files are not verified; re-register it to record them")
        return
    mismatch = find_mismatch(folder, files)
    if mismatch is not None:
        raise CorruptCopyError(f"{where}: {mismatch.describe('at registration', 'the stored copy')}; "
                               "re-register the model or restore the file")


# --- reading back -------------------------------------------------------------------------

def _not_found(e: MlflowException) -> bool:
    return e.error_code == "RESOURCE_DOES_NOT_EXIST"


def _absent_behind_permissions(e: ServerRefused, name: str) -> bool:
    """True when `e` is MLflow's 403 for a registered model `name` that does not exist.  A
    server with workspaces on (the team stack) answers a request for a missing model with 403
    rather than 404, so that its existence does not leak; the search endpoint lists only what
    the account may read, so an empty answer there means "no such model" for this account."""
    if e.server != MLFLOW or e.status != 403:
        return False
    return not mlflow_call(MlflowClient().search_registered_models, filter_string=f"name='{name}'")


def _aliases(name: str) -> dict[str, str] | None:
    """alias -> version of a registered model, or None when there is no such model."""
    try:
        model = mlflow_call(MlflowClient().get_registered_model, name)
    except MlflowException as e:
        if _not_found(e):
            return None
        raise
    except ServerRefused as e:
        if _absent_behind_permissions(e, name):
            return None
        raise
    return {alias: str(version) for alias, version in model.aliases.items()}


def resolve_version(ref: str) -> tuple[str, str]:
    """(name, version) that `ref` points at in the registry, with a clear error if none."""
    name, alias, version = parse_model_ref(ref)
    aliases = _aliases(name)
    where = f"the registry at {mlflow.get_tracking_uri()}"
    if aliases is None:
        raise RegistryError(f"there is no model {name!r} in {where}: check the name, or register "
                            "a version first")
    if alias is not None:
        if alias not in aliases:
            raise RegistryError(f"model {name!r} has no alias {alias!r} in {where} (aliases: "
                                f"{sorted(aliases) or 'none'}): promote a version first, or use "
                                "NAME/VERSION")
        return name, aliases[alias]
    try:
        return name, str(mlflow_call(MlflowClient().get_model_version, name, version).version)
    except MlflowException as e:
        if not _not_found(e):
            raise
        raise RegistryError(f"model {name!r} has no version {version} in {where}") from None


def version_tags(name: str, version: str) -> dict[str, str]:
    """The tags of one model version (lineage, metrics, promotion decision)."""
    return dict(mlflow_call(MlflowClient().get_model_version, name, str(version)).tags)


def champion_version(name: str) -> str | None:
    """The version the `champion` alias points at, or None when there is none (yet)."""
    return (_aliases(name) or {}).get(CHAMPION)


def registered_sample(name: str) -> tuple[str, str, str] | None:
    """(sample shape as '1x8x8', kind, version) of the models registered under `name` -- read
    from its champion, else its newest version -- or None when nothing is registered.  Tags
    `sample_shape` / `data_kind` answer it; a version without them is downloaded and read."""
    aliases = _aliases(name)
    if aliases is None:
        return None
    version = aliases.get(CHAMPION)
    if version is None:
        found = mlflow_call(MlflowClient().search_model_versions, f"name='{name}'")
        if not found:
            return None
        version = str(max(int(v.version) for v in found))
    tags = version_tags(name, version)
    if "sample_shape" in tags and "data_kind" in tags:
        return tags["sample_shape"], tags["data_kind"], version
    from diffusion.model import read_spec

    with tempfile.TemporaryDirectory(prefix="dmops-registered-") as tmp:
        spec = read_spec(download_model(f"{name}/{version}", Path(tmp) / "model"))
    return spec.sample_signature(), spec.data.kind or "unknown", version


def download_model(name_or_uri: str, dest) -> Path:
    """Download the model folder of `name@alias` or `name/version` into `dest` (replaced
    atomically) and return it: model.json + weights, what load_for_sampling reads.  Every file
    is checked against the sha256 recorded at registration (the FILES_TAG) before anything is
    kept.  Raises RegistryError (no such version, not a dmops model), CorruptCopyError (a
    stored file differs from its recorded sha256: nothing is written to `dest`)."""
    from mlflow.models import Model

    name, version = resolve_version(name_or_uri)   # before torch: a wrong name fails at once
    from diffusion.model import read_spec
    from tasks.adapters.pyfunc_model import ARTIFACT

    tags = version_tags(name, version)
    with tempfile.TemporaryDirectory(prefix="dmops-download-") as tmp:
        # a fresh download into the temporary folder on each try: safe to repeat
        local = Path(mlflow_call(mlflow.artifacts.download_artifacts,
                             artifact_uri=f"models:/{name}/{version}", dst_path=tmp))
        try:
            rel = Model.load(local).flavors["python_function"]["artifacts"][ARTIFACT]["path"]
        except (KeyError, TypeError, MlflowException):
            raise RegistryError(f"{name}/{version} was not registered by dmops: its MLmodel has "
                                f"no pyfunc artifact {ARTIFACT!r}") from None
        verify_registered_copy(local / rel, name, version, tags)
        with atomic_folder(dest, "model folder") as out:
            shutil.copytree(local / rel, out, dirs_exist_ok=True)
            try:
                read_spec(out)  # fail here, naming the version, rather than later when sampling
            except ValueError as e:
                raise RegistryError(f"{name}/{version} holds no usable model folder: {e}") from None
    return Path(dest)


def set_version_tags(name: str, version: str, tags: dict[str, str],
                     where: str = "model version tags") -> None:
    """Set `tags` on version `version` of `name` (checked by `check_tags`, named by `where`);
    each request retried on transient errors, ServerUnavailable when MLflow stays away."""
    client = MlflowClient()
    for key, value in check_tags(tags, where).items():
        mlflow_call(client.set_model_version_tag, name, version, key, value)


def set_alias(name: str, alias: str, version: str) -> None:
    """Point `alias` (e.g. champion) of `name` at `version`, retried like every MLflow request."""
    mlflow_call(MlflowClient().set_registered_model_alias, name, alias, version)


def set_descriptions(name: str, version: str, model_description: str | None = None,
                     version_description: str | None = None) -> None:
    """The registry's description of model `name` (left alone when it already reads so) and
    of its version `version` (markdown: the UI renders it); None leaves one unchanged.
    Retried like every MLflow request; ServerUnavailable when MLflow stays away."""
    client = MlflowClient()
    if model_description is not None:
        current = mlflow_call(client.get_registered_model, name).description or ""
        if current != model_description:
            mlflow_call(client.update_registered_model, name, model_description)
    if version_description is not None:
        mlflow_call(client.update_model_version, name, version,
                    fit_description(version_description))


DESCRIPTION_LIMIT = 5000   # MLflow's model_versions.description column: String(5000)


def fit_description(text: str, limit: int = DESCRIPTION_LIMIT) -> str:
    """`text` within MLflow's description column, cut at a line end with a note when longer
    (SQLite keeps a longer one, PostgreSQL and MySQL refuse it)."""
    if len(text) <= limit:
        return text
    note = "\n\n(cut to fit the registry; the full model card is the release's README.md)\n"
    head = text[:limit - len(note)]
    return head[:head.rfind("\n") + 1 if "\n" in head else len(head)].rstrip() + note


def version_record(ref: str) -> tuple[str, str, dict[str, str], str]:
    """(name, version, tags, run id) of the version `ref` (NAME@ALIAS or NAME/VERSION) names.
    RegistryError when it names nothing; RegistryServerError when MLflow answers with an error."""
    try:
        name, version = resolve_version(ref)
        mv = MlflowClient().get_model_version(name, version)
    except MlflowException as e:
        raise RegistryServerError(f"the MLflow registry could not serve {ref}: {e.message}") from None
    return name, version, dict(mv.tags), mv.run_id


def run_json_artifact(run_id: str, artifact_path: str) -> dict | None:
    """The JSON document `artifact_path` that run `run_id` logged, or None when it logged none.
    RegistryServerError when MLflow answers with another error; OSError or ValueError when the
    file cannot be read as JSON."""
    try:
        with tempfile.TemporaryDirectory(prefix="dmops-artifact-") as tmp:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path,
                                                       dst_path=tmp)
            return json.loads(Path(path).read_text())
    except MlflowException as e:
        if "RESOURCE_DOES_NOT_EXIST" in str(e.error_code) or "No such file" in e.message:
            return None
        raise RegistryServerError(f"the MLflow server could not serve {artifact_path} of run "
                                  f"{run_id}: {e.message}") from None


def run_metrics(run_id: str) -> dict[str, float]:
    """The latest value of every metric of run `run_id`; RegistryServerError on a server error."""
    try:
        return dict(MlflowClient().get_run(run_id).data.metrics)
    except MlflowException as e:
        raise RegistryServerError(f"the MLflow server could not serve run {run_id}: "
                                  f"{e.message}") from None

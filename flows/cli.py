"""`dmops`: the command line.  Each command reads the config, calls one pipeline step from
tasks/, and turns the library's errors into one readable line and exit code 2.

Every command checks its arguments (and the config) before it imports torch, diffusers, MLflow
or Prefect: a typo is answered at once (tests/test_cli_arguments.py, benchmarks/cli_latency.py).

Exit codes, the same in every command: 2 for what was typed (a malformed argument or option,
a number out of range, a local path that does not exist or holds no model, a config error);
1 for a well-formed request the servers cannot answer: a model name, alias or version the
registry does not hold, a model the releases bucket does not know, a server away, the servers'
environment missing (tests/test_cli_exit_codes.py).  Both print one `error: ...` line."""

from __future__ import annotations

import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer
import yaml

from flows.client_env import MLFLOW, S3, server_env_or_exit
from flows.cli_options import (APP_SETTINGS, ConfigOpt, ModelDirOpt, ProfileOpt, RegisteredModelOpt,
                               ReleaseOpt, RequiredModelDirOpt, SetOpt, check_device, check_exists,
                               check_model_source, check_samplers, model_ref_problem, usage_error)

app = typer.Typer(**APP_SETTINGS,
                  help="Train, distil, sample and ship diffusion models. Every command has --help.")



# user-fixable errors of the library, by module: caught by _friendly_errors when imported
USER_ERRORS = (("diffusion.config", "ConfigError"), ("diffusion.data", "DataError"),
               ("diffusion.model", "ModelError"), ("diffusion.loop", "TrainingError"))


@contextmanager
def _friendly_errors():
    """Known, user-fixable errors become `error: ...` and exit code 2 (no traceback); so does
    a write the operating system refused (full disk, quota, read-only filesystem, ...): one
    line naming the path and the cause, whichever layer met it."""
    from diffusion.atomic import WriteError, write_error

    try:
        yield
    except Exception as e:
        torchrun = sys.modules.get("tasks.adapters.torchrun")
        if torchrun is not None and isinstance(e, torchrun.TorchrunError):
            # a failed rank (not the user's input): its first line, then its log's tail as is
            typer.secho(f"error: {e.summary}; the last lines of {e.log_path}:", fg=typer.colors.RED,
                        err=True)
            typer.echo(e.tail, err=True)
            raise typer.Exit(1) from None
        if isinstance(e, (*_imported_user_errors(), ValueError, FileNotFoundError, WriteError)):
            error = e
        else:  # a write that no atomic_* helper wrapped: still one line
            error = write_error(e)
            if error is None:
                raise
        # one line, as every error of the CLI (a config error lists each key on its own line)
        typer.secho(f"error: {' '.join(str(error).split())}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None


def _imported_user_errors() -> tuple[type, ...]:
    """The USER_ERRORS of the modules imported so far: one never imported cannot have been
    raised, and importing it to look would cost `dmops config` torch's import."""
    return tuple(getattr(sys.modules[module], name) for module, name in USER_ERRORS
                 if module in sys.modules)


def _load(config: Path, profile: Optional[str], overrides: Optional[list[str]], out: Optional[Path],
          pin_data: bool = False):
    from diffusion.config import load_config
    from tasks.pipeline_settings import PipelineConfig

    # the whole file, its `pipeline` section too: a typo anywhere is reported by any command
    extra = list(overrides or []) + ([f"out_dir={out}"] if out else [])
    return load_config(config, profile, extra, schema=PipelineConfig, pin_data=pin_data)


def _versioned_dataset(config: Path, profile: Optional[str], overrides: Optional[list[str]]):
    """(name, data settings) of the dataset in use, as the file writes it: what DVC's stages
    `fingerprint@<name>` and `prepare@<name>` make (a file without `datasets`: data.name)."""
    cfg = _load(config, profile, overrides, None, pin_data=True)
    return cfg.dataset or cfg.data.name, cfg.data


@app.command()
def config(config: Path = ConfigOpt, profile: Optional[str] = ProfileOpt,
           set_: Optional[list[str]] = SetOpt):
    """Print the effective, validated configuration (after profile and overrides) as YAML.
    Settings that do not apply to the dataset's kind (a table's image sizes and pixel range, an
    image set's table columns) are left out, and a comment at the top names them."""
    with _friendly_errors():
        cfg = _load(config, profile, set_, None)
        shown, left_out = applicable_settings(cfg.model_dump(mode="json"), cfg.data.is_table)
        kind = "a table" if cfg.data.is_table else "not a table"
        name = cfg.dataset or cfg.data.name
        if left_out:
            typer.echo(f"# dataset {name} is {kind}; left out, as they do not apply to it:")
            typer.echo("\n".join(textwrap.wrap(", ".join(left_out), 94,
                                                initial_indent="#   ", subsequent_indent="#   ",
                                                break_on_hyphens=False)))
        typer.echo(yaml.safe_dump(shown, sort_keys=False))


# settings that one kind of dataset never reads (section path -> keys): `dmops config` leaves
# them out for it (diffusion/data_settings.py; tasks/adapters/gx/table_settings.py: a table's
# gate reads min_rows, max_duplicate_fraction and its own `table` section only)
UNUSED_BY_TABLES = {("data",): ("image_size", "channels", "background", "fit", "n"),
                    ("pipeline", "validate_data"): ("value_low", "value_high", "max_class_ratio",
                                                    "drift_tolerance", "max_label_kl",
                                                    "expected_shape", "max_skipped_files")}
UNUSED_BY_OTHERS = {("data",): ("columns", "target", "id_column", "categorical", "sep"),
                    ("pipeline", "validate_data"): ("table",)}


def applicable_settings(settings: dict, is_table: bool) -> tuple[dict, list[str]]:
    """(`settings` without the keys its dataset kind never reads, those keys as dotted names)."""
    import copy

    shown, left_out = copy.deepcopy(settings), []
    for path, keys in (UNUSED_BY_TABLES if is_table else UNUSED_BY_OTHERS).items():
        section = shown
        for part in path:
            section = section.get(part, {})
        for key in keys:
            if key in section:
                del section[key]
                left_out.append(".".join((*path, key)))
    return shown, left_out


@app.command()
def prepare(config: Path = ConfigOpt, profile: Optional[str] = ProfileOpt,
            set_: Optional[list[str]] = SetOpt,
            root: Path = typer.Option(Path("data/processed"),
                                      help="Folder that receives <name>/ (the dataset's name in `datasets`)."),
            finite_check: bool = typer.Option(
                True, "--finite-check/--no-finite-check",
                help="Refuse NaN/inf values here. The pipeline's DVC stage turns this off and lets "
                     "its data-quality gate report them with its other findings."),
            fingerprint: Optional[Path] = typer.Option(
                None, help="The source fingerprint `dmops fingerprint` wrote (the DVC stage passes "
                           "it): refuse a source that no longer matches it.")):
    """Load and validate the dataset in use (`dataset`, an entry of `datasets`: pick another with
    --set dataset=<name>) and write it to ROOT/<name>/ (DVC's stage prepare@<name>): images and
    points as arrays + manifest, a table as table.parquet + schema.json + manifest.csv.
    Prints how many files were read, skipped (by reason) and altered (by kind); for a table,
    its schema.

    A table is an entry with name: table, path: a .csv or .parquet file, and optionally
    target (the column splits are stratified on), id_column (kept, never modelled), columns
    (a list of {name, type: numerical | integer | categorical}; left out: inferred and printed),
    categorical (analog_bits | onehot: how categories are encoded) and sep (a CSV's delimiter);
    the built-in tables are name: churn and name: diamonds (README, "Tables")."""
    if fingerprint is not None:
        check_exists(fingerprint, "--fingerprint", "the source fingerprint",
                     "write it with `dmops fingerprint`, or leave the option out")
    with _friendly_errors():
        name, data = _versioned_dataset(config, profile, set_)
        from tasks.steps.prepare_dataset import prepare_dataset

        prepare_dataset(data, root, require_finite=finite_check, fingerprint=fingerprint, name=name)


@app.command()
def fingerprint(config: Path = ConfigOpt, profile: Optional[str] = ProfileOpt,
                set_: Optional[list[str]] = SetOpt,
                out: Optional[Path] = typer.Option(
                    None, "--out", "-o", help="Where to write it (default data/source/<name>.json, "
                                              "<name> the dataset's name in `datasets`).")):
    """Write the dataset source's fingerprint (every file's sha256, the settings, the preparing
    code's hash, library versions): the DVC prepare stage depends on it, so it reruns when any
    of them changes."""
    with _friendly_errors():
        name, data = _versioned_dataset(config, profile, set_)
        from tasks.steps.data_fingerprint import write_fingerprint

        write_fingerprint(data, out or Path("data/source") / f"{name}.json", name)


@app.command()
def train(config: Path = ConfigOpt, profile: Optional[str] = ProfileOpt,
          set_: Optional[list[str]] = SetOpt,
          out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run folder (default: out_dir from the config)."),
          resume: bool = typer.Option(True, "--resume/--no-resume",
                                      help="Continue from the run folder's latest checkpoint if there is one.")):
    """Train a diffusion model (the teacher) and write its EMA weights and a sample grid.

    Launch with `torchrun --nproc_per_node N -m flows.cli train ...` for data-parallel training."""
    with _friendly_errors():
        cfg = _load(config, profile, set_, out)
        if not resume and (Path(cfg.out_dir) / "checkpoints" / "latest").exists():
            raise ValueError(f"{cfg.out_dir} already holds a training run; pass --resume to continue "
                             "it or --out to start a new one elsewhere")
        from tasks.steps.train_teacher import train_teacher

        run = train_teacher(cfg, resume=resume)
    if run.model_dir is not None:
        r = run.result
        from diffusion.model import read_spec

        noun = read_spec(run.model_dir).data.noun
        typer.echo(f"trained {r.step} steps in {r.seconds:.0f} s ({r.samples_per_second:.0f} {noun}/s), "
                   f"final loss {r.loss:.4f}")
        typer.echo(f"model:   {run.model_dir}")
        typer.echo(f"samples: {run.samples_png}")


@app.command()
def distill(method: str = typer.Option(..., "--method", metavar="progressive|consistency|dmd",
                                       help="progressive: rounds that halve the DDIM steps, a "
                                            "student per round; consistency: one student sampling "
                                            "in 1, 2 or 4 steps; dmd: a one-step generator by "
                                            "distribution matching."),
            teacher: Path = typer.Option(..., "--teacher", "-t",
                                         help="The teacher: a model folder, a training run folder or a "
                                              "checkpoint folder."),
            config: Path = ConfigOpt, profile: Optional[str] = ProfileOpt,
            set_: Optional[list[str]] = SetOpt,
            out: Optional[Path] = typer.Option(None, "--out", "-o",
                                               help="Run folder; students go to OUT/distill/<method>/ "
                                                    "(default: out_dir from the config)."),
            resume: bool = typer.Option(True, "--resume/--no-resume",
                                        help="Continue an interrupted distillation (finished rounds are "
                                             "kept) instead of refusing to touch an existing one.")):
    """Distil a trained teacher into a few-step sampler (settings: the config's `distill` section).

    Each student is saved as a model folder carrying the sampler and step count it was distilled
    for, with a sample grid beside it; `dmops sample -d <student>` draws from it and
    `dmops evaluate -d <teacher> --students <run>/distill` compares students and teacher."""
    if method not in DISTILL_METHODS:
        usage_error(f"--method must be one of {', '.join(DISTILL_METHODS)}; got {method!r}")
    check_exists(teacher, "--teacher", "a teacher's model, run or checkpoint folder",
                 "train one with `dmops train --out DIR` and pass DIR")
    check_model_source(teacher, "--teacher")
    with _friendly_errors():
        cfg = _load(config, profile, set_, out)
        from tasks.steps.distill import distill_dir, distill_sampler

        work = distill_dir(cfg, method)
        if not resume and work.exists() and any(work.iterdir()):
            raise ValueError(f"{work} already holds a {method} distillation; pass --resume to "
                             "continue it or --out to start a new one elsewhere")
        students = distill_sampler(cfg, method, teacher, resume=resume)
    typer.echo(f"{len(students)} student(s) in {distill_dir(cfg, method)}")


# the methods `dmops distill` offers: tasks/steps/distill.py's METHODS, spelled here so that
# a typo is refused before torch is imported (a test holds the two equal)
DISTILL_METHODS = ("progressive", "consistency", "dmd")


@contextmanager
def _remote_errors(what: str):
    """Registry and object-store failures become `error: ...` (one line) and exit code 1.
    Imports neither MLflow nor the model code: `history` and `--release` need neither, and an
    MlflowException can only come from a block that imported MLflow itself."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    from diffusion.atomic import WriteError
    from flows.client_env import fix_for_missing
    from tasks.adapters.model_ref import RegistryError
    from tasks.adapters.release import ReleaseError
    from tasks.adapters.servers import ServerUnavailable, refused

    try:
        yield
    except WriteError as e:   # the local copy could not be written: the user's disk, exit 2
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    except (RegistryError, ReleaseError, ServerUnavailable) as e:
        message = str(e)
    except NoCredentialsError:
        message = (f"no S3 credentials to read {what}: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                   f"are not set; {fix_for_missing(['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY'], partial=True)}")
    except (BotoCoreError, ClientError) as e:   # keys the store refuses: which, and the fix
        message = str(refused(e) or f"the S3 store could not serve {what}: {e}")
    except Exception as e:
        mlflow_error = getattr(sys.modules.get("mlflow.exceptions"), "MlflowException", None)
        if mlflow_error is None or not isinstance(e, mlflow_error):
            raise
        message = str(refused(e) or f"the MLflow registry could not serve {what}: {e.message}")
    else:
        return
    typer.secho(f"error: {' '.join(message.split())}", fg=typer.colors.RED, err=True)
    raise typer.Exit(1)


@contextmanager
def _env_defaults(**values: str):
    """Environment variables the user has not set, set for the duration of the block only."""
    import os

    added = [key for key in values if key not in os.environ]
    os.environ.update({key: values[key] for key in added})
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def _fetch_model(model: Optional[str], release: Optional[str], dest: Path) -> Path:
    """The model folder of a registered version (--model) or a verified S3 release (--release),
    from the servers the environment names (else the running local stack: flows.client_env)."""
    if model is not None:
        from tasks.adapters.registry import download_model
        from tasks.adapters.servers import MLFLOW_RETRY_ENV

        # MLflow's default (7 retries, doubling waits) keeps a user waiting ~4 minutes for a
        # server that is down; the pipeline's bounded retries (tasks.adapters.servers) instead.
        with _env_defaults(**MLFLOW_RETRY_ENV, MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false"):
            return download_model(model, dest)
    from tasks.adapters.release import read_release, s3_client_from_env
    from tasks.adapters.servers import S3, retry_call, s3_url_from_env

    # safe to repeat: the folder is replaced atomically, a ReleaseError is never retried
    return retry_call(read_release, s3_client_from_env(), release, dest, server=S3,
                      url=s3_url_from_env())


@app.command()
def sample(model_dir: Optional[Path] = ModelDirOpt, model: Optional[str] = RegisteredModelOpt,
           release: Optional[str] = ReleaseOpt,
           out: Path = typer.Option(Path("samples.png"), "--out", "-o",
                                    help="PNG to write; for a table model also .csv or .parquet (its rows)."),
           n: int = typer.Option(64, "--n", min=1, help="Number of samples."),
           seed: int = typer.Option(0, "--seed", min=0, max=2**64 - 1,
                                   help="Seed of the starting noise (0 .. 2^64-1, torch's range)."),
           sampler: Optional[str] = typer.Option(None, help="ddpm | ddim | dpmpp_2m | ipndm | heun | consistency "
                                                 "(default: the model's; distilled students carry theirs)."),
           steps: Optional[int] = typer.Option(None, min=1, help="Sampler steps (default: the model's)."),
           device: str = typer.Option("cpu", help="cpu or cuda.")):
    """Draw samples from a trained model and write them as a PNG grid (or scatter plot); a
    table model's rows as CSV or Parquet (--out rows.csv), or their marginals as a PNG.

    The model is one of: a local folder (--model-dir), a registered version (--model) or an S3
    release (--release); the same seed gives the same picture from all three."""
    import tempfile

    given = [flag for flag, value in (("--model-dir", model_dir), ("--model", model),
                                      ("--release", release)) if value is not None]
    if len(given) != 1:
        usage_error("give exactly one of --model-dir PATH, --model NAME@ALIAS|NAME/VERSION "
                    f"or --release S3_URI (got {', '.join(given) or 'none'})")
    # what was typed is checked before torch or a server: a typo is answered at once (exit 2)
    if model is not None and (problem := model_ref_problem(model)) is not None:
        usage_error(f"--model {problem}; a model folder on this machine is --model-dir PATH")
    if release is not None:
        from tasks.adapters.release import ReleaseError, parse_s3_uri

        try:
            parse_s3_uri(release)
        except ReleaseError as e:
            usage_error(f"--release {e}")
    if sampler is not None:
        check_samplers([sampler], "--sampler")
    check_device(device)
    if out.suffix.lower() not in (".png", ".csv", ".parquet"):
        usage_error(f"--out {out}: write a .png (samples), or a table model's rows as .csv or .parquet")
    if model_dir is not None:
        check_model_source(model_dir, "--model-dir")
    options = dict(n=n, seed=seed, sampler=sampler, steps=steps, device=device)
    if model_dir is not None:
        with _friendly_errors():
            from tasks.steps.sample import sample_to_file

            sample_to_file(model_dir, out, **options)
        return
    servers = server_env_or_exit(MLFLOW if model is not None else S3)
    with tempfile.TemporaryDirectory(prefix="dmops-sample-") as tmp, _env_defaults(**servers):
        with _remote_errors(model or release):
            folder = _fetch_model(model, release, Path(tmp) / "model")
        with _friendly_errors():
            from tasks.steps.sample import sample_to_file

            sample_to_file(folder, out, **options)


def _int_list(text: Optional[str], name: str) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--{name} takes comma-separated integers, e.g. 1,2,4,8; got {text!r}") from None
    if not values or min(values) < 1:
        raise ValueError(f"--{name} needs positive integers, got {text!r}")
    return values


@app.command()
def evaluate(model_dir: Path = RequiredModelDirOpt,
             config: Path = ConfigOpt, profile: Optional[str] = ProfileOpt,
             set_: Optional[list[str]] = SetOpt,
             out: Optional[Path] = typer.Option(None, "--out", "-o",
                                                help="Report folder (default: <run>/evaluation)."),
             samplers: Optional[str] = typer.Option(None, help="Comma-separated, e.g. heun,dpmpp_2m "
                                                    "(default: evaluate.samplers)."),
             nfe: Optional[str] = typer.Option(None, help="Comma-separated NFE budgets, e.g. 1,2,4,8 "
                                               "(default: evaluate.nfes)."),
             n: Optional[int] = typer.Option(None, min=10, help="Samples per setting (default: evaluate.n_samples)."),
             students: Optional[Path] = typer.Option(None, "--students",
                                                     help="A folder searched for distilled students, e.g. "
                                                          "runs/digits/distill: each joins the table at its "
                                                          "own sampler and step count(s).")):
    """Quality versus NFE on held-out data: FID (with its real-data floor), KID, precision /
    recall / density / coverage, memorisation; writes CSV, JSON, a plot, grids and a filmstrip.
    With --students, distilled students are rows of the same table and lines of the same plot."""
    check_exists(model_dir, "--model-dir", "a model, training run or checkpoint folder",
                 "give a folder that `dmops train` or `dmops distill` wrote")
    if students is not None:
        check_exists(students, "--students", "a folder of distilled students",
                     "run `dmops distill` first, or leave the option out")
    sampler_list = [v.strip() for v in samplers.split(",") if v.strip()] if samplers else None
    if sampler_list:
        check_samplers(sampler_list, "--samplers")
    try:
        nfes = _int_list(nfe, "nfe")
    except ValueError as e:
        usage_error(str(e))
    check_model_source(model_dir, "--model-dir")
    with _friendly_errors():
        cfg = _load(config, profile, set_, None)
        if out is None:
            base = model_dir.parent if (model_dir / "model.json").exists() else model_dir
            out = base / "evaluation"
        from tasks.steps.distill import find_students
        from tasks.steps.evaluate import evaluate_model

        student_list = find_students(students) if students is not None else None
        report = evaluate_model(model_dir, cfg, out, samplers=sampler_list,
                                nfes=nfes, n=n, students=student_list)
    b = report.best
    who = b["sampler"] if b["model"] in ("teacher", b["sampler"]) else f"{b['model']} ({b['sampler']})"
    typer.echo(f"best: {who} at {int(b['nfe'])} NFE, FID {b['fid']:.3f} = "
               f"{b['fid'] / report.floor:.2f}x the real-data floor {report.floor:.3f}")
    width = max(18, *(len(name) + 2 for name in report.files))
    for name, path in report.files.items():
        typer.echo(f"{name + ':':{width}s}{path}")


@app.command()
def history(model: str = typer.Argument(..., help="Registered model name, e.g. digits-diffusion."),
            as_json: bool = typer.Option(False, "--json", help="Print the entries as JSON."),
            at: Optional[str] = typer.Option(None, "--at", metavar="TIME",
                                             help="Print only the champion serving at TIME, e.g. "
                                                  "2026-11-29T02:00 (UTC unless an offset is given)."),
            bucket: str = typer.Option("dmops-releases", "--bucket",
                                       help="Releases bucket that holds <model>/_history/ "
                                            "(endpoint and credentials: AWS_* variables).")):
    """The promotion history of a model, oldest first: every decision, won or lost, with the
    previous champion, the reason, the metric compared, the release and the flow run."""
    import json

    # light (botocore's exception classes only): checks what was typed before boto3 is imported
    from tasks.adapters.promotion_history import HistoryError, champion_at, parse_time, read_history

    if not model or "/" in model or "@" in model or model.startswith("_"):
        usage_error(f"{model!r} is not a registered model's name: give the name alone, e.g. "
                    "digits-diffusion (no @ALIAS or /VERSION)")
    try:
        when = parse_time(at) if at is not None else None
    except HistoryError as e:
        usage_error(f"--at: {e}")
    servers = server_env_or_exit(S3)
    from tasks.adapters.pending_promotion import read_pending
    from tasks.adapters.release import s3_client_from_env

    with _env_defaults(**servers), _remote_errors(f"the promotion history of {model}"):
        try:
            s3 = s3_client_from_env()
            entries = read_history(s3, bucket, model)
            pending = read_pending(s3, bucket, model)
            # nothing at all under <model>/: a name the store does not know (a typo, another
            # bucket), not a model whose history is empty; exit 1 as for an unknown model in
            # the registry (`dmops sample --model`, `dmops reproduce`)
            known = None if entries or pending else _models_in(s3, bucket)
        except HistoryError as e:
            typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
            raise typer.Exit(1) from None
    if known is not None and model not in known:
        typer.secho(f"error: there is no model {model!r} in s3://{bucket}/ (no promotion history, "
                    f"no release); models there: {', '.join(known) or 'none'}; check the name, "
                    "or --bucket", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    if pending is not None and not as_json:
        # on stderr: a note about the store's state, not one of the entries
        typer.echo(f"pending: the {pending.describe()} is unfinished; the model's next "
                   "promotion completes it or rolls it back", err=True)
    if when is not None:
        version, entry = champion_at(entries, when)
        answer = {"model": model, "at": when.isoformat(), "champion": version,
                  "since": entry and entry["time"], "release": entry and entry.get("release"),
                  "flow_run_id": entry and entry.get("flow_run_id")}
        if as_json:
            typer.echo(json.dumps(answer, indent=2))
        elif version is None:
            first = f"; the history starts at {entries[0]['time']}" if entries else ""
            typer.echo(f"{model} had no champion at {when.isoformat()} by its promotion "
                       f"history{first}")
        else:
            typer.echo(f"{model} at {when.isoformat()}: version {version} was champion (decision of "
                       f"{entry['time']}, flow run {entry.get('flow_run_id') or '-'}, release "
                       f"{entry.get('release') or '-'})")
        return
    if as_json:
        typer.echo(json.dumps(entries, indent=2))
        return
    if not entries:
        typer.echo(f"no promotion history for {model} in s3://{bucket}/{model}/_history/")
        return

    def number(value) -> str:
        return "-" if value is None else f"{value:.4g}"

    header = ("time (UTC)", "version", "previous", "decision", "metric", "challenger", "champion",
              "flow run", "release", "reason")
    rows = [(e["time"][:19], str(e["version"]), str(e.get("previous_champion") or "-"),
             e["decision"], str(e.get("metric") or "-"), number(e.get("challenger_value")),
             number(e.get("champion_value")), str(e.get("flow_run_id") or "-"),
             str(e.get("release") or "-"), " ".join(str(e.get("reason", "")).split()))
            for e in entries]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])


def _models_in(s3, bucket: str) -> list[str]:
    """The models with anything (releases, history) in the releases bucket: its top-level
    folders, one listing request."""
    listed = s3.list_objects_v2(Bucket=bucket, Delimiter="/")
    return sorted(p["Prefix"].rstrip("/") for p in listed.get("CommonPrefixes", []))


# The stack (up, down, status, env) and the pipeline (run, deploy, worker) live in their own
# modules; they import nothing heavy until a command runs.
from flows.pipeline_cli import register as _register_pipeline  # noqa: E402
from flows.reproduce_cli import register as _register_reproduce  # noqa: E402
from flows.stack_cli import register as _register_stack  # noqa: E402

@app.callback()
def _show_core_messages():
    """Train, distil, sample and ship diffusion models. Every command has --help."""
    # the core reports through `logging`: shown as plain lines, warnings on stderr
    from diffusion.messages import show_messages

    show_messages()


_register_stack(app)
_register_pipeline(app)
_register_reproduce(app)


def main():  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":
    sys.exit(app())

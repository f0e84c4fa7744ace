from pathlib import Path

import pytest

import diffusion  # noqa: F401  -- before torch: it sets OpenMP's wait policy (diffusion/__init__.py)
import torch

# the first pipeline run, shared by the modules that look at it (run once per session)
from pipeline_run import first_pipeline_run, pipeline_repo  # noqa: F401


@pytest.fixture(autouse=True, scope="session")
def _shared_feature_cache(tmp_path_factory):
    """One folder of evaluation feature extractors for every user repository of the session
    (tests/user_repo.py's params_for): a repository whose dataset's extractor another one trained
    reuses it, as a user's second checkout on the same machine could."""
    import user_repo

    user_repo.SHARED_FEATURE_CACHE = tmp_path_factory.mktemp("features")
    yield
    user_repo.SHARED_FEATURE_CACHE = None


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module that trains: on a shared 2-core machine torch's two
    OpenMP threads slow small steps 10-100x whenever another process holds a core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, one_torch_thread):
    """A digits UNet trained for the `tiny` profile's 20 steps (a diffusers `unet/` sub-folder),
    one per test module: a module may damage its copy."""
    from diffusion.config import load_config
    from tasks.steps.train_teacher import train_teacher

    out = tmp_path_factory.mktemp("tiny")
    params = Path(__file__).resolve().parents[1] / "params.yaml"
    return train_teacher(load_config(params, "tiny", [f"out_dir={out}"]), resume=False).model_dir


@pytest.fixture(scope="module")
def experiment(stack, request):
    """An MLflow experiment of the module's own (test-<module>-<random>), made the active one."""
    import uuid

    import mlflow

    module = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_").replace("_", "-")
    mlflow.set_experiment(f"test-{module}-{uuid.uuid4().hex[:6]}")


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    """One local stack (SeaweedFS S3, MLflow server, Prefect server) for the whole test session:
    free loopback ports, state in a temporary folder, the client environment (plus a fresh
    PREFECT_HOME) exported into os.environ. Stopped, and os.environ restored, at the end."""
    import os

    from infra import Stack, StackSettings
    from infra.ports import free_ports

    root = tmp_path_factory.mktemp("stack")
    s3_port, mlflow_port, prefect_port = free_ports(3)
    server = Stack(StackSettings(state_dir=root / "state", s3_port=s3_port, mlflow_port=mlflow_port,
                                 prefect_port=prefect_port))
    saved_env = dict(os.environ)
    try:
        server.up()
        client_home = root / "prefect-client-home"
        client_home.mkdir()   # Prefect does not create a missing home, then fails on SQLite
        for stray in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "PREFECT_PROFILE", "PREFECT_API_KEY"):
            os.environ.pop(stray, None)
        os.environ.update(server.client_env())
        os.environ["PREFECT_HOME"] = str(client_home)
        _refresh_prefect_settings()
        yield server
    finally:
        _drain_prefect_clients()
        os.environ.clear()
        os.environ.update(saved_env)
        _refresh_prefect_settings()
        server.down()


@pytest.fixture(scope="session")
def team_stack():
    """One team stack (`dmops up --team`: PostgreSQL, MLflow with basic-auth, Prefect with its
    auth string, SeaweedFS with one identity per role) for the whole test session, on free
    loopback ports, stopped and deleted at the end. Nothing is exported into os.environ (the
    local `stack` fixture's settings stay); a test takes one role's settings with
    `team_stack.client_env("pipeline" | "viewer" | "reader")`.

    Its state folder comes from tempfile.mkdtemp() with mode 0711, not tmp_path: as root,
    PostgreSQL runs as the `postgres` OS user, which must enter every folder above its data
    (pytest's temporary folders are 0700)."""
    import shutil
    import tempfile

    from infra import Stack, StackSettings
    from infra.ports import free_ports

    root = Path(tempfile.mkdtemp(prefix="dmops-team-stack-"))
    root.chmod(0o711)
    s3_port, mlflow_port, prefect_port, postgres_port = free_ports(4)
    team = Stack(StackSettings(state_dir=root / "state", s3_port=s3_port, mlflow_port=mlflow_port,
                               prefect_port=prefect_port, postgres_port=postgres_port, team=True))
    try:
        team.up(timeout=300)
        yield team
    finally:
        team.down()
        shutil.rmtree(root, ignore_errors=True)


def _refresh_prefect_settings():
    """Prefect reads its settings once, when prefect.context is imported (at collection time,
    if a test module imports prefect); make it read the environment again."""
    import sys

    context = sys.modules.get("prefect.context")
    if context is not None and hasattr(context, "refresh_global_settings_context"):
        context.refresh_global_settings_context()


def _drain_prefect_clients():
    """Flush Prefect's background log and event senders while the server still answers, so
    they do not retry against a stopped server at interpreter exit."""
    import sys

    if "prefect" not in sys.modules:
        return
    try:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)
        EventsWorker.drain_all(timeout=10)
    except Exception as e:   # best effort: never hide the test result behind a flush error
        print(f"note: could not flush Prefect clients before stopping the stack: {e}")


@pytest.fixture(autouse=True, scope="session")
def _core_messages_on_the_console():
    """The core's messages (diffusion/messages.py) shown as `dmops` shows them: tests that call
    the core directly read them from the console (capsys) as the CLI's tests do."""
    from diffusion.messages import show_messages

    show_messages()


# the modules that take longest (end-to-end runs against the servers; `--durations` of a full
# run), longest first: pytest-xdist's `--dist loadfile` hands modules out in collection order,
# so these start at once and the short ones fill the gaps, instead of the longest starting last
# and running alone at the end
LONGEST_FIRST = ("test_pipeline.py", "test_cli.py", "test_team_pipeline.py", "test_dvc_stage.py",
                 "test_table_pipeline.py", "test_promotion_race.py", "test_reproduce.py",
                 "test_promotion_faults.py", "test_torchrun_step.py", "test_serving.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    # a stable sort: the order within a module, and of the other modules, stays as collected
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))

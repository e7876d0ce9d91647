"""Fixtures of the integration tests: real servers on 127.0.0.1, started and stopped here.

``postgres_server`` is a throwaway PostgreSQL cluster (one per test session) on
a free port; ``postgres_server.create_database(name)`` returns a SQLAlchemy URL
for a fresh database in it (an Optuna study storage, an MLflow backend store).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest


def subprocess_environment(tracking_uri: str) -> dict:
    """Environment of a ``defectlab``/``mlflow`` child process: this venv first on PATH, the given store, no run id."""
    environment = {
        key: value for key, value in os.environ.items()
        # A test may name the child's experiment (MLFLOW_EXPERIMENT_NAME); an id exported by an
        # earlier test's mlflow.set_experiment belongs to another store.
        if not key.startswith(("MLFLOW_RUN", "MLFLOW_EXPERIMENT_ID"))
    }
    environment.update({
        "MLFLOW_TRACKING_URI": tracking_uri,
        # mlflow.set_registry_uri exports MLFLOW_REGISTRY_URI: an earlier test's store would win.
        "MLFLOW_REGISTRY_URI": tracking_uri,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "TF_CPP_MIN_LOG_LEVEL": "3",
    })
    return environment


def run_entry_point(project_root: Path, entry_point: str, parameters: dict, tracking_uri: str,
                    timeout_seconds: float = 900) -> subprocess.CompletedProcess:
    """``mlflow run <project_root> -e <entry_point> --env-manager local -P name=value ...`` into ``tracking_uri``."""
    command = [str(Path(sys.executable).parent / "mlflow"), "run", str(project_root), "-e", entry_point,
               "--env-manager", "local"]
    for name, value in parameters.items():
        command += ["-P", f"{name}={value}"]
    return subprocess.run(
        command, env=subprocess_environment(tracking_uri), capture_output=True, text=True,
        timeout=timeout_seconds,
    )


def the_one_finished_run(required_metrics):
    """The store's only run, checked FINISHED with a finite value for every ``required_metrics`` key."""
    import math

    import mlflow

    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert len(runs) == 1, f"expected one run, found {len(runs)}"
    run = runs[0]
    assert run.info.status == "FINISHED", run.data.tags.get("failure_reason")
    for key in required_metrics:
        assert math.isfinite(run.data.metrics[key]), key
    return run


def run_artifact_paths(run_id: str, folders=("", "plots", "ranking")) -> set[str]:
    """Artifact paths of a run in its root and the given folders."""
    import mlflow

    client = mlflow.MlflowClient()
    return {entry.path for folder in folders for entry in client.list_artifacts(run_id, folder or None)}


def logged_models_of_run(run) -> dict:
    """``{name: LoggedModel}`` of the models a run logged (``model``, ``detector``...)."""
    import mlflow

    return {
        model.name: model
        for model in mlflow.search_logged_models(
            experiment_ids=[run.info.experiment_id],
            filter_string=f"source_run_id = '{run.info.run_id}'", output_format="list",
        )
    }


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, timeout_seconds: float, process: subprocess.Popen | None = None) -> None:
    """Block until something accepts connections on 127.0.0.1:``port``; fail if ``process`` dies."""
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server process exited with status {process.returncode} before listening")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.settimeout(0.5)
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout_seconds:.0f} s")


def stop_process(process: subprocess.Popen, timeout_seconds: float = 10.0) -> None:
    """Terminate a process this test session started (kill it if it does not stop)."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout_seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


SERVER_START_SECONDS = 180
REQUEST_TIMEOUT_SECONDS = 120


def http_answer(url: str, body: bytes | None = None, content_type: str = "application/json"):
    """(status, text) of a GET (no body) or POST; HTTP errors are answers, not exceptions."""
    request = urllib.request.Request(
        url, data=body, method="GET" if body is None else "POST",
        headers={} if body is None else {"Content-Type": content_type},
    )
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_SECONDS) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@contextlib.contextmanager
def served_model(model_uri: str, folder: Path, tracking_uri: str, environment: dict | None = None):
    """``mlflow models serve -m model_uri --env-manager local`` on a free port, until the block ends.

    ``environment`` replaces `subprocess_environment` (e.g. one that blocks TensorFlow). Yields ``base_url``, ``invocations`` (its URL), ``process`` and ``log_path`` (in ``folder``).
    """
    port = free_port()
    log_path = Path(folder) / f"serve-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", model_uri,
                "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port),
            ],
            cwd=folder, env=environment or subprocess_environment(tracking_uri), stdout=log,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_for_port(port, SERVER_START_SECONDS, process)
        deadline = time.monotonic() + SERVER_START_SECONDS
        while http_answer(f"{base_url}/ping")[0] != 200:
            assert time.monotonic() < deadline and process.poll() is None, log_path.read_text()[-3000:]
            time.sleep(0.5)
        yield SimpleNamespace(
            base_url=base_url, invocations=f"{base_url}/invocations", process=process, log_path=log_path,
        )
    finally:
        stop_process(process)


def _postgres_bin_dir() -> Path | None:
    """Folder of ``initdb``/``pg_ctl``: from PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


class PostgresCluster:
    """A running throwaway PostgreSQL cluster: trust authentication, TCP on 127.0.0.1 only."""

    SUPERUSER = "postgres"

    def __init__(self, bin_dir: Path, data_dir: Path, port: int, run_as: list[str]):
        self.bin_dir = bin_dir
        self.data_dir = data_dir
        self.port = port
        self.run_as = run_as

    def _command(self, program: str, *arguments: str) -> list[str]:
        return [*self.run_as, str(self.bin_dir / program), *arguments]

    def start(self) -> None:
        subprocess.run(
            self._command(
                "initdb", "-D", str(self.data_dir), "-U", self.SUPERUSER, "--auth=trust",
                "--encoding=UTF8", "--no-sync",
            ),
            check=True, capture_output=True,
        )
        # No Unix socket (its default folder may not exist or be writable); fsync off: throwaway data.
        options = f"-p {self.port} -h 127.0.0.1 -k '' -c fsync=off -c max_connections=100"
        subprocess.run(
            self._command(
                "pg_ctl", "-D", str(self.data_dir), "-o", options,
                "-l", str(self.data_dir / "server.log"), "-w", "-t", "60", "start",
            ),
            check=True, capture_output=True,
        )

    def stop(self) -> None:
        subprocess.run(
            self._command("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "stop"),
            capture_output=True,
        )

    def url(self, database: str) -> str:
        """SQLAlchemy URL of ``database``, naming the psycopg2 driver (SQLAlchemy 2.1 defaults to psycopg 3)."""
        return f"postgresql+psycopg2://{self.SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create an empty database ``name`` (dropping an old one) and return its URL."""
        import psycopg2

        connection = psycopg2.connect(
            host="127.0.0.1", port=self.port, user=self.SUPERUSER, dbname="postgres"
        )
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        return self.url(name)


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL cluster on a free port for the whole test session.

    Skips when PostgreSQL's server binaries are not installed (``.ci/run``
    installs them). ``initdb`` refuses to run as root, so as root the cluster
    runs as the ``postgres`` system user.
    """
    pytest.importorskip("psycopg2")
    bin_dir = _postgres_bin_dir()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb) are not installed")
    run_as: list[str] = []
    parent = Path(tempfile.mkdtemp(prefix="defectlab-postgres-"))
    data_dir = parent / "data"
    if os.geteuid() == 0:
        runuser = shutil.which("runuser")
        if runuser is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
        run_as = [runuser, "-u", "postgres", "--"]
        shutil.chown(parent, user="postgres")
    cluster = PostgresCluster(bin_dir, data_dir, free_port(), run_as)
    try:
        cluster.start()
    except subprocess.CalledProcessError as error:
        shutil.rmtree(parent, ignore_errors=True)
        raise RuntimeError(
            f"could not start PostgreSQL: {error.stderr.decode(errors='replace')[-2000:]}"
        ) from error
    yield cluster
    cluster.stop()
    shutil.rmtree(parent, ignore_errors=True)

"""What CI can check of docker/ without a Docker engine.

The compose file and the Kubernetes Job parse; every file they and the
Dockerfiles reference exists; only 127.0.0.1 is published; secrets come from
``docker/.env`` (only ``.env.example`` is committed); and the command lines the
containers run (``defectlab tune ...``, ``mlflow server ...``) parse with the
installed package's own click commands, after compose's variable interpolation
with the example settings.
"""

from __future__ import annotations

import click
import re
import tomllib
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCKER_DIR = REPO_ROOT / "docker"
COMPOSE_FILE = DOCKER_DIR / "compose.yaml"
ENV_EXAMPLE = DOCKER_DIR / ".env.example"
K8S_JOB = DOCKER_DIR / "k8s" / "tune-job.yaml"
DOCKERFILES = (DOCKER_DIR / "Dockerfile.cpu", DOCKER_DIR / "Dockerfile.gpu")
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}
COMPOSE_VARIABLE = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<operator>:?[-?])(?P<argument>[^}]*))?\}")


def example_settings() -> dict:
    settings = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            settings[name.strip()] = value.strip()
    return settings


def interpolate(text: str, settings: dict) -> str:
    """Compose's interpolation: ``$$`` is a literal ``$``; a variable without a value or default raises."""

    def replace(match: re.Match) -> str:
        name, operator, argument = match.group("name", "operator", "argument")
        if settings.get(name):
            return settings[name]
        if operator in (":-", "-"):
            return argument
        raise KeyError(f"{name} has no value in {ENV_EXAMPLE.name} and no default ({match.group(0)})")

    placeholder = "\0"
    return COMPOSE_VARIABLE.sub(replace, text.replace("$$", placeholder)).replace(placeholder, "$")


def interpolated(value, settings: dict):
    if isinstance(value, str):
        return interpolate(value, settings)
    if isinstance(value, list):
        return [interpolated(item, settings) for item in value]
    if isinstance(value, dict):
        return {key: interpolated(item, settings) for key, item in value.items()}
    return value


@pytest.fixture(scope="module")
def compose() -> dict:
    """The compose file as Docker Compose sees it with the example ``.env``."""
    return interpolated(yaml.safe_load(COMPOSE_FILE.read_text()), example_settings())


def command_arguments(service: dict) -> list[str]:
    command = service["command"]
    return command.split() if isinstance(command, str) else [str(part) for part in command]


def parse_click_command(group, arguments: list[str]):
    """Parse ``arguments`` (``[name, *options]``) with ``group``'s subcommand, as its CLI would."""
    name, *options = arguments
    command = group.get_command(click.Context(group), name)
    assert command is not None, f"{group.name} has no command {name!r}"
    return command.make_context(name, list(options))


def test_compose_has_the_team_stack_services(compose):
    assert {"postgres", "minio", "create-bucket", "mlflow", "tune"} <= set(compose["services"])


def test_every_compose_variable_has_an_example_value_or_a_default():
    # interpolate raises on a variable that would be empty in a fresh `cp .env.example .env`
    interpolated(yaml.safe_load(COMPOSE_FILE.read_text()), example_settings())


def test_only_the_example_env_file_is_committed():
    assert ".env" in REPO_ROOT.joinpath(".gitignore").read_text().splitlines()
    secrets = {name: value for name, value in example_settings().items() if "PASSWORD" in name or "SECRET" in name}
    assert secrets and all(value.startswith("change-me") for value in secrets.values())


def test_files_referenced_by_compose_exist(compose):
    for name, service in compose["services"].items():
        build = service.get("build")
        if build:
            context = (DOCKER_DIR / build["context"]).resolve()
            assert context.is_dir(), f"{name}: build context {context}"
            assert (context / build["dockerfile"]).is_file(), f"{name}: {build['dockerfile']}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                assert (DOCKER_DIR / source).exists(), f"{name}: bind-mounted {source}"
            else:
                assert source in compose["volumes"], f"{name}: undeclared named volume {source}"
    assert ENV_EXAMPLE.is_file()


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfile_copies_existing_files_and_installs_existing_extras(dockerfile):
    text = dockerfile.read_text()
    assert_copied_files_exist(dockerfile)
    extras = set(tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"])
    installed = re.findall(r'"\.\[([a-z,]+)\]"', text)
    assert installed, f"{dockerfile.name} does not pip install the project"
    for group in installed:
        assert set(group.split(",")) <= extras, f"{dockerfile.name}: extras {group}"


def assert_copied_files_exist(dockerfile: Path) -> None:
    """Every ``COPY`` source of ``dockerfile`` exists and is in the build context (not in .dockerignore)."""
    copies = re.findall(r"^COPY\s+(.+)$", dockerfile.read_text(), flags=re.MULTILINE)
    assert copies
    for line in copies:
        *sources, _ = line.split()
        for source in sources:
            assert (REPO_ROOT / source).exists(), f"{dockerfile.name}: COPY {source}"
            assert not _docker_ignored(source), f"{dockerfile.name}: {source} is in .dockerignore"


def _docker_ignored(path: str) -> bool:
    patterns = [line.strip() for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    return any(path.rstrip("/") == pattern.rstrip("/") for pattern in patterns)


def test_gpu_image_is_tensorflow_cuda_build_and_cpu_image_is_python_slim():
    cpu, gpu = (path.read_text() for path in DOCKERFILES)
    assert re.search(r"^FROM python:3\.\d+-slim", cpu, flags=re.MULTILINE)
    assert re.search(r"^FROM (nvidia/cuda|tensorflow/tensorflow):\S*", gpu, flags=re.MULTILINE)
    assert '".[gpu' in gpu


def test_only_the_mlflow_server_is_published_and_only_on_localhost(compose):
    published = {name: service["ports"] for name, service in compose["services"].items() if service.get("ports")}
    assert set(published) == {"mlflow"}
    for port in published["mlflow"]:
        assert str(port).startswith("127.0.0.1:"), port


def test_workers_wait_for_healthy_server_and_server_for_database_and_bucket(compose):
    services = compose["services"]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "/health" in " ".join(services["mlflow"]["healthcheck"]["test"])
    assert services["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["mlflow"]["depends_on"]["create-bucket"]["condition"] == "service_completed_successfully"
    assert services["create-bucket"]["depends_on"]["minio"]["condition"] == "service_healthy"
    for worker in ("tune", "tune-gpu"):
        assert services[worker]["depends_on"]["mlflow"]["condition"] == "service_healthy"


def test_tune_workers_find_the_server_and_the_shared_study(compose):
    from defectlab.cli import main

    for worker in ("tune", "tune-gpu"):
        service = compose["services"][worker]
        assert service["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        arguments = command_arguments(service)
        assert arguments[0] == "defectlab"
        context = parse_click_command(main, arguments[1:])
        assert context.params["storage"].startswith("postgresql+psycopg2://")
        assert context.params["storage"].endswith("@postgres:5432/optuna")
        assert context.params["study_name"], "workers must name the study they share"


def test_mlflow_server_command_parses_and_proxies_s3_artifacts(compose):
    from mlflow.cli import cli

    service = compose["services"]["mlflow"]
    arguments = command_arguments(service)
    assert arguments[0] == "mlflow"
    context = parse_click_command(cli, arguments[1:])
    assert context.params["backend_store_uri"].startswith("postgresql+psycopg2://")
    assert context.params["backend_store_uri"].endswith("@postgres:5432/mlflow")
    assert context.params["artifacts_destination"].startswith("s3://")
    assert context.params["serve_artifacts"] is True
    assert context.params["host"] == "0.0.0.0"
    assert "mlflow:5000" in context.params["allowed_hosts"].split(",")
    assert service["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"


def test_bucket_job_creates_the_server_bucket(compose):
    services = compose["services"]
    bucket = services["create-bucket"]["environment"]["ARTIFACT_BUCKET"]
    assert "mc mb" in " ".join(command_arguments(services["create-bucket"]))
    assert parse_artifacts_bucket(services["mlflow"]) == bucket


def parse_artifacts_bucket(mlflow_service: dict) -> str:
    arguments = command_arguments(mlflow_service)
    destination = arguments[arguments.index("--artifacts-destination") + 1]
    return destination.removeprefix("s3://").split("/")[0]


def test_kubernetes_job_runs_parallel_tune_workers_on_one_study():
    from defectlab.cli import main

    job = yaml.safe_load(K8S_JOB.read_text())
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    assert job["spec"]["parallelism"] >= 2
    [container] = job["spec"]["template"]["spec"]["containers"]
    environment = {variable["name"]: variable for variable in container["env"]}
    assert environment["MLFLOW_TRACKING_URI"]["value"].startswith("http://")
    # Kubernetes expands $(NAME) from the container's env; the storage URL comes from a Secret.
    arguments = [
        re.sub(r"\$\((\w+)\)", lambda match: f"<{match.group(1)} from its secret>", part)
        for part in container["command"]
    ]
    assert arguments[0] == "defectlab"
    context = parse_click_command(main, arguments[1:])
    assert "secretKeyRef" in environment["OPTUNA_STORAGE"]["valueFrom"]
    assert context.params["storage"] == "<OPTUNA_STORAGE from its secret>"
    assert context.params["study_name"]


@pytest.mark.parametrize("worker, dockerfile", [("tune", DOCKERFILES[0]), ("tune-gpu", DOCKERFILES[1])])
def test_writable_worker_volumes_are_folders_the_image_user_owns(compose, worker, dockerfile):
    """A new named volume takes the owner of the image's folder; a missing folder would be root's."""
    owned = set()
    for match in re.finditer(r"chown defectlab:defectlab ([^\n\\]+)", dockerfile.read_text()):
        owned.update(match.group(1).split())
    for volume in compose["services"][worker]["volumes"]:
        source, target, *mode = volume.split(":")
        if mode != ["ro"]:
            assert target in owned, f"{worker}: {target} is not created for the image user in {dockerfile.name}"


ONNX_DOCKERFILE = DOCKER_DIR / "Dockerfile.onnx"


def test_onnx_serving_image_copies_existing_files_and_installs_no_tensorflow():
    text = ONNX_DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.\d+-slim", text, flags=re.MULTILINE)
    assert_copied_files_exist(ONNX_DOCKERFILE)
    installs = re.findall(r"pip install ([^&\n]+)", text)
    assert installs == ["-r /tmp/requirements-onnx.txt "], installs
    requirements = (REPO_ROOT / "src/defectlab/serving/requirements-onnx.txt").read_text().lower()
    assert "onnxruntime" in requirements
    for heavy in ("tensorflow", "keras", "tf2onnx"):
        assert not re.search(rf"^{heavy}", requirements, flags=re.MULTILINE), heavy


def test_onnx_serving_image_serves_the_mounted_model_with_mlflow():
    from mlflow.cli import cli

    (command,) = re.findall(r"^CMD (\[.+\])$", ONNX_DOCKERFILE.read_text(), flags=re.MULTILINE)
    arguments = yaml.safe_load(command)
    assert arguments[:2] == ["mlflow", "models"]
    models = cli.get_command(click.Context(cli), "models")
    context = parse_click_command(models, arguments[2:])
    assert context.params["model_uri"] == "/model"
    assert context.params["env_manager"] == "local"
    assert context.params["host"] == "0.0.0.0"
    assert f"EXPOSE {context.params['port']}" in ONNX_DOCKERFILE.read_text()

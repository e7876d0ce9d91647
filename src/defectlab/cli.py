"""The ``defectlab`` console script: a thin click layer over the library.

Every MLproject entry point calls one of these commands. The training
commands and ``tune`` are built from the method registry (`defectlab.methods`):
a registered method is a command, with one option per field of its config, so
a default lives only in that config.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys

import click

from defectlab.config import (
    DEFAULT_PROMOTION_METRIC, EXPORT_FORMATS, OPTIMIZERS, EvaluateConfig, ExportConfig, PredictConfig,
    config_defaults,
)
from defectlab.console import import_tensorflow_quietly
from defectlab.data.decoder import BAD_IMAGE_POLICIES, RESIZE_MODES
from defectlab.errors import DefectlabError, set_setting_style
from defectlab.methods import all_methods
from defectlab.option_help import option_help
from defectlab.tuning.config import TuneConfig

# Errors that are the user's to fix: shown as one line, without a traceback.
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (DefectlabError, FileNotFoundError)
# tune: its own options, then every training option of every method, each declared once.
# Settings that are not about training one model (registration, repeated seeds) stay out.
TUNE_FIELDS = frozenset(config_defaults(TuneConfig))
TUNE_EXCLUDED_TRAINING_FIELDS = frozenset({"register_as", "repeats"})
QUIET_ENVIRONMENT = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", "TF_CPP_MIN_LOG_LEVEL": "1"}
# Libraries' own notes at INFO, shown only with --verbose: faiss's loader reports a
# ModuleNotFoundError each time it picks its generic build, MLflow's system-metrics
# monitor that a CPU machine has no GPU to measure.
QUIET_LOGGERS = (
    "faiss.loader", "mlflow.system_metrics",
    # Every logged model: "Validating input example against model signature"; a new store:
    # "Creating initial MLflow database tables..." and alembic's migration steps.
    "mlflow.pyfunc", "mlflow.store.db.utils", "alembic.runtime.migration",
)
# Options a command cannot run without (click says so in --help and before anything runs).
REQUIRED_FIELDS = frozenset({"model_uri"})


class ShownChoice(click.Choice):
    """A fixed set of values, listed in ``--help`` and offered to shell completion.

    Any value passes through to the config, whose own check refuses a wrong
    one with the same one-line `ConfigError` as the library (one source of
    truth for the message, whether the setting comes from the CLI or code).
    """

    def convert(self, value, param, ctx):
        return value


def option_choices() -> dict[str, tuple[str, ...]]:
    """The fixed values of the options that have them, by config field name."""
    from defectlab.methods.backbones import BACKBONE_ARCHITECTURES
    from defectlab.methods.patch.config import SEARCH_INDEX_CHOICES
    from defectlab.methods.ssim.config import SSIM_LOSSES
    from defectlab.tuning.config import OBJECTIVES

    return {
        "resize": RESIZE_MODES, "on_bad_image": BAD_IMAGE_POLICIES, "optimizer": OPTIMIZERS,
        "backbone_arch": BACKBONE_ARCHITECTURES, "search_index": SEARCH_INDEX_CHOICES, "loss": SSIM_LOSSES,
        "format": EXPORT_FORMATS, "method": tuple(method.name for method in all_methods()),
        "objective": OBJECTIVES,
    }


class OrMethodDefault(click.ParamType):
    """A typed option whose empty value means "the chosen method's default" (``None``)."""

    def __init__(self, value_type: click.ParamType):
        self.value_type = value_type
        self.name = f"{value_type.name} or empty"

    def convert(self, value, param, ctx):
        if value is None or value == "":
            return None
        return self.value_type.convert(value, param, ctx)


def field_option(field: dataclasses.Field, config_name: str, method_default: bool = False,
                 hidden: bool = False) -> click.Option:
    """``--field-name``, typed, defaulted and explained from a dataclass field (empty: the method's default).

    The help line comes from `defectlab.option_help` (also the reference's
    table); a field of a plug-in method without one gets none.
    """
    option_type = {bool: click.BOOL, int: click.INT, float: click.FLOAT}.get(
        type(field.default), click.STRING
    )
    choices = option_choices().get(field.name)
    if choices and option_type is click.STRING:
        option_type = ShownChoice(choices)
    default = field.default
    if method_default:
        option_type, default = OrMethodDefault(option_type), None
    try:
        help_text = option_help(config_name, field.name)
    except KeyError:
        help_text = None
    required = field.name in REQUIRED_FIELDS
    return click.Option(
        ["--" + field.name.replace("_", "-"), field.name], type=option_type,
        default=None if required else default, show_default=not required, help=help_text, required=required,
        hidden=hidden,
    )


def config_options(config_class):
    """Decorator: one option per field of a config dataclass (`field_option`).

    A bool option may stand alone as a switch (``--overwrite`` means
    ``--overwrite true``) and still takes a value, which MLproject passes.
    """

    def decorate(command):
        for field in reversed(dataclasses.fields(config_class)):
            option = field_option(field, config_class.__name__)
            switch = {"is_flag": False, "flag_value": True} if option.type is click.BOOL else {}
            command = click.option(
                *option.opts, field.name, type=option.type, default=option.default,
                show_default=option.show_default, help=option.help, required=option.required, **switch,
            )(command)
        return command

    return decorate


def run_reporting_errors(function, *args, **kwargs):
    """Call ``function``; turn expected errors into one clear line and exit status 1."""
    try:
        return function(*args, **kwargs)
    except EXPECTED_ERRORS as error:
        raise click.ClickException(f"{type(error).__name__}: {error}") from error


def training_command(method) -> click.Command:
    """``defectlab <method>``: one option per field of the method's config."""

    def train(**options) -> None:
        config = run_reporting_errors(method.config_class, **options)
        import_tensorflow_quietly()
        from defectlab.runner import run_repeated

        echo_training_results(config, run_reporting_errors(run_repeated, config))

    return click.Command(
        method.name, callback=train, help=method.summary,
        params=[field_option(field, method.config_class.__name__) for field in dataclasses.fields(method.config_class)],
    )


def tune_training_options(methods, hidden: bool = False) -> list[click.Option]:
    """One option per training setting of any method, defaulted to the methods' common
    default, or empty (the chosen method's default) where their defaults differ."""
    fields, defaults, owners = {}, {}, {}
    for method in methods:
        for field in dataclasses.fields(method.config_class):
            if field.name not in TUNE_FIELDS | TUNE_EXCLUDED_TRAINING_FIELDS:
                fields.setdefault(field.name, field)
                owners.setdefault(field.name, method.config_class.__name__)
                defaults.setdefault(field.name, set()).add(field.default)
    return [
        field_option(field, owners[name], method_default=len(defaults[name]) > 1, hidden=hidden)
        for name, field in fields.items()
    ]


def run_tune(**options) -> None:
    """Optuna study over one method's settings; one nested MLflow run per trial.

    Training options not in the search space are held fixed; those left empty
    take the chosen method's default.
    """
    tune_config = run_reporting_errors(TuneConfig, **{name: options.pop(name) for name in TUNE_FIELDS})
    import_tensorflow_quietly()
    from defectlab.tuning import base_training_config, run_study

    base_config = run_reporting_errors(base_training_config, tune_config, options)
    result = run_reporting_errors(run_study, tune_config, base_config)
    counts = ", ".join(f"{count} {state.lower()}" for state, count in result.trial_counts.items() if count)
    click.echo(f"study {result.study_name} (parent run {result.parent_run_id}): {counts or 'no trials'}")
    if result.best_run_id:
        click.echo(
            f"best {tune_config.objective}={result.best_value:.4f} (run {result.best_run_id}) "
            f"with {result.best_params}"
        )


class MethodTuneCommand(click.Command):
    """``defectlab tune <method>``; an option of another method is refused naming that method."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as error:
            field_name = error.option_name.lstrip("-").replace("-", "_")
            owners = [
                method.name for method in all_methods()
                if field_name in {field.name for field in dataclasses.fields(method.config_class)}
            ]
            if owners:
                error.message = (
                    f"{error.option_name} is an option of {' and '.join('tune ' + owner for owner in owners)}, "
                    f"not of tune {self.name}"
                )
                error.possibilities = None  # click's "did you mean" guess would point elsewhere
            raise


def tune_method_command(method) -> click.Command:
    """``defectlab tune <method>``: the study's options and that method's training options only."""
    excluded = TUNE_FIELDS | TUNE_EXCLUDED_TRAINING_FIELDS

    def tune(**options) -> None:
        run_tune(method=method.name, **options)

    return MethodTuneCommand(
        method.name, callback=tune, short_help=method.summary,
        help=f"Optuna study over the settings of {method.name}: {method.summary}\n\n"
             "Training options not in the search space are held fixed.",
        params=[
            *(field_option(field, TuneConfig.__name__) for field in dataclasses.fields(TuneConfig)
              if field.name != "method"),
            *(field_option(field, method.config_class.__name__) for field in dataclasses.fields(method.config_class)
              if field.name not in excluded),
        ],
    )


class TuneCommands(click.Group):
    """``defectlab tune``: one subcommand per registered method, each with only its own options.

    ``defectlab tune --method NAME`` with every method's training options (the
    form MLproject's ``tune`` entry point calls, as ``-P method=...``) is kept:
    its options are hidden from ``--help``, which lists the methods instead.
    """

    def __init__(self):
        super().__init__(
            "tune", callback=self.tune_by_method_option, invoke_without_command=True, no_args_is_help=True,
            help="Optuna study over one method's settings; one nested MLflow run per trial.\n\n"
                 "Run `defectlab tune METHOD --help` for what can be tuned for a method. "
                 "Scripts and MLproject may also name it with --method and pass any method's options.",
            params=[
                *(field_option(field, TuneConfig.__name__, hidden=True) for field in dataclasses.fields(TuneConfig)),
                *tune_training_options(all_methods(), hidden=True),
            ],
        )

    def list_commands(self, ctx):
        return [method.name for method in all_methods()]

    def get_command(self, ctx, name):
        for method in all_methods():
            if method.name == name:
                return tune_method_command(method)
        return None

    @staticmethod
    def tune_by_method_option(**options) -> None:
        context = click.get_current_context()
        if context.invoked_subcommand is None:
            run_tune(**options)
            return
        given = [
            "--" + name.replace("_", "-") for name in options
            if context.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT
        ]
        if given:
            raise click.UsageError(
                f"put the options after the method: defectlab tune {context.invoked_subcommand} "
                f"{' '.join(given)} ... (or name it with --method and no subcommand)"
            )


class MethodCommands(click.Group):
    """The click group whose training commands (and ``tune``) come from the method registry."""

    def list_commands(self, ctx):
        return sorted({*super().list_commands(ctx), "tune", *(method.name for method in all_methods())})

    def get_command(self, ctx, name):
        if name == "tune":
            return TuneCommands()
        for method in all_methods():
            if method.name == name:
                return training_command(method)
        return super().get_command(ctx, name)


@click.group(cls=MethodCommands)
@click.version_option(package_name="defectlab", prog_name="defectlab")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def main(verbose: bool) -> None:
    """defectlab: tracked, tunable visual anomaly detection."""
    # What a person reads: no MLflow download bars for a run's own small artifacts, and
    # TensorFlow's C++ start-up chatter only from warnings up (a user's own setting wins).
    for name, value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    # Messages name settings as the user typed them: `mlflow run` starts this command with its run id set.
    set_setting_style("mlproject" if os.environ.get("MLFLOW_RUN_ID") else "cli")
    click.get_current_context().call_on_close(lambda: set_setting_style("python"))
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.WARNING)


def echo_training_results(config, results) -> None:
    """One line per training run (one per seed with ``repeats``), plus any registered version."""
    for result in results:
        click.echo(
            f"run {result.run_id}: test_image_auroc={result.metrics['test_image_auroc']:.4f} "
            f"test_tpr_tnr_best={result.metrics['test_tpr_tnr_best']:.4f}"
        )
        if result.model_version:
            click.echo(f"registered {config.register_as} version {result.model_version}")


@main.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write the dataset into.")
@click.option("--image-size", default=256, show_default=True, type=int, help="Side of the written images in pixels.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seeds the drawing: the same seed writes the same files.")
@click.option("--count-scale", default=1.0, show_default=True, type=float, help="Multiplies the per-category image counts.")
@click.option("--category", "categories", multiple=True, help="Only these categories (repeatable); default all four.")
def synth(out: str, image_size: int, seed: int, count_scale: float, categories: tuple[str, ...]) -> None:
    """Write the built-in synthetic MVTec-style dataset to a folder."""
    from defectlab.data.synthetic import SyntheticSpec, generate_dataset

    spec = SyntheticSpec(image_size=image_size, seed=seed, count_scale=count_scale)
    root = run_reporting_errors(generate_dataset, out, spec, list(categories) or None)
    click.echo(f"synthetic dataset written to {root}")


@main.group("data")
def data_group() -> None:
    """Datasets: download the real MVTec AD."""


@data_group.command("download")
@click.option("--to", "to_dir", required=True, type=click.Path(file_okay=False), help="Folder to download and extract into.")
@click.option("--category", "categories", multiple=True, help="Extract only these categories (repeatable); default all.")
@click.option("--url", default=None, help="Archive URL (default: the official MVTec AD archive).")
@click.option("--sha256", default=None, help="Expected SHA-256 of the archive (default: the official one).")
def data_download(to_dir: str, categories: tuple[str, ...], url: str | None, sha256: str | None) -> None:
    """Download, verify (SHA-256) and extract MVTec AD; resumes an interrupted download."""
    from defectlab.data import download

    try:
        written = download.download_mvtec_ad(
            to_dir, list(categories) or None,
            url=url or download.MVTEC_AD_URL, sha256=sha256 or download.MVTEC_AD_SHA256,
        )
    except download.DownloadError as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"extracted {', '.join(written)} into {to_dir}")


@main.command()
@click.option("--data-dir", default="synthetic", show_default=True, help="Dataset root in MVTec AD layout, or 'synthetic'.")
@click.option("--category", "categories", multiple=True, help="Categories (repeatable); default all in the dataset.")
@click.option("--image-size", default=64, show_default=True, type=int, help="Images are resized to this many pixels square.")
@click.option("--n-components", default=20, show_default=True, type=int, help="PCA components kept of the pixels.")
@click.option("--lof-neighbors", default=20, show_default=True, type=int, help="Neighbours of the LocalOutlierFactor.")
@click.option("--grayscale", default=False, show_default=True, type=click.BOOL, help="Use one grey channel.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seeds the splits.")
def baseline(data_dir: str, categories: tuple[str, ...], image_size: int, n_components: int,
             lof_neighbors: int, grayscale: bool, seed: int) -> None:
    """PCA on pixels + LOF: the plain baseline every detector must beat (whole test set)."""
    from defectlab.baseline import run_pixel_baseline

    rows = run_reporting_errors(
        run_pixel_baseline, data_dir, list(categories) or None, image_size, n_components,
        lof_neighbors, grayscale, seed,
    )
    click.echo(f"{'category':<12} {'image_auroc':>12} {'tpr_tnr_best':>13}")
    for category, metrics in rows.items():
        click.echo(f"{category:<12} {metrics['image_auroc']:>12.3f} {metrics['tpr_tnr_best']:>13.3f}")


@main.command()
@config_options(EvaluateConfig)
def evaluate(**options) -> None:
    """Score a logged or registered detector on a dataset; log a run with the contract's metrics."""
    config = run_reporting_errors(EvaluateConfig, **options)
    import_tensorflow_quietly()
    from defectlab.runner import run_evaluate

    result = run_reporting_errors(run_evaluate, config)
    click.echo(
        f"run {result.run_id}: {result.detector_uri} test_image_auroc="
        f"{result.metrics['test_image_auroc']:.4f} test_tpr_tnr_best={result.metrics['test_tpr_tnr_best']:.4f}"
    )


@main.command()
@config_options(PredictConfig)
def predict(**options) -> None:
    """Score new images (a folder, a glob or a list of paths) with a detector: predictions.csv, overlays, summary.png.

    Exits 1 when an image could not be read (listed in errors.csv) unless --allow-errors.
    """
    from defectlab.serving.predict import ERRORS_FILE, run_predict

    config = run_reporting_errors(PredictConfig, **options)
    result = run_reporting_errors(run_predict, config)
    click.echo(result.summary())
    if result.run_id:
        click.echo(f"logged run {result.run_id}")
    if result.errors and not config.allow_errors:
        raise click.ClickException(
            f"{result.errors} of {result.images} images could not be read (see "
            f"{result.out_dir / ERRORS_FILE}); pass --allow-errors to accept that"
        )


@main.command()
@config_options(ExportConfig)
def export(**options) -> None:
    """Export a detector to run without TensorFlow (ONNX + NumPy) into an MLflow model folder, checked for parity."""
    config = run_reporting_errors(ExportConfig, **options)
    import_tensorflow_quietly()
    from defectlab.serving.export import run_export

    result = run_reporting_errors(run_export, config)
    click.echo(result.summary())
    if result.run_id:
        version = f", version {result.model_version}" if result.model_version else ""
        click.echo(f"logged run {result.run_id}: {result.model_uri}{version}")


@main.command()
@click.option("--model-name", required=True, help="Registered model name, e.g. defectlab-metric-carpet.")
@click.option("--metric", default=DEFAULT_PROMOTION_METRIC, show_default=True, help="Run metric the versions are compared on.")
@click.option("--version", default="", show_default=True, help="Candidate version; empty: the newest.")
@click.option("--higher-is-better", type=click.BOOL, default=True, show_default=True, help="false for metrics such as a loss.")
@click.option("--require-significant", type=click.BOOL, default=False, show_default=True,
              help="Promote only if the gain is outside the champion's bootstrap 95 % interval.")
def promote(model_name: str, metric: str, version: str, higher_is_better: bool, require_significant: bool) -> None:
    """Move the alias champion to a version, only if it beats the current champion (exit 0 either way)."""
    from defectlab.tracking.registry import promote as promote_version

    decision = run_reporting_errors(
        promote_version, model_name, metric=metric, version=version or None,
        higher_is_better=higher_is_better, require_significant=require_significant,
    )
    click.echo(decision.summary())


@main.command()
@click.option("--experiment", required=True, help="Name of the MLflow experiment whose finished runs are compared.")
@click.option("--out", default="comparison", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the tables and figures (also logged as artifacts of the compare run).")
def compare(experiment: str, out: str) -> None:
    """The article's comparison (box plots, mean ± std table, published numbers) from finished runs."""
    from defectlab.comparison import compare_experiment

    result = run_reporting_errors(compare_experiment, experiment, out)
    measured = result.table[result.table["n"] > 0]
    click.echo(
        f"compare run {result.run_id}: {len(measured)} of {len(result.table)} (group, category, method) "
        f"cells have runs; report written to {result.out_dir}"
    )


if __name__ == "__main__":
    main()

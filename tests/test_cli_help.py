"""Every option explains itself, in --help and in the reference, from one source."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
from click.testing import CliRunner

from defectlab.cli import main
from defectlab.option_help import options_markdown

REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "reference.md"
BUILT_IN_COMMANDS = ("metric", "ssim", "patch", "tune", "evaluate", "predict", "export", "promote", "compare",
                     "synth", "baseline")


def test_every_option_of_every_command_has_a_line_of_help():
    context = click.Context(main)
    missing = [
        f"{name} --{parameter.name}"
        for name in BUILT_IN_COMMANDS
        for parameter in main.get_command(context, name).params
        if isinstance(parameter, click.Option) and not (parameter.help or "").strip()
    ]
    assert missing == []


def test_the_reference_holds_the_same_help_as_the_cli():
    text = REFERENCE.read_text()
    section = text.split("<!-- options:start -->\n", 1)[1].split("\n<!-- options:end -->", 1)[0]
    assert section == options_markdown(), "docs/reference.md is stale: python -m defectlab.option_help"


def test_fixed_choices_are_listed_and_a_wrong_one_is_still_the_config_error():
    patch_help = CliRunner().invoke(main, ["patch", "--help"]).output
    assert "[stretch|center_crop|pad]" in patch_help and "[auto|exact|ivf]" in patch_help
    assert "[mobilenet_v2|efficientnet_lite0]" in patch_help
    evaluate_help = CliRunner().invoke(main, ["evaluate", "--help"]).output
    assert "[required]" in evaluate_help.split("--category")[0]  # the --model-uri entry
    result = CliRunner().invoke(main, ["patch", "--search-index", "hnsw"])
    assert result.exit_code == 1 and "search_index must be one of auto, exact, ivf, got 'hnsw'" in result.output


def test_version_and_help_need_neither_tensorflow_nor_mlflow():
    assert CliRunner().invoke(main, ["--version"]).output.startswith("defectlab, version ")
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, defectlab.cli; print(sorted({'tensorflow', 'keras', 'mlflow'} & set(sys.modules)))"],
        capture_output=True, text=True, check=True,
    )
    assert probe.stdout.strip() == "[]"


def test_the_console_script_quiets_download_bars_unless_the_user_set_them(monkeypatch):
    import os

    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")  # the user's own choice
    CliRunner().invoke(main, ["--version"])
    CliRunner().invoke(main, ["promote", "--help"])
    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"


def test_libraries_info_notes_are_shown_only_with_verbose():
    import logging

    faiss_loader = logging.getLogger("faiss.loader")
    try:
        CliRunner().invoke(main, ["promote", "--help"])
        # faiss's loader logs "Could not load library with AVX2 support due to: ModuleNotFoundError(...)"
        assert not faiss_loader.isEnabledFor(logging.INFO)
        assert faiss_loader.isEnabledFor(logging.WARNING)
        assert not logging.getLogger("mlflow.system_metrics.system_metrics_monitor").isEnabledFor(logging.INFO)
        # "Validating input example against model signature" on every logged model
        assert not logging.getLogger("mlflow.pyfunc").isEnabledFor(logging.INFO)
        assert logging.getLogger("mlflow.pyfunc").isEnabledFor(logging.WARNING)
        assert not logging.getLogger("mlflow.store.db.utils").isEnabledFor(logging.INFO)
        CliRunner().invoke(main, ["-v", "promote", "--help"])
        assert faiss_loader.level == logging.NOTSET  # with --verbose it follows the root logger again
    finally:
        for name in ("faiss.loader", "mlflow.system_metrics", "mlflow.pyfunc", "mlflow.store.db.utils",
                     "alembic.runtime.migration"):
            logging.getLogger(name).setLevel(logging.NOTSET)


def option_names(command: click.Command) -> set[str]:
    return {parameter.name for parameter in command.params if isinstance(parameter, click.Option)}


def test_tune_help_lists_the_methods_and_each_method_only_its_own_options():
    import dataclasses

    from defectlab.methods import all_methods
    from defectlab.tuning.config import TuneConfig

    tune_help = CliRunner().invoke(main, ["tune", "--help"]).output
    assert "--latent-dim" not in tune_help and "--coreset-ratio" not in tune_help
    tune = main.get_command(click.Context(main), "tune")
    study_options = {field.name for field in dataclasses.fields(TuneConfig)} - {"method"}
    for method in all_methods():
        assert method.name in tune_help.split("Commands:")[1]
        own_training = {field.name for field in dataclasses.fields(method.config_class)} - {"register_as", "repeats"}
        assert option_names(tune.get_command(click.Context(tune), method.name)) == study_options | own_training
    patch_help = CliRunner().invoke(main, ["tune", "patch", "--help"]).output
    assert "--coreset-ratio" in patch_help and "--latent-dim" not in patch_help


def test_tune_refuses_another_methods_option_and_options_before_the_method():
    result = CliRunner().invoke(main, ["tune", "metric", "--latent-dim", "8"])
    assert result.exit_code == 2 and "--latent-dim is an option of tune ssim, not of tune metric\n" in result.output
    result = CliRunner().invoke(main, ["tune", "metric", "--no-such-thing", "8"])
    assert result.exit_code == 2 and "No such option '--no-such-thing'" in result.output
    result = CliRunner().invoke(main, ["tune", "--n-trials", "3", "patch"])
    assert result.exit_code == 2 and "defectlab tune patch --n-trials" in result.output


def test_tune_method_runs_a_study_of_that_method(tmp_path, tiny_dataset_root):
    space = tmp_path / "space.yaml"
    space.write_text("coreset_ratio: {type: float, low: 0.01, high: 0.1}\n")
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    arguments = ["--data-dir", str(tiny_dataset_root), "--search-space", str(space), "--storage", storage]
    result = CliRunner().invoke(main, ["tune", "ssim", *arguments])
    assert result.exit_code == 1 and "unknown parameter 'coreset_ratio' in the search space of SSIMConfig" in result.output
    assert not (tmp_path / "optuna.db").exists()


def test_tensorflows_start_up_chatter_is_left_out_and_anything_else_it_writes_kept():
    from defectlab.console import TENSORFLOW_START_UP_NOISE

    probe = subprocess.run(
        [sys.executable, "-c",
         "import os, sys\n"
         "os.environ['TF_CPP_MIN_LOG_LEVEL'] = '0'\n"
         "from defectlab.console import import_tensorflow_quietly\n"
         "os.write(2, b'before\\n')\n"
         "import_tensorflow_quietly()\n"
         "import tensorflow as tf\n"
         "print(sorted(tf.config.list_physical_devices('CPU'))[0].device_type, file=sys.stderr)\n"],
        capture_output=True, text=True, check=True,
    )
    lines = probe.stderr.splitlines()
    assert lines[0] == "before" and lines[-1] == "CPU"
    assert not [line for line in lines if TENSORFLOW_START_UP_NOISE.search(line)], probe.stderr
    for noise in ("WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
                  "I0000 00:00:1796604425.072787   14592 cudart_stub.cc:31] Could not find cuda drivers on your "
                  "machine, GPU will not be used.",
                  "E0000 00:00:1796604433.246268   14592 cuda_platform.cc:52] failed call to cuInit: INTERNAL"):
        assert TENSORFLOW_START_UP_NOISE.search(noise)
    assert not TENSORFLOW_START_UP_NOISE.search("W0000 some_op.cc:12] a real warning about this run")


def test_the_cuinit_failure_is_kept_where_a_gpu_exists_and_a_crash_still_speaks():
    from defectlab.console import is_start_up_noise

    failure = "E0000 00:00:17.24   14592 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error"
    assert is_start_up_noise(failure, gpu_devices_present=False)
    assert not is_start_up_noise(failure, gpu_devices_present=True)  # a broken driver's only hint
    # A process that dies during the import (TensorFlow aborts on a CPU it cannot run on) still
    # shows what it wrote: the lines are forwarded as they come, not after the import.
    probe = subprocess.run(
        [sys.executable, "-c",
         "import os, sys, types\n"
         "from defectlab.console import import_tensorflow_quietly\n"
         "dying = types.ModuleType('tensorflow')\n"
         "class Dying:\n"
         "    def __getattr__(self, name):\n"
         "        os.write(2, b'F0000 cpu_check.cc:1] this CPU lacks AVX\\n')\n"
         "        os._exit(134)\n"
         "dying.config = Dying()\n"
         "import builtins\n"
         "real_import = builtins.__import__\n"
         "builtins.__import__ = lambda name, *a, **k: dying if name == 'tensorflow' else real_import(name, *a, **k)\n"
         "import_tensorflow_quietly()\n"],
        capture_output=True, text=True,
    )
    assert probe.returncode == 134 and "this CPU lacks AVX" in probe.stderr

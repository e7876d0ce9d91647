"""The benchmark and example scripts only import names the library still has.

They are run by hand (benchmarks) or in the slow tier (examples), so a renamed
or moved function would otherwise break them silently. This reads each
script's ``from defectlab... import name`` lines and resolves every name,
without running the script.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted([*ROOT.glob("benchmarks/*.py"), *ROOT.glob("examples/*.py")])


def defectlab_imports(script: Path) -> list[tuple[str, str]]:
    """``(module, name)`` of every ``from defectlab... import name`` in ``script``."""
    tree = ast.parse(script.read_text(), filename=str(script))
    return [
        (node.module, alias.name)
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "defectlab"
        for alias in node.names
    ]


def unresolved(module_name: str, name: str) -> bool:
    module = importlib.import_module(module_name)
    if hasattr(module, name):
        return False
    try:  # `from package import submodule`
        importlib.import_module(f"{module_name}.{name}")
    except ModuleNotFoundError:
        return True
    return False


def test_scripts_are_found():
    assert any(script.parent.name == "benchmarks" for script in SCRIPTS)
    assert any(script.parent.name == "examples" for script in SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda script: f"{script.parent.name}/{script.name}")
def test_script_imports_resolve(script):
    missing = [f"{module}.{name}" for module, name in defectlab_imports(script) if unresolved(module, name)]
    assert not missing, f"{script.name} imports names the library no longer has: {missing}"


def test_a_missing_name_is_reported(tmp_path):
    script = tmp_path / "stale.py"
    script.write_text("from defectlab.serving.detector import no_such_function\n")
    ((module, name),) = defectlab_imports(script)
    assert unresolved(module, name)
    assert not unresolved("defectlab.serving.bundle", "write_bundle")

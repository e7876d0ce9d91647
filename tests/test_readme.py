"""The README's code map names every package of the tree, and every path it names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def code_map() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split("## Where things live", 1)[1].split("```", 2)[1]


def test_every_path_in_the_code_map_exists():
    current_parent = None
    for line in code_map().strip().splitlines():
        name = line.split()[0]
        indent = len(line) - len(line.lstrip())
        if indent == 0:
            path = ROOT / name
        elif indent == 2:
            path = ROOT / "src" / "defectlab" / name
            current_parent = path if name.endswith("/") else current_parent
        else:
            path = current_parent / name
        assert path.exists(), f"the README's code map names {path.relative_to(ROOT)}, which does not exist"


def test_every_package_of_the_tree_is_in_the_code_map():
    named = set(re.findall(r"^\s+([a-z_]+)/", code_map(), re.M))
    packages = {path.parent.name for path in (ROOT / "src" / "defectlab").glob("*/**/__init__.py")}
    missing = packages - named
    assert not missing, f"packages missing from the README's code map: {sorted(missing)}"

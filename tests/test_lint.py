"""The code passes the linter configured in pyproject.toml (ruff), as CI checks it."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_passes():
    ruff = shutil.which("ruff") or shutil.which("ruff", path=str(Path(sys.executable).parent))
    if ruff is None:
        pytest.skip("ruff is not installed (pip install 'inik[test]' installs it)")
    done = subprocess.run([ruff, "check", "--no-cache", str(ROOT)], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]


def test_no_module_imports_another_modules_private_name():
    """A module's _names are its own: another module that needs one gets a public name.
    (The package's private extension modules, _ext and _C, are imported by name.)"""
    import ast
    found = []
    for path in sorted((ROOT / "inik").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("inik")):
                found += [f"{path.relative_to(ROOT)}:{node.lineno} {a.name}" for a in node.names
                          if a.name.startswith("_") and a.name not in ("_ext", "_C", "__version__")]
    assert not found, found

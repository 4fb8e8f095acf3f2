"""setup.py: a wheel carries the package, the Triton kernels (as inik.kernels) and the
default weights; a failed build of the extension installs without it (and says so)
unless INIK_REQUIRE_EXTENSION=1 makes it an error."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def source_tree(tmp_path_factory):
    """A copy of what a build reads (without this checkout's build folders)."""
    dst = tmp_path_factory.mktemp("src")
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, dst / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.pyc")
    for name in ("inik", "kernels", "csrc"):
        shutil.copytree(ROOT / name, dst / name, ignore=ignore)
    return dst


def _wheel(src: Path, out: Path, **env):
    run_env = {k: v for k, v in os.environ.items() if k not in ("INIK_NO_EXTENSION", "INIK_REQUIRE_EXTENSION")}
    run_env.update(CXX="false", **env)  # a compiler that always fails
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-build-isolation", "--no-deps",
                           "--no-cache-dir", "-w", str(out), str(src)],
                          capture_output=True, text=True, env=run_env, timeout=600)
    return proc, sorted(out.glob("*.whl"))


def test_failed_extension_build_installs_without_it(source_tree, tmp_path):
    import sysconfig

    pytest.importorskip("torch.utils.cpp_extension")
    # binaries an earlier build left (build folder; source tree, as an editable install has it)
    name = "_C" + sysconfig.get_config_var("EXT_SUFFIX")
    stale = [source_tree / "inik" / name]
    stale += [source_tree / "build" / f"lib.{sysconfig.get_platform()}-cpython-{v}" / "inik" / name
              for v in (f"{sys.version_info.major}{sys.version_info.minor}",)]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"an old build")
    proc, wheels = _wheel(source_tree, tmp_path / "a")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and len(wheels) == 1, log[-3000:]
    assert "WARNING: building inik._C failed" in log and "INIK_REQUIRE_EXTENSION=1" in log
    assert not any(path.exists() for path in stale) and "left by an earlier build" in log
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert not any(n.startswith("inik/_C") for n in names)
    for needed in ("inik/__init__.py", "inik/kernels/ifm_triton.py", "inik/weights/default.safetensors",
                   "inik/ops/ifm.py"):
        assert needed in names, needed
    assert not any(n.startswith("kernels/") for n in names)  # no top-level 'kernels' package
    proc, wheels = _wheel(source_tree, tmp_path / "b", INIK_REQUIRE_EXTENSION="1")
    assert proc.returncode != 0 and not wheels


def test_the_version_has_one_source():
    """pyproject.toml's version is inik.__version__, read from the source: the two cannot disagree."""
    import inik
    done = subprocess.run([sys.executable, "setup.py", "--version"], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "INIK_NO_EXTENSION": "1"}, timeout=300)
    assert done.stdout.strip().splitlines()[-1] == inik.__version__, done.stdout + done.stderr
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" in project["project"]["dynamic"] and "version" not in project["project"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "inik.__version__"}
    assert (ROOT / "LICENSE").is_file()

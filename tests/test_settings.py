"""inik.settings: one declaration per INIK_* variable, parsed one way, documented as declared."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from inik import settings
from inik.cli import main

ROOT = Path(__file__).resolve().parents[1]
# C++ macros of csrc/ that share the prefix; they are not settings
MACROS = {"INIK_NO_CLONES"}


def test_the_docs_tables_are_the_declared_settings():
    doc = (ROOT / "docs" / "configuration.md").read_text()
    for when in ("run", "build", "test"):
        assert settings.markdown_table(when) in doc, f"docs/configuration.md: the {when} table differs"
    documented = set(re.findall(r"^\| `(INIK_[A-Z_]+)`", doc, re.M))
    assert documented == set(settings.SETTINGS)


def test_every_variable_the_code_names_is_declared():
    """Python code names only declared settings, reads none of them but through
    inik.settings, and the C++ sources read no environment at all."""
    for path in [*ROOT.glob("inik/**/*.py"), *ROOT.glob("kernels/*.py"), *ROOT.glob("tests/**/*.py"),
                 *ROOT.glob("benchmarks/*.py"), ROOT / "setup.py"]:
        if path.name == "test_settings.py":  # names undeclared variables on purpose
            continue
        text = path.read_text()
        for name in re.findall(r"\bINIK_[A-Z][A-Z0-9_]*", text):
            assert name in settings.SETTINGS or name in MACROS, f"{path.relative_to(ROOT)}: {name} is not declared"
        if path.name != "settings.py":
            assert not re.search(r"environ(\.get)?[\[(]\s*[\"']INIK_", text), f"{path.relative_to(ROOT)} reads INIK_*"
    for path in ROOT.glob("csrc/*"):
        assert "getenv" not in path.read_text(), f"{path.relative_to(ROOT)} reads the environment"


@pytest.mark.parametrize("raw,value", [("1", True), ("TRUE", True), (" on ", True), ("Yes", True),
                                       ("0", False), ("false", False), ("OFF", False), ("no", False),
                                       ("", False)])
def test_switches_parse_one_way(monkeypatch, raw, value):
    monkeypatch.setenv("INIK_NO_EXTENSION", raw)
    assert settings.get("INIK_NO_EXTENSION") is value


@pytest.mark.parametrize("name,raw,expected", [
    ("INIK_NO_EXTENSION", "maybe", "INIK_NO_EXTENSION=maybe: expected 1/true/on/yes or 0/false/off/no"),
    ("INIK_WINOGRAD", "sometimes", "INIK_WINOGRAD=sometimes: expected auto, 1/true"),
    ("INIK_WINOGRAD_TILE", "5", "INIK_WINOGRAD_TILE=5: expected 4 or 6"),
    ("INIK_CPU_ISA", "sse9", "INIK_CPU_ISA=sse9: expected avx512_bf16, avx512, avx2 or generic"),
    ("INIK_MAX_PIXELS", "-1", "INIK_MAX_PIXELS=-1: expected a whole number"),
    ("INIK_MAX_PIXELS", "1e6", "INIK_MAX_PIXELS=1e6: expected a whole number"),
    ("INIK_MALLOC", "jemalloc", "INIK_MALLOC=jemalloc: expected system or keep"),
])
def test_a_bad_value_is_one_line_naming_the_variable(monkeypatch, name, raw, expected):
    monkeypatch.setenv(name, raw)
    with pytest.raises(ValueError) as err:
        settings.get(name)
    assert str(err.value).startswith(expected) and "\n" not in str(err.value)


def test_defaults_and_values(monkeypatch):
    for name, s in settings.SETTINGS.items():
        monkeypatch.delenv(name, raising=False)
        assert settings.get(name) == s.default
    monkeypatch.setenv("INIK_MAX_PIXELS", "0")  # 0 means the default
    assert settings.get("INIK_MAX_PIXELS") == 2**28
    monkeypatch.setenv("INIK_MAX_PIXELS", "1000")
    assert settings.get("INIK_MAX_PIXELS") == 1000
    monkeypatch.setenv("INIK_WINOGRAD", "Auto")
    assert settings.get("INIK_WINOGRAD") is None
    monkeypatch.setenv("INIK_CPU_ISA", "AVX2")
    assert settings.get("INIK_CPU_ISA") == "avx2"
    with pytest.raises(KeyError):
        settings.get("INIK_NOT_A_SETTING")


def test_the_build_reads_the_settings_without_torch():
    """setup.py loads inik/settings.py by path, before torch or the package is imported."""
    code = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('s', sys.argv[1]); "
            "m = importlib.util.module_from_spec(spec); sys.modules['s'] = m; spec.loader.exec_module(m); "
            "print(m.get('INIK_BUILD_CUDA'), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT / "inik" / "settings.py")], capture_output=True,
                         text=True, timeout=60, env={"INIK_BUILD_CUDA": "0", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0 and out.stdout.split() == ["False", "False"], out.stderr


def test_info_warns_about_an_unknown_variable(monkeypatch, capsys):
    monkeypatch.setenv("INIK_WINOGARD", "0")  # a typo
    assert settings.unknown() == ["INIK_WINOGARD"]
    assert main(["info"]) == 0
    assert "warning: inik reads no variable named INIK_WINOGARD" in capsys.readouterr().out


@pytest.mark.parametrize("name,value", [("INIK_MALLOC", "jemalloc"), ("INIK_MAX_PIXELS", "lots")])
def test_the_command_line_names_a_bad_setting_in_one_line(monkeypatch, capsys, tmp_path, name, value):
    """A bad value is bad usage: one line naming the variable, exit status 2, no traceback."""
    monkeypatch.setenv(name, value)
    from inik.data.io import write_image
    write_image(tmp_path / "a.png", __import__("numpy").zeros((8, 8, 3), "uint8"))
    assert main(["deblur", str(tmp_path / "a.png"), "-o", str(tmp_path / "b.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"inik deblur: {name}={value}: expected") and "\n" not in err

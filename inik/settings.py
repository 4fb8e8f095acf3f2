"""Every ``INIK_*`` environment variable inik reads, declared once and parsed one way.

``docs/configuration.md`` shows :data:`SETTINGS` as tables (:func:`markdown_table`;
a test checks that they agree). Run-time settings are read on each call, so a
setting can change inside one process. This module imports only the standard
library: ``setup.py`` reads the build settings from it before torch is imported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

TRUE = ("1", "true", "on", "yes")
FALSE = ("0", "false", "off", "no")


def _switch(value: str) -> bool:
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise ValueError(f"{'/'.join(TRUE)} or {'/'.join(FALSE)}")


def _auto_switch(value: str) -> bool | None:
    """A switch that may also be ``auto`` (None: the code decides)."""
    if value == "auto":
        return None
    try:
        return _switch(value)
    except ValueError as e:
        raise ValueError(f"auto, {e}") from None


def _whole(value: str) -> int:
    if not value.isdigit():
        raise ValueError("a whole number (0 or more)")
    return int(value)


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in choices:
            raise ValueError(", ".join(choices[:-1]) + " or " + choices[-1])
        return value
    return parse


def _name(value: str) -> str:
    """Any name (checked where it is used)."""
    return value


class SettingError(ValueError):
    """A variable's value is not one it takes; the message is one line naming it."""


@dataclass(frozen=True)
class Setting:
    """One environment variable: how to parse it, its value when unset (or empty)."""

    name: str
    parse: Callable[[str], object]  # raises ValueError(what it expects)
    default: object
    doc: str  # what it does
    values: str  # what it takes
    default_doc: str  # what happens when it is unset
    when: str = "run"  # "run", "build" or "test"
    zero_is_default: bool = False  # a whole number whose 0 means the default

    def get(self):
        """The parsed value now; a ValueError naming the variable for a bad value."""
        raw = os.environ.get(self.name, "").strip()
        if not raw:
            return self.default
        try:
            value = self.parse(raw if self.parse is _name else raw.lower())
        except ValueError as e:
            raise SettingError(f"{self.name}={raw}: expected {e}") from None
        return self.default if self.zero_is_default and value == 0 else value

    def get_or_default(self):
        """The parsed value, or the default for a bad value (for messages about the
        setting itself, which must not fail on it)."""
        try:
            return self.get()
        except SettingError:
            return self.default


SETTINGS: dict[str, Setting] = {s.name: s for s in (
    # ---- at run time
    Setting("INIK_IFM_BACKEND", _name, "auto",
            "forces the IFM backend wherever `backend=\"auto\"` (the model, `inik.ops.ifm`)",
            "a backend name: `reference`, `unfused`, `cpp`, `cuda`, `triton`, `triton2`, or one registered later",
            "`auto`: the first available in the registry's order for the device (`inik info` lists it). "
            "An unknown name is a ValueError naming the variable; a backend that cannot run on the device "
            "is a RuntimeError saying why"),
    Setting("INIK_WINOGRAD", _auto_switch, None,
            "whether the model's CPU 3x3 convolutions may run as Winograd convolutions",
            "`1`/`0` (or true/false, on/off, yes/no), `auto`",
            "`auto`: on for x86 CPUs with AVX2 or AVX-512 (as torch reports them when "
            "`inik.ops.winograd` is imported), off elsewhere (e.g. ARM)"),
    Setting("INIK_WINOGRAD_TILE", _choice("4", "6"), None,
            "fixes the Winograd tile of `conv3x3(tile=0)`, for tests and timings",
            "`4` (F(4x4, 3x3)) or `6` (F(6x6, 3x3))",
            "F(6x6) for images of at least 128x128 pixels, F(4x4) below"),
    Setting("INIK_CONV_WEIGHT_GRAD", _choice("winograd", "onednn"), "",
            "how CPU training computes the float32 weight gradient of the Winograd convolutions, for tests "
            "and timings",
            "`winograd` (the weight-gradient op, in F(4x4, 3x3)'s domain), `onednn`",
            "`winograd`; a backward with `create_graph=True` and bfloat16 take oneDNN's"),
    Setting("INIK_CPU_ISA", _choice("avx512_bf16", "avx512", "avx2", "generic"), "",
            "asks the native CPU kernels for a lesser instruction set, for tests and timings; "
            "`avx512` keeps the float32 GEMM on bfloat16 input",
            "`avx512_bf16`, `avx512`, `avx2`, `generic`",
            "the best the CPU and the build support; asking for more is an error naming the variable "
            "(`inik info` reports the choice)"),
    Setting("INIK_MAX_PIXELS", _whole, 2**28,
            "the largest image read, in pixels, checked from the file's header before anything is "
            "allocated, in every format and path",
            "a whole number of pixels; `0` means the default",
            "268435456 (2**28)", zero_is_default=True),
    Setting("INIK_MALLOC", _choice("system", "keep"), "keep",
            "`system` leaves glibc's malloc as it is: the command line and the model's CPU forward then do "
            "not make it keep freed memory (`inik.runtime.keep_freed_memory`)",
            "`system`, `keep`",
            "`keep`: the command line and the model's first CPU forward apply the setting on Linux with "
            "glibc"),
    Setting("INIK_NO_EXTENSION", _switch, False,
            "says the extension was left out on purpose: the command line's \"running without the compiled "
            "kernels\" note is not printed, error messages say so, and the tests that need `inik._C` skip "
            "instead of failing. At build time: builds no extension",
            "`1`/`0`",
            "a missing `inik._C` is noted by the command line and fails its tests; the extension is built "
            "when torch is importable at build time"),
    # ---- at build time (pip install --no-build-isolation -e .)
    Setting("INIK_REQUIRE_EXTENSION", _switch, False,
            "a failed build of `inik._C` fails the install",
            "`1`/`0`",
            "a failed build (no compiler, a broken toolchain) is reported (`pip install -v` shows it), "
            "removes an `inik._C` left by an earlier build, and installs without the extension",
            when="build"),
    Setting("INIK_BUILD_CUDA", _auto_switch, None,
            "`1` builds the CUDA kernels even without a visible GPU (and fails if they cannot be built: "
            "torch without CUDA, no CUDA toolkit); `0` never builds them",
            "`1`/`0`, `auto`",
            "`auto`: built when torch has CUDA, a CUDA toolkit is found and a GPU is visible",
            when="build"),
    Setting("INIK_CPU_NATIVE", _switch, False,
            "compiles the CPU kernels with `-march=native`: for the build machine's CPU only, not portable",
            "`1`/`0`",
            "one binary carries x86-64-v4 (AVX-512), x86-64-v3 (AVX2) and baseline copies of the hot loops, "
            "picked at each call (GCC 11 or later on x86-64 Linux, GCC 12 for the AVX512-BF16 copy; other compilers "
            "build one generic copy)",
            when="build"),
    # ---- tests
    Setting("INIK_NVCC_TIMEOUT", _whole, 600,
            "seconds allowed for compiling the CUDA sources with `nvcc -c` (`tests/test_cuda_compile.py`)",
            "a whole number of seconds",
            "600",
            when="test"),
)}


def get(name: str):
    """The parsed value of setting ``name`` (a KeyError for a name not declared here)."""
    return SETTINGS[name].get()


def unknown(environ=None) -> list[str]:
    """``INIK_*`` variables set in the environment that inik does not read (likely typos)."""
    environ = os.environ if environ is None else environ
    return sorted(k for k in environ if k.startswith("INIK_") and k not in SETTINGS)


def markdown_table(when: str) -> str:
    """The settings read ``when`` ("run", "build", "test") as the table in docs/configuration.md."""
    rows = ["| variable | what it does | values | default (unset) |", "|---|---|---|---|"]
    rows += [f"| `{s.name}` | {s.doc} | {s.values} | {s.default_doc} |" for s in SETTINGS.values() if s.when == when]
    return "\n".join(rows)

"""The CPU sources of inik._C with the compilers the package supports besides the one
that built it: GCC 11 (the oldest with the per-instruction-set kernels: AVX2 and
AVX-512 without the AVX512-BF16 GEMM) and a cross compiler for aarch64 (ARM64: the
generic kernels at NEON's width, no x86 code). Compile-only, like the nvcc check;
each compiler is skipped where it is not installed (Debian: ``g++-11``,
``g++-aarch64-linux-gnu``).

The IFM kernels also run outside torch (``tests/ifm_cpu_standalone.cpp``: forward
and backward against a scalar reference): built with this machine's C++ compiler at
each vector width it can run, and for aarch64, run under ``qemu-aarch64`` (Debian:
``qemu-user``), where both are installed."""

import platform
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
SOURCES = ("ifm_cpu.cpp", "lstm_cpu.cpp", "winograd_cpu.cpp")

# compiler -> (symbols its objects must define, symbols they must not)
EXPECT = {
    "g++-11": ({"forward_rows_avx2", "forward_rows_avx512", "forward_rows_generic", "forward_avx2",
                "items_avx2", "items_avx512"}, {"items_avx512_bf16"}),
    "aarch64-linux-gnu-g++": ({"forward_rows_generic", "forward_generic", "items_generic"},
                              {"forward_rows_avx2", "items_avx512", "forward_avx512"}),
}


@pytest.mark.parametrize("compiler", sorted(EXPECT))
def test_cpu_sources_compile(compiler, tmp_path):
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} not installed")
    torch_ext = pytest.importorskip("torch.utils.cpp_extension")
    includes = [f"-I{p}" for p in torch_ext.include_paths()] + [f"-I{sysconfig.get_paths()['include']}",
                                                                 f"-I{CSRC}"]
    names = ""
    for src in SOURCES:  # the flags setup.py passes (no -march: nothing x86-only on ARM)
        obj = tmp_path / (src + ".o")
        cmd = [compiler, "-std=c++20", "-O1", "-fPIC", "-fopenmp", "-Wno-psabi", *includes, "-c", str(CSRC / src),
               "-o", str(obj)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr[-4000:]}"
        names += subprocess.run(["nm", "-C", str(obj)], capture_output=True, text=True, timeout=60).stdout
    defined = {line.split(" ", 2)[-1] for line in names.splitlines() if " T " in line or " W " in line}
    must, must_not = EXPECT[compiler]
    def built(name):
        return any(f"::{name}(" in d or f"::{name}<" in d for d in defined)

    assert all(built(name) for name in must), f"{compiler}: missing {[n for n in must if not built(n)]}"
    assert not any(built(name) for name in must_not), f"{compiler}: built {[n for n in must_not if built(n)]}"


def _cpu_flags():
    try:
        return Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return []


# vector widths of the standalone IFM check on this machine: compiler flags, and the CPU flag it needs
WIDTHS = {"16 bytes (baseline, NEON's width)": ([], None), "32 bytes (AVX2)": (["-mavx2", "-mfma"], "avx2"),
          "64 bytes (AVX-512)": (["-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl"], "avx512f")}


def _build_standalone(compiler, flags, out):
    cmd = [compiler, "-std=c++17", "-O2", "-Wno-psabi", *flags, f"-I{CSRC}",
           str(ROOT / "tests" / "ifm_cpu_standalone.cpp"), "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr[-4000:]}"


@pytest.mark.parametrize("width", sorted(WIDTHS))
def test_ifm_kernels_outside_torch(width, tmp_path):
    """The IFM kernel templates on plain arrays match the scalar reference here."""
    flags, cpu_flag = WIDTHS[width]
    if platform.machine() not in ("x86_64", "AMD64") and flags:
        pytest.skip("an x86 width")
    if cpu_flag and cpu_flag not in _cpu_flags():
        pytest.skip(f"this CPU has no {cpu_flag}")
    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        pytest.skip("no C++ compiler")
    _build_standalone(compiler, [*flags, *([f"-DINIK_STANDALONE_BYTES={width.split()[0]}"])], tmp_path / "ifm")
    proc = subprocess.run([str(tmp_path / "ifm")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.startswith("ok "), proc.stdout


def test_ifm_kernels_on_aarch64_under_qemu(tmp_path):
    """The same check built for ARM64 (the generic kernels at NEON's width) and run by qemu."""
    compiler, qemu = shutil.which("aarch64-linux-gnu-g++"), shutil.which("qemu-aarch64")
    if compiler is None or qemu is None:
        pytest.skip("needs aarch64-linux-gnu-g++ and qemu-aarch64")
    _build_standalone(compiler, ["-static"], tmp_path / "ifm_arm")
    proc = subprocess.run([qemu, str(tmp_path / "ifm_arm")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.startswith("ok "), proc.stdout + proc.stderr

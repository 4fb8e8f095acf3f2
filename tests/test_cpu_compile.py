"""The CPU sources of inik._C with the compilers the package supports besides the one
that built it: GCC 11 (the oldest with the per-instruction-set kernels: AVX2 and
AVX-512 without the AVX512-BF16 GEMM) and a cross compiler for aarch64 (ARM64: the
generic kernels at NEON's width, no x86 code). Compile-only, like the nvcc check;
each compiler is skipped where it is not installed (Debian: ``g++-11``,
``g++-aarch64-linux-gnu``)."""

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

"""The CUDA sources of inik._C on a machine without a GPU.

* compiled with ``nvcc -c`` for sm_80 and sm_90 whenever nvcc exists, so a syntax
  or template error fails the suite even where the CUDA kernels are not built;
* run on the CPU by tests/ifm_cuda_emulation.cpp (one std::thread per CUDA thread,
  __syncthreads a barrier) against sums from the IFM's definition, so their
  indexing and reductions are tested too. On a GPU, tests/test_ifm_conformance.py
  runs them for real against the reference.
"""

import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

from inik import settings

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"


def _run(cmd, timeout):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++ (C++20) to build the emulation")
def test_cuda_kernels_in_cpu_emulation(tmp_path):
    """Built with AddressSanitizer/UBSan where available, so an out-of-bounds global
    read or write in a kernel fails the test even when the numbers come out right."""
    exe = tmp_path / "ifm_cuda_emulation"
    base = ["g++", "-std=c++20", "-O1", "-g", "-pthread", f"-I{CSRC}",
            str(ROOT / "tests" / "ifm_cuda_emulation.cpp"), "-o", str(exe)]
    rc, log = _run(base + ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"], 300)
    if rc != 0:  # no sanitizer runtime on this machine
        rc, log = _run(base, 300)
    assert rc == 0, f"building the emulation failed:\n{log}"
    rc, log = _run([str(exe)], 300)
    assert rc == 0 and "all checks passed" in log, log


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not found")
def test_cuda_sources_compile_for_sm80_and_sm90(tmp_path):
    torch_ext = pytest.importorskip("torch.utils.cpp_extension")
    includes = [f"-I{p}" for p in torch_ext.include_paths()] + [f"-I{sysconfig.get_paths()['include']}",
                                                                 f"-I{CSRC}"]
    cmd = ["nvcc", "-c", "-std=c++20", "-O1", "--expt-relaxed-constexpr", "-Xcompiler", "-fPIC",
           "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90",
           *includes, str(CSRC / "ifm_cuda.cu"), "-o", str(tmp_path / "ifm_cuda.o")]
    rc, log = _run(cmd, settings.get("INIK_NVCC_TIMEOUT"))
    assert rc == 0, f"nvcc failed:\n{' '.join(cmd)}\n{log}"

"""inik.runtime: the allocator setting the command line and the model's CPU forward apply."""

import subprocess
import sys

import pytest

CHILD = r"""
import ctypes, resource, sys
from inik.runtime import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
libc = ctypes.CDLL("libc.so.6")
libc.posix_memalign.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_size_t]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
faults = []
for _ in range(6):  # a 64 MB buffer, 64-byte aligned as torch's CPU allocator asks, touched and freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    p = ctypes.c_void_p()
    assert libc.posix_memalign(ctypes.byref(p), 64, 64 * 2**20) == 0
    libc.memset(p, 1, 64 * 2**20)
    libc.free(p)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(applied, min(faults[1:]))
"""


def _faults(mode, env=None):
    import os
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **(env or {})}).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc setting (Linux only)")
def test_keep_freed_memory_stops_page_faults():
    # A reused 64 MB buffer costs no new page faults (16,384 pages if fresh). The buffer
    # comes from glibc directly: whether torch's own allocations land where a freed one was
    # depends on what else the heap holds (benchmarks/bench_model.py's fast-system-malloc
    # mode measures the setting on the model); the best of three children counts.
    results = [_faults("keep") for _ in range(3)]
    assert all(applied for applied, _ in results)
    faults = min(f for _, f in results)
    assert faults < 200, [f for _, f in results]
    # Control: glibc's default mmaps and unmaps it, faulting every page again.
    applied, faults = _faults("default")
    assert not applied and faults > 10_000, faults
    # INIK_MALLOC=system opts out.
    applied, faults = _faults("keep", {"INIK_MALLOC": "system"})
    assert not applied and faults > 10_000, faults


MODEL_CHILD = r"""
import torch, inik, inik.runtime
model = inik.INIKNet(width=8, scales=4, atoms=3).eval()
assert not inik.runtime._applied  # building the model changes nothing
with torch.no_grad():
    model(torch.rand(1, 3, 20, 28))
print(inik.runtime._applied)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc setting (Linux only)")
@pytest.mark.parametrize("setting, expected", [(None, "True"), ("system", "False")])
def test_the_models_cpu_forward_applies_the_allocator_setting(setting, expected):
    """model(y) from Python gets the command line's allocator setting (its CPU forwards
    would otherwise pay fresh page faults); INIK_MALLOC=system opts out."""
    import os
    env = {k: v for k, v in os.environ.items() if k != "INIK_MALLOC"}
    if setting:
        env["INIK_MALLOC"] = setting
    out = subprocess.run([sys.executable, "-c", MODEL_CHILD], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == expected

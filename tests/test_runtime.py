"""inik.runtime: the allocator setting the command line and the model's CPU forward apply."""

import subprocess
import sys

import pytest

CHILD = r"""
import ctypes, sys
from inik.runtime import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
libc = ctypes.CDLL("libc.so.6")
if not hasattr(libc, "mallinfo2"):
    print("no-mallinfo2 0 0")
    sys.exit()
class Info(ctypes.Structure):  # struct mallinfo2, glibc >= 2.33
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc.mallinfo2.restype = Info
libc.posix_memalign.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_size_t]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
before = libc.mallinfo2()
p = ctypes.c_void_p()  # a 64 MB buffer, 64-byte aligned as torch's CPU allocator asks
assert libc.posix_memalign(ctypes.byref(p), 64, 64 * 2**20) == 0
libc.memset(p, 1, 64 * 2**20)
during = libc.mallinfo2()
libc.free(p)
after = libc.mallinfo2()
# mmapped chunks while held; free bytes the heap holds after the free
print(applied, during.hblks - before.hblks, after.fordblks)
"""


def _child(mode, env=None):
    import os
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True,
                         env={**os.environ, **(env or {})}).stdout.split()
    if out[0] == "no-mallinfo2":
        pytest.skip("glibc before 2.33 has no mallinfo2 to read its accounting")
    return out[0] == "True", int(out[1]), int(out[2])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc setting (Linux only)")
def test_keep_freed_memory_keeps_a_large_buffer_in_the_heap():
    # glibc's own accounting (mallinfo2), not page-fault counts: whether the kernel faults a
    # reused page again is the kernel's business; benchmarks/bench_model.py's
    # fast-system-malloc mode measures what the setting saves on the model.
    applied, mmapped, kept = _child("keep")
    assert applied and mmapped == 0 and kept >= 64 * 2**20, (applied, mmapped, kept)
    # Control: glibc's default serves it with its own mmap and unmaps it on free.
    applied, mmapped, kept = _child("default")
    assert not applied and mmapped == 1 and kept < 64 * 2**20, (applied, mmapped, kept)
    # INIK_MALLOC=system opts out.
    applied, mmapped, kept = _child("keep", {"INIK_MALLOC": "system"})
    assert not applied and mmapped == 1 and kept < 64 * 2**20, (applied, mmapped, kept)


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

"""inik.runtime: the allocator setting the command line applies."""

import subprocess
import sys

import pytest

CHILD = r"""
import resource, sys, torch
from inik.runtime import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
faults = []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t = torch.ones(64 * 2**20 // 4)   # 64 MB, touched
    del t
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
    # A reused 64 MB buffer costs no new page faults (16,384 pages if fresh). One CI run
    # out of several saw every buffer fresh in one child (not reproduced in 50 runs here),
    # so the best of three children counts; the controls below still fail a no-op setting.
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

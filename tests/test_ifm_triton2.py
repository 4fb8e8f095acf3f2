"""What is specific to the second Triton design (``backend="triton2"``): the packed
coefficient columns and their second dot, atoms read in place, bands of the
image gradient, forced configurations, 64-bit offsets, a deterministic atom
gradient, and the offline kernel report. Forward, gradients, dtypes, strides,
gradcheck, opcheck and torch.compile are checked by tests/test_ifm_conformance.py.

Without a GPU the kernels run under the Triton interpreter on CPU tensors.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton")

from ifm_checks import (  # noqa: E402
    assert_image_grad_nans_as_reference,
    assert_matches_reference,
    case_inputs,
    close,
    run_grads,
)

from inik.ops import backend_unavailable, ifm  # noqa: E402
from inik.ops.ifm import auto_order  # noqa: E402

t2 = pytest.importorskip("inik.kernels.ifm_triton2")

ROOT = Path(__file__).resolve().parents[1]
DEVICE = torch.device("cpu" if t2._INTERPRET or not torch.cuda.is_available() else "cuda")
pytestmark = pytest.mark.skipif(backend_unavailable("triton2", DEVICE) is not None,
                                reason=f"triton2 cannot run on {DEVICE}: {backend_unavailable('triton2', DEVICE)}")
# default dictionary's layout (7 scales 3..15, 10 atoms: 70 coefficients, two pieces) on a tiny image
DEFAULT_DICT = (1, 3, 5, 6, 7, 10, 15, [15, 13, 11, 9, 7, 5, 3])


def _inputs(case, dtype=torch.float32, device=DEVICE):
    return case_inputs(case, dtype, device)


def _assert_matches_reference(xs, support):
    """Output and all four gradients of the triton2 backend against the reference."""
    assert_matches_reference("triton2", xs, support)


def test_runs_when_named_only():
    """Until a GPU has timed it against the first design, "auto" never picks it."""
    assert "triton2" not in auto_order("cuda") and "triton2" not in auto_order("cpu")
    assert t2.triton2_backend().name == "triton2"


@pytest.mark.parametrize("cp,pieces", [(1, (16, 0)), (16, (16, 0)), (17, (16, 16)), (64, (64, 0)),
                                       (70, (64, 16)), (100, (64, 64)), (129, (128, 16))])
def test_coefficient_pieces(cp, pieces):
    """Two powers of two of at least 16 that hold the packed coefficients."""
    p0, p1 = t2._pieces(cp)
    assert (p0, p1) == pieces and p0 + p1 >= cp


def test_default_dictionary_uses_both_pieces():
    """70 coefficients: 64 in the first dot, the last 6 in a second one that only the
    chunks of taps reached by more than 6 scales run; results and gradients as the reference."""
    xs, support = _inputs(DEFAULT_DICT)
    pk = t2._Packing(xs[3], support)
    assert (pk.P0, pk.P1) == (64, 16)
    need = pk.cneed[:pk.KK].cpu()
    assert need.max() == 70 and need.min() == 10 and bool((need[:-1] >= need[1:]).all())
    _assert_matches_reference(xs, support)


def test_atoms_changed_in_place_are_seen():
    """The kernels read the atoms tensor itself on every call: a change in place, even
    one through ``.data`` that no version counter records, changes the result."""
    xs, support = _inputs((1, 2, 5, 6, 3, 4, 5, [5, 3, 1]))
    image, mu, omega, atoms = xs
    before = ifm(image, mu, omega, atoms, support=support, backend="triton2")
    atoms.data.mul_(2.0)
    after = ifm(image, mu, omega, atoms, support=support, backend="triton2")
    close(after, 2.0 * before, torch.float32, "output with doubled atoms")


def test_image_gradient_in_several_bands(monkeypatch):
    """A tiny band budget: bands of K rows, one batch item at a time, the buffer reused."""
    monkeypatch.setattr(t2, "_KBUF_BYTES", 1)
    xs, support = _inputs((2, 2, 13, 4, 2, 3, 5, [5, 3]))
    _assert_matches_reference(xs, support)


def test_image_gradient_keeps_a_nan_where_it_belongs(monkeypatch):
    """Bands of 5 rows, two batch items: a NaN in one pixel's kernel reaches the image
    gradient only at the pixels its window covers, as in the reference (the band
    buffer's rows outside the image are cleared, not left from the band before)."""
    monkeypatch.setattr(t2, "_KBUF_BYTES", 1)
    xs, support = _inputs((2, 1, 13, 4, 2, 3, 5, [5, 3]))
    xs[1][0, 0, 8, 1] = float("nan")
    assert_image_grad_nans_as_reference("triton2", xs, support)


def test_forced_chunk_must_divide_the_taps(monkeypatch):
    monkeypatch.setattr(t2, "_FORCED", {"_bwd2_atoms_kernel": dict(TH=2, TW=8, CH=32, num_warps=4)})
    xs, support = _inputs((1, 1, 4, 4, 1, 2, 3, [3]))  # K=3: 9 taps padded to 16
    with pytest.raises(ValueError, match="CH=32 does not divide the padded tap count 16"):
        run_grads("triton2", xs, support, torch.ones_like(xs[0]))


def test_64bit_offset_path(monkeypatch):
    monkeypatch.setattr(t2, "_off64", lambda *counts: True)
    xs, support = _inputs((2, 3, 5, 7, 3, 4, 5, [5, 3, 1]))
    _assert_matches_reference(xs, support)


def test_forced_launch_configurations(monkeypatch):
    """Other tiles and chunks than the fixed ones (the autotuner's candidates take this path)."""
    monkeypatch.setattr(t2, "_FORCED", {
        "_fwd2_kernel": dict(TH=2, TW=8, CH=32, num_warps=4),
        "_bwd2_coef_kernel": dict(TH=8, TW=2, CH=32, num_warps=4),
        "_bwd2_atoms_kernel": dict(TH=1, TW=16, CH=32, num_warps=4),
        "_bwd2_image_kernel": dict(TH=1, TW=16, CH=32, num_warps=4)})
    xs, support = _inputs((2, 5, 5, 7, 3, 6, 5, [5, 3, 1]))  # 5 channels: two channel blocks
    _assert_matches_reference(xs, support)


def test_atom_gradient_is_deterministic():
    """Fixed partials summed in a fixed order: the same bits on every run."""
    xs, support = _inputs((2, 3, 9, 11, 3, 4, 5, [5, 3, 1]))
    grad_out = torch.randn_like(xs[0])
    first = run_grads("triton2", xs, support, grad_out, needs=(False, False, False, True))[1][3]
    again = run_grads("triton2", xs, support, grad_out, needs=(False, False, False, True))[1][3]
    assert torch.equal(first, again)


# ---------------------------------------------------------------- offline kernel report (no GPU needed)

def _report(*args):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "kernel_report.py"), *args],
                          env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("arch,dtype", [("sm_80", "tf32"), ("sm_80", "fp32"), ("sm_90", "fp32"), ("sm_90", "bf16")])
def test_kernel_report(arch, dtype):
    """Every kernel of both designs compiles for Ampere and Hopper (a syntax or typing
    error in device code fails here); the report gives registers, spills and shared
    memory per kernel and configuration, and the second design does not spill."""
    proc = _report("--arch", arch, "--dtypes", dtype, "--configs", "1", "--json", "--jobs", "2")
    if proc.returncode == 2 and "ptxas" in proc.stderr:
        pytest.skip("Triton's NVIDIA backend (ptxas) is not available")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(proc.stdout)
    assert all(set(r) == {"kernel", "config", "registers", "spill_bytes", "shared_bytes"} for r in rows)
    names = sorted(r["kernel"] for r in rows)
    assert names == sorted(["triton._fwd_kernel", "triton._fwd_kernel(STORE_K)", "triton._bwd_coef_kernel",
                            "triton._bwd_atoms_kernel", "triton._bwd_image_kernel",
                            "triton2._fwd2_kernel", "triton2._fwd2_kernel(STORE_K)", "triton2._bwd2_coef_kernel",
                            "triton2._bwd2_atoms_kernel", "triton2._bwd2_image_kernel"])
    assert all(0 < r["registers"] <= 255 and r["spill_bytes"] >= 0 and r["shared_bytes"] >= 0 for r in rows)
    assert all(dtype in r["config"] and "num_warps=" in r["config"] for r in rows)
    spilling = [f"{r['kernel']} [{r['config']}]: {r['spill_bytes']} B" for r in rows
                if r["kernel"].startswith("triton2.") and r["spill_bytes"]]
    assert not spilling, spilling


@pytest.mark.parametrize("capability,prec,expected", [((8, 0), "ieee", t2._FMA_FWD_CONFIGS),
                                                     ((8, 6), "ieee", t2._FMA_FWD_CONFIGS),
                                                     ((8, 0), "tf32", t2._GPU_CONFIGS),
                                                     ((9, 0), "ieee", t2._GPU_CONFIGS),
                                                     ((10, 0), "ieee", t2._GPU_CONFIGS)])
def test_forward_configurations_per_gpu_and_precision(monkeypatch, capability, prec, expected):
    """With IEEE fp32 dots all but one forward tile spill on sm_80 (not on sm_90): on
    sm_8x the autotuner's pruning offers only that one, and all of them elsewhere;
    kernel_report.py compiles what fwd_configs gives."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    img = torch.zeros(1)
    kept = t2._prune_fwd(list(t2._GPU_CONFIGS), {"img": img}, PREC=prec)
    assert [t2._config_key(c) for c in kept] == [t2._config_key(c) for c in expected]
    assert t2.fwd_configs(10 * capability[0] + capability[1], prec) == expected
    assert set(map(t2._config_key, t2._FMA_FWD_CONFIGS)) < set(map(t2._config_key, t2._GPU_CONFIGS))


def test_kernel_report_rejects_bad_arguments():
    proc = _report("--arch", "sm_70")
    assert proc.returncode == 2 and "sm_80 or later" in proc.stderr
    proc = _report("--dtypes", "fp8")
    assert proc.returncode == 2 and "--dtypes takes" in proc.stderr

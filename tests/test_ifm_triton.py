"""What is specific to the Triton IFM backend: where it can run, its host code
(in-place reads of row-contiguous views, band buffers, 64-bit offsets, forced
launch configurations, the dense forward) and its kernels compiled for
sm_80/sm_90 without a GPU. Forward, gradients, dtypes, strides, gradcheck,
opcheck and torch.compile are checked by tests/test_ifm_conformance.py.

Without a GPU the kernels run under the Triton interpreter on CPU tensors
(tests/conftest.py sets TRITON_INTERPRET=1), on tiny shapes.
"""

import pytest
import torch

triton = pytest.importorskip("triton")

from ifm_checks import (  # noqa: E402
    assert_image_grad_nans_as_reference,
    assert_matches_reference,
    case_inputs,
)

from inik.ops import available_backends, backend_unavailable, ifm  # noqa: E402

ifm_triton = pytest.importorskip("inik.kernels.ifm_triton")

DEVICE = torch.device("cpu" if ifm_triton._INTERPRET or not torch.cuda.is_available() else "cuda")
pytestmark = pytest.mark.skipif(backend_unavailable("triton", DEVICE) is not None,
                                reason=f"triton backend cannot run on {DEVICE}: "
                                       f"{backend_unavailable('triton', DEVICE)}")


def _inputs(case, dtype=torch.float32, device=DEVICE):
    return case_inputs(case, dtype, device)


def _assert_matches_reference(xs, support):
    """Output and all four gradients of the triton backend against the reference."""
    assert_matches_reference("triton", xs, support)


def test_backend_registered_and_available():
    assert "triton" in available_backends(DEVICE)
    be = ifm_triton.triton_backend()
    assert be.name == "triton" and be.unavailable(DEVICE) is None
    if ifm_triton._INTERPRET:
        assert "TRITON_INTERPRET" in be.unavailable(torch.device("cuda"))
    assert be.unavailable(torch.device("meta")) is not None


@pytest.mark.parametrize("triton_version, numpy_version, usable", [
    ("3.6.0", "2.4.6", False), ("3.6.0", "2.3.5", True), ("3.7.1", "2.4.6", True), ("3.8.0", "2.5.0", True)])
def test_interpreter_versions_that_cannot_run_the_kernels(monkeypatch, triton_version, numpy_version, usable):
    """Triton 3.6's interpreter cannot take NumPy 2.4 (kernels failed mid-launch): refused
    with the versions named. Checked with Triton 3.6.0 installed beside NumPy 2.4.6 and 2.3.5."""
    import numpy

    monkeypatch.setattr(ifm_triton.triton, "__version__", triton_version)
    monkeypatch.setattr(numpy, "__version__", numpy_version)
    ifm_triton._interpreter_unusable.cache_clear()
    try:
        reason = ifm_triton._interpreter_unusable()
    finally:
        ifm_triton._interpreter_unusable.cache_clear()
    assert (reason is None) == usable
    if not usable:
        assert triton_version in reason and numpy_version in reason


def test_row_contiguous_views_are_read_in_place():
    """Row-contiguous views of mu and omega (a channel slice, a batch expanded with
    stride 0) go to the kernels without a copy; other layouts are copied first (the
    conformance suite checks the results and gradients of both)."""
    b, h, w, r, n = 2, 5, 6, 3, 2
    views = (torch.randn(b, r + 1, h, w)[:, 1:], torch.randn(1, n, h, w).expand(b, n, h, w))
    assert not any(x.is_contiguous() for x in views)
    assert all(v is x for v, x in zip(ifm_triton._rows(*views), views))
    transposed = torch.randn(b, n, w, h).transpose(2, 3)
    assert ifm_triton._rows(transposed)[0].is_contiguous()


def test_gradients_in_several_bands(monkeypatch):
    """A tiny band budget forces the per-band buffers - the image gradient's kernels
    with their halo, the atom gradient's dk - to be reused, one band after another."""
    monkeypatch.setattr(ifm_triton, "_KBUF_BYTES", 1)
    case = (2, 2, 13, 4, 2, 3, 5, [5, 3])  # image gradient: bands of K=5 rows (5 + 5 + 3); dk: 1 row
    xs, support = _inputs(case)
    _assert_matches_reference(xs, support)


def test_image_gradient_keeps_a_nan_where_it_belongs(monkeypatch):
    """Bands of 5 rows: a NaN in one pixel's kernel reaches the image gradient only at
    the pixels its window covers, as in the reference (the last band's rows below the
    image are cleared, not left from the band before)."""
    monkeypatch.setattr(ifm_triton, "_KBUF_BYTES", 1)
    xs, support = _inputs((2, 1, 13, 4, 2, 3, 5, [5, 3]))
    xs[1][0, 0, 8, 1] = float("nan")
    assert_image_grad_nans_as_reference("triton", xs, support)


@pytest.mark.parametrize("backend", ["triton", "triton2"])
def test_batches_beyond_the_grid_limit_run_in_chunks(monkeypatch, backend):
    """The kernels put the batch on grid axis 1 (at most 65535 on CUDA): larger batches run
    in chunks, with the atoms' gradient summed over them (a limit of 2 here, batch 5)."""
    if backend_unavailable(backend, DEVICE) is not None:
        pytest.skip(backend_unavailable(backend, DEVICE))
    import importlib

    from inik.ops import Backend
    registry = importlib.import_module("inik.ops.ifm")
    registered = registry._load(backend)
    monkeypatch.setattr(ifm_triton, "MAX_GRID_BATCH", 2)
    seen = []

    def record(fn):
        return lambda grad_or_image, *a: seen.append(grad_or_image.shape[0]) or fn(grad_or_image, *a)

    inner = (registered.forward.__wrapped__, registered.backward.__wrapped__)  # what batch_chunked wraps
    monkeypatch.setitem(registry._LOADED, backend, Backend(
        backend, *ifm_triton.batch_chunked(*map(record, inner)), registered.unavailable))
    xs, support = _inputs((5, 2, 6, 7, 3, 2, 5, [5, 3, 1]))
    assert_matches_reference(backend, xs, support)
    assert seen[:3] == [2, 2, 1] and seen[3:] == [2, 2, 1] * (len(seen) // 3 - 1), seen


def test_64bit_offset_path(monkeypatch):
    """The int64 offset variant (chosen when a buffer passes 2**31 elements, which
    the interpreter cannot reach) computes the same numbers."""
    monkeypatch.setattr(ifm_triton, "_off64", lambda *counts: True)
    xs, support = _inputs((2, 3, 5, 7, 3, 4, 5, [5, 3, 1]))
    _assert_matches_reference(xs, support)


@pytest.mark.parametrize("dense", [False, True], ids=["per_scale_dots", "dense_dot"])
def test_forced_launch_configurations(monkeypatch, dense):
    """Other tile shapes, chunk widths and GEMM blocks than the fixed ones (the
    sweep's and the autotuner's candidates take this path) give the same numbers;
    so does the forward's dense variant (one dot over all scales per chunk), which
    also synthesises the kernels the image gradient reads."""
    monkeypatch.setattr(ifm_triton, "_FORCED", {
        "_fwd_kernel": dict(TH=2, TW=8, CH=32, DENSE=dense, num_warps=4),
        "_bwd_coef_kernel": dict(TH=8, TW=2, CH=32, num_warps=4),
        "_bwd_image_kernel": dict(TH=1, TW=16, CH=32, num_warps=4),
        "_bwd_atoms_kernel": dict(BK=32, CHN=32, num_warps=4)})
    xs, support = _inputs((2, 3, 5, 7, 3, 4, 5, [5, 3, 1]))  # K=5: 25 taps padded to 32
    _assert_matches_reference(xs, support)


def test_gradcheck_dense_forward(monkeypatch):
    """The forward's dense variant (one dot over all scales per chunk) also
    synthesises the kernels the image gradient reads: its gradients, in float64."""
    monkeypatch.setattr(ifm_triton, "_FORCED", {"_fwd_kernel": dict(TH=4, TW=4, CH=16, DENSE=True)})
    xs, support = _inputs((1, 2, 4, 5, 3, 2, 5, [1, 3, 5]), torch.float64)
    xs = [x.requires_grad_() for x in xs]
    assert torch.autograd.gradcheck(lambda *a: ifm(*a, support=support, backend="triton"), xs, fast_mode=True)


def test_large_image_64bit_offsets():
    if DEVICE.type != "cuda":
        pytest.skip("needs a GPU: B*C*H*W above 2**31 is far too slow under the interpreter")
    if torch.cuda.get_device_properties(DEVICE).total_memory < 40 * 2**30:
        pytest.skip("needs a GPU with 40 GiB")
    # B*C*H*W = 2.17e9 > 2**31: the last pixel lies beyond the int32 range
    b, c, h, w = 2, 3, 19000, 19000
    image = torch.zeros(b, c, h, w, device=DEVICE)
    image[-1, -1, -1, -1] = 1.0
    mu = torch.ones(b, 1, h, w, device=DEVICE)
    omega = torch.ones(b, 1, h, w, device=DEVICE)
    atoms = torch.zeros(1, 1, 3, 3, device=DEVICE)
    atoms[0, 0, 1, 1] = 2.0
    out = ifm(image, mu, omega, atoms, backend="triton")
    assert out[-1, -1, -1, -1].item() == 2.0 and out.sum().item() == 2.0


# ---------------------------------------------------------------- GPU compile check (no GPU needed)

def _compile_for_gpu(arch: int, dtype: str) -> list[str]:
    """Compile every kernel to a cubin for sm_``arch`` with the configuration the
    wrapper launches first (Triton's bundled ptxas; no GPU). Run with the
    interpreter off, i.e. in a fresh process."""
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kt = ifm_triton
    assert not kt._INTERPRET, "compile check needs TRITON_INTERPRET unset"
    f64 = dtype == "fp64"
    cfg = kt._FIXED_GPU_F64 if f64 else kt._GPU_CONFIGS[0].kwargs
    acc = "*fp64" if f64 else "*fp32"
    ptr = {"img", "mu", "om", "A", "out", "dx", "gmu", "gom", "gimg"}
    idx = {"perm", "hs", "cdu", "cdv", "cring"}
    done = []
    shared = dict(RP=8, NP=16, KKP=256, NCB=3, F64=f64, USE_DOT=not f64, PREC="tf32", OFF64=False)
    launches = [
        (kt._fwd_kernel, dict(STORE_K=False, DENSE=False, **cfg)),
        (kt._fwd_kernel, dict(STORE_K=True, DENSE=False, **cfg)),
        (kt._fwd_kernel, dict(STORE_K=False, DENSE=True, **cfg)),
        (kt._bwd_coef_kernel, dict(NEED_MU=True, NEED_OM=True, STORE_DK=True, **cfg)),
        (kt._bwd_atoms_kernel, dict(DOT_DTYPE=getattr(tl, {"fp32": "float32", "bf16": "bfloat16",
                                                            "fp16": "float16", "fp64": "float64"}[dtype]),
                                    **{k: v for k, v in (kt._ATOMS_FIXED if f64 else kt._ATOMS_GPU).items()
                                       if k != "num_warps"})),
        (kt._bwd_image_kernel, dict(cfg)),
    ]
    for fn, consts in launches:
        consts = {k: v for k, v in {**shared, **consts}.items() if k in fn.arg_names}
        sig = {a: "constexpr" if a in consts else
               (f"*{dtype}" if a in ptr else "*i32" if a in idx else acc if a in ("kbuf", "dkb", "part")
                else "i32")
               for a in fn.arg_names}
        warps = kt._ATOMS_GPU["num_warps"] if fn is kt._bwd_atoms_kernel and not f64 else 4
        triton.compile(ASTSource(fn, sig, constexprs=consts), target=GPUTarget("cuda", arch, 32),
                       options={"num_warps": warps, "num_stages": 2})
        done.append(fn.__name__)
    return done


@pytest.mark.parametrize("arch,dtype", [(80, "fp32"), (90, "fp32"), (90, "bf16"), (90, "fp64")])
def test_kernels_compile_for_ampere_and_hopper(arch, dtype):
    """A syntax or typing error in device code must fail here, even without a GPU."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, __file__, str(arch), dtype], env=env,
                          capture_output=True, text=True, timeout=240)
    if "NO-PTXAS" in proc.stdout:
        pytest.skip("Triton's NVIDIA backend (ptxas) is not available")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("compiled") == 6, proc.stdout


if __name__ == "__main__":
    import sys

    try:
        from triton.backends.nvidia.compiler import get_ptxas
        get_ptxas(90).path  # noqa: B018 (raises where ptxas is missing)
    except Exception:  # noqa: BLE001 - any failure to find ptxas means: nothing to check here
        print("NO-PTXAS")
        sys.exit(0)
    for name in _compile_for_gpu(int(sys.argv[1]), sys.argv[2]):
        print("compiled", name)

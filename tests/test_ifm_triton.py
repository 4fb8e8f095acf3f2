"""The Triton IFM backend against the reference: forward, all four gradients, gradcheck, compile.

Without a GPU the kernels run under the Triton interpreter on CPU tensors
(tests/conftest.py sets TRITON_INTERPRET=1): fp32, fp64 and fp16, tiny shapes.
On a GPU the same tests run on CUDA tensors, plus bf16, larger half-precision
shapes and a 64-bit offset test. Every kernel is also compiled for sm_80/sm_90
without a GPU.
"""

import pytest
import torch

triton = pytest.importorskip("triton")

from inik.ops import available_backends, backend_unavailable, ifm  # noqa: E402
from inik.ops.reference import ifm_oracle  # noqa: E402

from ifm_checks import check_compile_keeps_one_opaque_call, check_half_precision, check_partial_needs, close, run_grads  # noqa: E402

ifm_triton = pytest.importorskip("inik.kernels.ifm_triton")

DEVICE = torch.device("cpu" if ifm_triton._INTERPRET or not torch.cuda.is_available() else "cuda")
pytestmark = pytest.mark.skipif(backend_unavailable("triton", DEVICE) is not None,
                                reason=f"triton backend cannot run on {DEVICE}: "
                                       f"{backend_unavailable('triton', DEVICE)}")

# (B, C, H, W, R, N, K, support): odd sizes, H != W, K > H and K > W, B = 2,
# N above 16 (two atom blocks), several column chunks, with and without support.
CASES = {
    "support": (2, 3, 5, 7, 3, 4, 5, [5, 3, 1]),
    "k_gt_image": (1, 1, 3, 4, 2, 3, 7, None),
    "wide_n": (2, 2, 6, 5, 2, 17, 3, [1, 3]),
    "many_chunks": (1, 2, 4, 9, 3, 2, 7, [7, 3, 5]),
    "channel_blocks": (1, 6, 3, 5, 2, 2, 3, None),  # 6 channels: blocks of 4 + 2
    "default_dictionary": (1, 3, 5, 6, 7, 10, 15, [3, 5, 7, 9, 11, 13, 15]),
}


def _inputs(case, dtype=torch.float32, device=DEVICE):
    b, c, h, w, r, n, k, support = case
    shapes = ((b, c, h, w), (b, r, h, w), (b, n, h, w), (r, n, k, k))
    return [torch.randn(s, dtype=torch.float64).to(device=device, dtype=dtype) for s in shapes], support


def _assert_matches_reference(xs, support):
    """Output and all four gradients of the Triton backend against the reference (fp32 tolerances)."""
    grad_out = torch.randn_like(xs[0])
    out, grads = run_grads("triton", xs, support, grad_out)
    ref_out, ref_grads = run_grads("reference", xs, support, grad_out)
    close(out, ref_out, torch.float32, "output")
    for name, g, rg in zip(("image", "mu", "omega", "atoms"), grads, ref_grads):
        close(g, rg, torch.float32, f"d{name}")




def test_backend_registered_and_available():
    assert "triton" in available_backends(DEVICE)
    be = ifm_triton.triton_backend()
    assert be.name == "triton" and be.unavailable(DEVICE) is None
    if ifm_triton._INTERPRET:
        assert "TRITON_INTERPRET" in be.unavailable(torch.device("cuda"))
    assert be.unavailable(torch.device("meta")) is not None


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_forward_and_gradients_match_reference(case):
    xs, support = _inputs(case)
    _assert_matches_reference(xs, support)


def test_forward_matches_naive_oracle():
    xs, support = _inputs(CASES["support"], torch.float64)
    out = ifm(*xs, support=support, backend="triton")
    want = ifm_oracle(*[x.cpu() for x in xs], support)
    close(out.cpu(), want, torch.float64, "output")


@pytest.mark.parametrize("needs", [(True, False, False, False), (False, True, False, False),
                                   (False, False, True, True), (False, True, True, False)])
def test_partial_needs(needs):
    xs, support = _inputs(CASES["support"])
    check_partial_needs("triton", xs, support, needs)


def test_non_contiguous_and_channels_last_inputs():
    b, c, h, w, r, n, k = 2, 3, 5, 6, 2, 3, 5
    image = torch.randn(b, h, w, c, device=DEVICE).permute(0, 3, 1, 2)  # channels_last strides
    mu = torch.randn(b, 2 * r, h, w, device=DEVICE)[:, ::2]
    omega = torch.randn(b, n, w, h, device=DEVICE).transpose(2, 3)
    atoms = torch.randn(r, n, k + 2, k + 2, device=DEVICE)[:, :, 1:-1, 1:-1]
    xs = [image, mu, omega, atoms]
    assert not any(x.is_contiguous() for x in xs)
    grad_out = torch.randn(b, c, h, w, device=DEVICE)
    out, grads = run_grads("triton", xs, [5, 3], grad_out)
    ref_out, ref_grads = run_grads("reference", [x.contiguous() for x in xs], [5, 3], grad_out)
    assert out.stride() == torch.empty_like(image).stride()
    close(out, ref_out, torch.float32, "output")
    for g, rg in zip(grads, ref_grads):
        close(g, rg, torch.float32, "grad")


def test_crops_slices_and_expanded_inputs_read_in_place():
    """Row-contiguous views of mu and omega (a channel slice, a batch expanded with
    stride 0) go to the kernels without a copy (the image, a crop here, is read
    through the zero-padded copy every call makes); gradients flow back to the bases."""
    b, c, h, w, r, n, k = 2, 3, 5, 6, 3, 2, 5
    bases = [torch.randn(b, c, h + 3, w + 4, device=DEVICE), torch.randn(b, r + 1, h, w, device=DEVICE),
             torch.randn(1, n, h, w, device=DEVICE), torch.randn(r, n, k, k, device=DEVICE)]
    grad_out = torch.randn(b, c, h, w, device=DEVICE)

    def views(image, mu, omega, atoms):
        return image[:, :, 1:1 + h, 2:2 + w], mu[:, 1:], omega.expand(b, n, h, w), atoms

    xs = views(*bases)
    assert all(x.stride(-1) == 1 for x in xs) and not any(x.is_contiguous() for x in xs[:3])
    assert all(v is x for v, x in zip(ifm_triton._rows(*xs[:3]), xs[:3]))
    results = {}
    for backend in ("triton", "reference"):
        leaves = [x.clone().requires_grad_() for x in bases]
        out = ifm(*views(*leaves), support=[5, 1, 3], backend=backend)
        out.backward(grad_out)
        results[backend] = [out.detach()] + [x.grad for x in leaves]
    for name, got, want in zip(("output", "image", "mu", "omega", "atoms"), results["triton"], results["reference"]):
        close(got, want, torch.float32, name)


def test_gradients_in_several_bands(monkeypatch):
    """A tiny band budget forces the per-band buffers - the image gradient's kernels
    with their halo, the atom gradient's dk - to be reused, one band after another."""
    monkeypatch.setattr(ifm_triton, "_KBUF_BYTES", 1)
    case = (2, 2, 13, 4, 2, 3, 5, [5, 3])  # image gradient: bands of K=5 rows (5 + 5 + 3); dk: 1 row
    xs, support = _inputs(case)
    _assert_matches_reference(xs, support)


def test_64bit_offset_path(monkeypatch):
    """The int64 offset variant (chosen when a buffer passes 2**31 elements, which
    the interpreter cannot reach) computes the same numbers."""
    monkeypatch.setattr(ifm_triton, "_off64", lambda *counts: True)
    xs, support = _inputs(CASES["support"])
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


def test_backward_is_deterministic():
    xs, support = _inputs(CASES["wide_n"])
    grad_out = torch.randn_like(xs[0])
    _, first = run_grads("triton", xs, support, grad_out)
    _, second = run_grads("triton", xs, support, grad_out)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


@pytest.mark.parametrize("k,support,fast,dense", [(3, None, False, False), (5, [5, 3], True, False),
                                                  (5, [1, 5], True, False), (5, [1, 3, 5], True, True)])
def test_gradcheck_float64(monkeypatch, k, support, fast, dense):
    if dense:
        monkeypatch.setattr(ifm_triton, "_FORCED", {"_fwd_kernel": dict(TH=4, TW=4, CH=16, DENSE=True)})
    case = (1, 1 if not fast else 2, 3 if not fast else 4, 4 if not fast else 5, len(support or [0, 0]), 2, k,
            support)
    xs, support = _inputs(case, torch.float64)
    xs = [x.requires_grad_() for x in xs]
    assert torch.autograd.gradcheck(lambda *a: ifm(*a, support=support, backend="triton"), xs,
                                    fast_mode=fast)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1, 1, 1, 3), (1, 2, 1, 6, 2, 2, 5), (3, 1, 2, 1, 1, 3, 1)],
                         ids=["1x1_image", "one_row", "k1_one_col"])
def test_gradcheck_degenerate_shapes(shape):
    xs, _ = _inputs((*shape, None), torch.float64)
    xs = [x.requires_grad_() for x in xs]
    assert torch.autograd.gradcheck(lambda *a: ifm(*a, backend="triton"), xs)


@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(requires_grad):
    xs, support = _inputs((1, 2, 3, 4, 2, 3, 3, [3, 1]))
    xs = [x.requires_grad_(requires_grad) for x in xs]
    torch.library.opcheck(torch.ops.inik.ifm.default, (*xs, support, "triton"))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_matches_fp32_reference(dtype):
    """Tensor-core dots in the input dtype, fp32 accumulation, results cast back.
    The interpreter runs fp16 (numpy has it) but not bf16."""
    if DEVICE.type != "cuda" and dtype == torch.bfloat16:
        pytest.skip("bf16 needs a GPU: the Triton interpreter computes it wrongly")
    case = ((2, 3, 19, 23, 7, 10, 15, [3, 5, 7, 9, 11, 13, 15]) if DEVICE.type == "cuda"
            else (2, 3, 5, 7, 3, 4, 5, [5, 3, 1]))
    xs, support = _inputs(case, dtype)
    check_half_precision("triton", xs, support, dtype)


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


def test_torch_compile_fullgraph_keeps_one_opaque_call():
    xs, support = _inputs((1, 2, 4, 5, 2, 3, 3, [3, 1]))
    check_compile_keeps_one_opaque_call(xs, support, "triton")


# ---------------------------------------------------------------- GPU compile check (no GPU needed)

def _compile_for_gpu(arch: int, dtype: str) -> list[str]:
    """Compile every kernel to a cubin for sm_``arch`` with the configuration the
    wrapper launches first (Triton's bundled ptxas; no GPU). Run with the
    interpreter off, i.e. in a fresh process."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    import triton.language as tl

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
        get_ptxas(90).path
    except Exception:  # noqa: BLE001 - any failure to find ptxas means: nothing to check here
        print("NO-PTXAS")
        sys.exit(0)
    for name in _compile_for_gpu(int(sys.argv[1]), sys.argv[2]):
        print("compiled", name)

"""The compiled IFM extension (inik._C, backend "cpp"; "cuda" where a GPU is present)
against the reference: forward, all four gradients, every dtype, strides, gradcheck,
opcheck, determinism, torch.compile.

The extension is expected to be built (``pip install --no-build-isolation -e .``):
when it is missing these tests fail, unless INIK_NO_EXTENSION=1 says it was left
out on purpose (then they are skipped).
"""

import os

import pytest
import torch

from inik.ops import _ext, available_backends, backend_unavailable, ifm, resolve_backend
from inik.ops.reference import ifm_oracle

from ifm_checks import check_compile_keeps_one_opaque_call, check_half_precision, check_partial_needs, close, run_grads

if not _ext.is_built() and os.environ.get(_ext.NO_EXTENSION_ENV, "") == "1":
    pytest.skip("INIK_NO_EXTENSION=1: the extension was not built on purpose", allow_module_level=True)

HAS_GPU_KERNELS = torch.cuda.is_available() and _ext.has_cuda_kernels()
needs_gpu = pytest.mark.skipif(not HAS_GPU_KERNELS, reason="needs a GPU and inik._C built with CUDA kernels")

# (B, C, H, W, R, N, K, support): odd sizes, H != W, K > H and K > W, B > 1,
# several 16-pixel tiles with a ragged tail, several backward row chunks (16 rows
# each for K <= 17), more chunks than atom-gradient partial groups (64).
CASES = {
    "support": (2, 3, 5, 7, 3, 4, 5, [5, 3, 1]),
    "k_gt_image": (1, 1, 3, 4, 2, 3, 7, None),
    "tiles_and_chunks": (2, 2, 37, 35, 3, 5, 9, [1, 9, 5]),
    "model_scales": (1, 3, 21, 18, 7, 10, 15, [3, 5, 7, 9, 11, 13, 15]),
    "many_chunks": (5, 1, 224, 3, 2, 2, 3, None),
}


def _inputs(case, dtype=torch.float32, device="cpu"):
    b, c, h, w, r, n, k, support = case
    shapes = ((b, c, h, w), (b, r, h, w), (b, n, h, w), (r, n, k, k))
    return [torch.randn(s, dtype=torch.float64).to(device=device, dtype=dtype) for s in shapes], support




def test_extension_is_built_and_auto_picks_cpp(monkeypatch):
    assert _ext.is_built(), _ext.build_hint()
    monkeypatch.delenv("INIK_IFM_BACKEND", raising=False)
    assert "cpp" in available_backends("cpu")
    assert resolve_backend("cpu") == "cpp"
    assert "CPU" in backend_unavailable("cpp", "cuda") or "cpu" in backend_unavailable("cpp", "cuda")
    assert "cuda" in backend_unavailable("cuda", "cpu")
    if not _ext.has_cuda_kernels():
        assert "without CUDA kernels" in backend_unavailable("cuda", "cuda")


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_and_gradients_match_reference(case, dtype):
    xs, support = _inputs(case, dtype)
    grad_out = torch.randn_like(xs[0])
    out, grads = run_grads("cpp", xs, support, grad_out)
    ref_out, ref_grads = run_grads("reference", xs, support, grad_out)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    close(out, ref_out, dtype, "output")
    for name, g, rg in zip(("image", "mu", "omega", "atoms"), grads, ref_grads):
        close(g, rg, dtype, f"d{name}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("with_support", [True, False], ids=["support", "dense"])
def test_half_precision_matches_fp32_reference(dtype, with_support):
    case = (2, 3, 19, 23, 7, 10, 15, [3, 5, 7, 9, 11, 13, 15] if with_support else None)
    xs, support = _inputs(case, dtype)
    check_half_precision("cpp", xs, support, dtype)


def test_forward_matches_naive_oracle():
    xs, support = _inputs((2, 2, 5, 6, 3, 2, 5, [5, 1, 3]), torch.float64)
    close(ifm(*xs, support=support, backend="cpp"), ifm_oracle(*xs, support), torch.float64, "output")


@pytest.mark.parametrize("needs", [(True, False, False, False), (False, True, False, False),
                                   (False, False, True, True), (False, True, True, False),
                                   (False, False, False, True)])
def test_partial_needs(needs):
    xs, support = _inputs(CASES["tiles_and_chunks"])
    check_partial_needs("cpp", xs, support, needs)


def test_native_backward_returns_empty_for_unneeded():
    xs, support = _inputs(CASES["support"])
    grads = torch.ops.inik.ifm_native_backward(torch.randn_like(xs[0]), *xs, support,
                                               [False, True, False, False])
    assert grads[0].numel() == 0 and grads[2].numel() == 0 and grads[3].numel() == 0
    assert grads[1].shape == xs[1].shape


@pytest.mark.parametrize("layout", ["channels_last", "sliced"])
def test_non_contiguous_inputs(layout):
    b, c, h, w, r, n, k = 2, 3, 11, 18, 2, 3, 5
    if layout == "channels_last":
        image = torch.randn(b, c, h, w).to(memory_format=torch.channels_last)
        mu = torch.randn(b, r, h, w).to(memory_format=torch.channels_last)
        omega = torch.randn(b, n, h, w).to(memory_format=torch.channels_last)
        atoms = torch.randn(r, n, k, k).to(memory_format=torch.channels_last)
    else:
        image = torch.randn(b, c, h + 4, 2 * w)[:, :, 2:-2, ::2]
        mu = torch.randn(b, 2 * r, h, w)[:, ::2]
        omega = torch.randn(b, n, w, h).transpose(2, 3)
        atoms = torch.randn(r, n, k + 2, k + 2)[:, :, 1:-1, 1:-1]
    xs = [image, mu, omega, atoms]
    assert not any(x.is_contiguous() for x in xs)
    grad_out = torch.randn(b, c, h, w)
    out, grads = run_grads("cpp", xs, [5, 3], grad_out)
    ref_out, ref_grads = run_grads("reference", [x.contiguous() for x in xs], [5, 3], grad_out)
    assert out.stride() == torch.empty_like(image).stride()
    close(out, ref_out, torch.float32, "output")
    for g, rg in zip(grads, ref_grads):
        close(g, rg, torch.float32, "grad")


def test_backward_is_deterministic():
    xs, support = _inputs(CASES["tiles_and_chunks"])
    grad_out = torch.randn_like(xs[0])
    _, first = run_grads("cpp", xs, support, grad_out)
    _, second = run_grads("cpp", xs, support, grad_out)
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_backward_independent_of_thread_count():
    xs, support = _inputs(CASES["many_chunks"])
    grad_out = torch.randn_like(xs[0])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        _, one = run_grads("cpp", xs, support, grad_out)
    finally:
        torch.set_num_threads(threads)
    _, many = run_grads("cpp", xs, support, grad_out)
    for a, b in zip(one, many):
        assert torch.equal(a, b)


@pytest.mark.parametrize("k,support,fast", [(3, None, False), (5, [5, 3], True), (5, [1, 5], True)])
def test_gradcheck_float64(k, support, fast):
    case = (1, 1 if not fast else 2, 3 if not fast else 4, 4 if not fast else 5, 2, 2, k, support)
    xs, support = _inputs(case, torch.float64)
    xs = [x.requires_grad_() for x in xs]
    assert torch.autograd.gradcheck(lambda *a: ifm(*a, support=support, backend="cpp"), xs,
                                    fast_mode=fast)


def test_opcheck_native_ops():
    xs, support = _inputs((2, 2, 4, 5, 2, 3, 3, [3, 1]))
    torch.library.opcheck(torch.ops.inik.ifm_native_forward.default, (*xs, support))
    grad = torch.randn_like(xs[0])
    for needs in ([True, True, True, True], [False, True, False, True]):
        torch.library.opcheck(torch.ops.inik.ifm_native_backward.default, (grad, *xs, support, needs))


def test_native_ops_reject_bad_arguments():
    xs, _ = _inputs(CASES["support"])
    with pytest.raises(RuntimeError, match="support sizes must be odd"):
        torch.ops.inik.ifm_native_forward(*xs, [5, 2, 1])
    with pytest.raises(RuntimeError, match="support must give R=3"):
        torch.ops.inik.ifm_native_forward(*xs, [5, 3])
    with pytest.raises(RuntimeError, match="mu must be"):
        torch.ops.inik.ifm_native_forward(xs[0], xs[1][:, :2], xs[2], xs[3], [5, 3, 1])


def test_torch_compile_fullgraph_matches_eager():
    xs, support = _inputs((1, 2, 4, 5, 2, 3, 3, [3, 1]))
    check_compile_keeps_one_opaque_call(xs, support, "cpp")


def test_torch_compile_traces_native_ops_through_their_fakes():
    xs, support = _inputs((1, 2, 4, 5, 2, 3, 3, [3, 1]))

    def f(image, mu, omega, atoms):
        out = torch.ops.inik.ifm_native_forward(image, mu, omega, atoms, support)
        return torch.ops.inik.ifm_native_backward(out, image, mu, omega, atoms, support,
                                                  [True, False, True, True])

    torch._dynamo.reset()
    want = f(*xs)
    got = torch.compile(f, fullgraph=True, backend="aot_eager")(*xs)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        if a.numel():
            close(a, b, torch.float32, "compiled native op")


# ---------------------------------------------------------------- CUDA (skipped without a GPU)

@needs_gpu
@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_cpp(case, dtype):
    xs, support = _inputs(case, dtype)
    grad_out = torch.randn_like(xs[0])
    out, grads = run_grads("cpp", xs, support, grad_out)
    cxs = [x.cuda() for x in xs]
    cout, cgrads = run_grads("cuda", cxs, support, grad_out.cuda())
    close(cout, out, dtype, "output")
    for name, g, cg in zip(("image", "mu", "omega", "atoms"), grads, cgrads):
        close(cg, g, dtype, f"d{name}")


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_half_precision(dtype):
    xs, support = _inputs((2, 3, 19, 23, 7, 10, 15, [3, 5, 7, 9, 11, 13, 15]), dtype, "cuda")
    xs[1] = xs[1].float().softmax(1).to(dtype)
    grad_out = torch.randn_like(xs[0])
    out, grads = run_grads("cuda", xs, support, grad_out)
    ref_out, ref_grads = run_grads("reference", [x.float() for x in xs], support, grad_out.float())
    assert out.dtype == dtype
    close(out, ref_out, dtype, "output")
    for g, rg in zip(grads, ref_grads):
        close(g, rg, dtype, "grad")


@needs_gpu
def test_cuda_backward_deterministic_and_gradcheck():
    xs, support = _inputs(CASES["tiles_and_chunks"], device="cuda")
    grad_out = torch.randn_like(xs[0])
    _, first = run_grads("cuda", xs, support, grad_out)
    _, second = run_grads("cuda", xs, support, grad_out)
    for a, b in zip(first, second):
        assert torch.equal(a, b)
    small, support = _inputs((1, 2, 4, 5, 2, 2, 5, [5, 3]), torch.float64, "cuda")
    small = [x.requires_grad_() for x in small]
    assert torch.autograd.gradcheck(lambda *a: ifm(*a, support=support, backend="cuda"), small,
                                    fast_mode=True)
    torch.library.opcheck(torch.ops.inik.ifm_native_forward.default, (*[x.detach() for x in small], support))

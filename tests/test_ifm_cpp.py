"""What is specific to the compiled IFM extension (inik._C, backends "cpp" and "cuda"):
the build and auto choice, the native ops themselves (unneeded gradients, opcheck,
argument checks, tracing through their fakes) and thread-count independence.
Forward, gradients, dtypes, strides, gradcheck, determinism and torch.compile of
both backends are checked by tests/test_ifm_conformance.py.

The extension is expected to be built (``pip install --no-build-isolation -e .``):
when it is missing these tests fail, unless INIK_NO_EXTENSION=1 says it was left
out on purpose (then they are skipped).
"""


import pytest
import torch
from ifm_checks import close, ifm_oracle, run_grads

from inik.ops import _ext, available_backends, backend_unavailable, resolve_backend

if not _ext.is_built() and _ext.left_out_on_purpose():
    pytest.skip("INIK_NO_EXTENSION=1: the extension was not built on purpose", allow_module_level=True)

HAS_GPU_KERNELS = torch.cuda.is_available() and _ext.has_cuda_kernels()
needs_gpu = pytest.mark.skipif(not HAS_GPU_KERNELS, reason="needs a GPU and inik._C built with CUDA kernels")


def _inputs(case, dtype=torch.float32, device="cpu"):
    """(B, C, H, W, R, N, K, support) -> the four inputs, support."""
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


def test_native_backward_returns_empty_for_unneeded():
    xs, support = _inputs((2, 3, 5, 7, 3, 4, 5, [5, 3, 1]))
    grads = torch.ops.inik.ifm_native_backward(torch.randn_like(xs[0]), *xs, support,
                                               [False, True, False, False])
    assert grads[0].numel() == 0 and grads[2].numel() == 0 and grads[3].numel() == 0
    assert grads[1].shape == xs[1].shape


def test_backward_independent_of_thread_count():
    xs, support = _inputs((5, 1, 224, 3, 2, 2, 3, None))  # more row chunks than partial groups
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


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_gpu)])
def test_opcheck_native_ops(device):
    xs, support = _inputs((2, 2, 4, 5, 2, 3, 3, [3, 1]), device=device)
    torch.library.opcheck(torch.ops.inik.ifm_native_forward.default, (*xs, support))
    grad = torch.randn_like(xs[0])
    for needs in ([True, True, True, True], [False, True, False, True]):
        torch.library.opcheck(torch.ops.inik.ifm_native_backward.default, (grad, *xs, support, needs))


def test_native_ops_reject_bad_arguments():
    xs, _ = _inputs((2, 3, 5, 7, 3, 4, 5, None))
    with pytest.raises(RuntimeError, match="support sizes must be odd"):
        torch.ops.inik.ifm_native_forward(*xs, [5, 2, 1])
    with pytest.raises(RuntimeError, match="support must give R=3"):
        torch.ops.inik.ifm_native_forward(*xs, [5, 3])
    with pytest.raises(RuntimeError, match="mu must be"):
        torch.ops.inik.ifm_native_forward(xs[0], xs[1][:, :2], xs[2], xs[3], [5, 3, 1])


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


ODD = [(1, 2, 5, 21, 3, 5, 7, [7, 3, 1]), (2, 3, 3, 17, 2, 7, 5, [5, 5]), (1, 1, 4, 33, 1, 3, 3, [3])]


@pytest.mark.parametrize("isa", _ext.cpu_isas())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", ODD)
def test_every_instruction_set_matches_the_oracle(case, dtype, isa, monkeypatch):
    """Each kernel the CPU can run (INIK_CPU_ISA; tiles of 16, 8 or 4 float pixels, 8, 4
    or 2 double ones), forward against the naive oracle and backward against the reference
    backend, on widths that leave partial tiles and tap counts off a multiple of 8."""
    monkeypatch.setenv("INIK_CPU_ISA", isa)
    xs, support = _inputs(case, dtype)
    close(torch.ops.inik.ifm_native_forward(*xs, support, isa), ifm_oracle(*xs, support), dtype, "forward")
    grad = torch.randn_like(xs[0])
    _, got = run_grads("cpp", xs, support, grad)
    _, want = run_grads("reference", xs, support, grad)
    for name, g, w in zip(("image", "mu", "omega", "atoms"), got, want):
        close(g, w, dtype, f"{isa} d_{name}")


def test_an_instruction_set_the_cpu_lacks_is_refused(monkeypatch):
    xs, support = _inputs(ODD[0])
    with pytest.raises(RuntimeError, match=r"isa='nonsense' \(INIK_CPU_ISA\): expected"):
        torch.ops.inik.ifm_native_forward(*xs, support, "nonsense")
    if _ext.cpu_isas()[-1] != "avx512_bf16":
        with pytest.raises(RuntimeError, match="supports at most"):
            torch.ops.inik.ifm_native_forward(*xs, support, "avx512_bf16")

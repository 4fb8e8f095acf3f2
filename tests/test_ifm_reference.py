"""The IFM op: reference and unfused backends against a naive oracle, identities,
gradients, torch.library registration, torch.compile, validation and backend choice."""

import numpy as np
import pytest
import torch

import inik
from inik.ops import ifm
from inik.ops.reference import ifm_oracle

PURE = ["reference", "unfused"]


def make_inputs(b=2, c=3, h=5, w=7, r=3, n=2, k=5, dtype=torch.float64, grad=False):
    t = [torch.randn(b, c, h, w), torch.randn(b, r, h, w), torch.randn(b, n, h, w), torch.randn(r, n, k, k)]
    return [x.to(dtype).requires_grad_(grad) for x in t]


@pytest.mark.parametrize("backend", PURE)
@pytest.mark.parametrize("shape", [
    dict(b=2, c=3, h=5, w=7, r=3, n=2, k=5),
    dict(b=1, c=1, h=3, w=2, r=2, n=3, k=7),   # K larger than H and W
    dict(b=1, c=2, h=1, w=1, r=1, n=1, k=3),
])
@pytest.mark.parametrize("support", [None, "small"])
def test_against_oracle(backend, shape, support):
    y, mu, om, at = make_inputs(**shape)
    sup = None if support is None else [max(1, shape["k"] - 2 * i) for i in range(shape["r"])]
    got = ifm(y, mu, om, at, support=sup, backend=backend)
    torch.testing.assert_close(got, ifm_oracle(y, mu, om, at, sup), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", PURE)
def test_delta_atom_returns_image(backend):
    y, _, _, _ = make_inputs(k=5)
    at = torch.zeros(1, 1, 5, 5, dtype=y.dtype)
    at[0, 0, 2, 2] = 1
    ones = torch.ones(2, 1, 5, 7, dtype=y.dtype)
    torch.testing.assert_close(ifm(y, ones, ones, at, backend=backend), y)


@pytest.mark.parametrize("backend", PURE)
def test_one_hot_mu_selects_one_scale(backend):
    y, mu, om, at = make_inputs(r=4)
    mu = torch.zeros_like(mu)
    mu[:, 2] = 1
    full = ifm(y, mu, om, at, backend=backend)
    single = ifm(y, mu[:, 2:3], om, at[2:3], backend=backend)
    torch.testing.assert_close(full, single)


@pytest.mark.parametrize("backend", PURE)
def test_linear_in_image(backend):
    y1, mu, om, at = make_inputs()
    y2 = torch.randn_like(y1)
    lhs = ifm(2.5 * y1 - y2, mu, om, at, backend=backend)
    rhs = 2.5 * ifm(y1, mu, om, at, backend=backend) - ifm(y2, mu, om, at, backend=backend)
    torch.testing.assert_close(lhs, rhs)


def test_support_equals_masked_atoms():
    y, mu, om, at = make_inputs(r=3, k=7)
    sup = [3, 7, 5]
    masked = torch.zeros_like(at)
    for r, s in enumerate(sup):
        lo = (7 - s) // 2
        masked[r, :, lo:lo + s, lo:lo + s] = at[r, :, lo:lo + s, lo:lo + s]
    torch.testing.assert_close(ifm(y, mu, om, at, support=sup), ifm(y, mu, om, masked))
    at.requires_grad_()
    ifm(y, mu, om, at, support=sup).sum().backward()
    assert at.grad[0, :, 0].abs().sum() == 0 and at.grad[0, :, 2, 2:5].abs().sum() > 0


@pytest.mark.parametrize("backend", PURE)
@pytest.mark.parametrize("support", [None, [3, 1]])
def test_gradcheck(backend, support):
    inputs = make_inputs(b=2, c=2, h=4, w=3, r=2, n=2, k=3, grad=True)
    assert torch.autograd.gradcheck(lambda *a: ifm(*a, support=support, backend=backend), inputs)


@pytest.mark.parametrize("needs", [(True, False, False, False), (False, True, True, False),
                                   (False, False, False, True)])
def test_partial_gradients(needs):
    inputs = make_inputs()
    for x, nd in zip(inputs, needs):
        x.requires_grad_(nd)
    ifm(*inputs).square().sum().backward()
    full = [x.detach().clone().requires_grad_() for x in inputs]
    ifm(*full).square().sum().backward()
    for x, f, nd in zip(inputs, full, needs):
        if nd:
            torch.testing.assert_close(x.grad, f.grad)
        else:
            assert x.grad is None


def test_reference_and_unfused_agree_fp32_channels_last_and_sliced():
    y, mu, om, at = make_inputs(b=2, c=3, h=9, w=11, r=3, n=4, k=5, dtype=torch.float32)
    y_cl = y.contiguous(memory_format=torch.channels_last)
    big = torch.randn(2, 6, 9, 11)
    y_sl = big[:, ::2]
    y_sl.copy_(y)
    want = ifm_oracle(y, mu, om, at).float()
    for image in (y, y_cl, y_sl):
        for backend in PURE:
            out = ifm(image, mu, om, at, backend=backend)
            torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-4)
    assert ifm(y_cl, mu, om, at).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_accumulate_in_fp32(dtype):
    y, mu, om, at = make_inputs(h=8, w=8, r=3, n=4, k=5, dtype=torch.float32)
    want = ifm_oracle(*(x.to(dtype) for x in (y, mu, om, at)))
    for backend in PURE:
        out = ifm(*(x.to(dtype) for x in (y, mu, om, at)), backend=backend)
        assert out.dtype == dtype
        torch.testing.assert_close(out.double(), want, rtol=2e-2, atol=2e-2)


def test_opcheck():
    for grad in (False, True):
        y, mu, om, at = make_inputs(grad=grad)
        torch.library.opcheck(torch.ops.inik.ifm.default, (y, mu, om, at, [5, 3, 1], "reference"))
    g = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    y, mu, om, at = make_inputs()
    torch.library.opcheck(torch.ops.inik.ifm_backward.default,
                          (g, y, mu, om, at, [5, 5, 5], "reference", [True, False, True, True]))


@pytest.mark.parametrize("backend", PURE + ["cpp"])
@pytest.mark.parametrize("empty", ["b", "c", "h", "w"])
def test_empty_inputs_give_empty_outputs_and_zero_gradients(backend, empty):
    """As conv2d: a zero-size batch, channel count or image is an empty result, and the
    gradients (of any loss of it) are zero - for every backend, including raw ops."""
    from inik.ops.ifm import backend_unavailable

    if backend_unavailable(backend, torch.device("cpu")):
        pytest.skip(f"{backend} is not built here")
    sizes = dict(b=2, c=3, h=5, w=7)
    sizes[empty] = 0
    y, mu, om, at = make_inputs(**sizes, grad=True)
    out = ifm(y, mu, om, at, support=[5, 3, 1], backend=backend)
    assert out.shape == y.shape and out.dtype == y.dtype
    out.sum().backward()
    for x in (y, mu, om, at):
        assert x.grad.shape == x.shape and not x.grad.any()
    torch.library.opcheck(torch.ops.inik.ifm.default, (y, mu, om, at, [5, 3, 1], backend))


def test_compile_fullgraph_matches_eager():
    inputs = make_inputs(grad=True)
    eager_in = [x.detach().clone().requires_grad_() for x in inputs]

    def f(y, mu, om, at):
        return (ifm(y, mu, om, at, support=[5, 3, 1]) * 2).sin()

    out = torch.compile(f, fullgraph=True, backend="aot_eager")(*inputs)
    ref = f(*eager_in)
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    ref.sum().backward()
    for a, b in zip(inputs, eager_in):
        torch.testing.assert_close(a.grad, b.grad)


def test_compile_inductor():
    inputs = make_inputs(dtype=torch.float32)
    f = torch.compile(lambda *a: ifm(*a) + 1, fullgraph=True)
    torch.testing.assert_close(f(*inputs), ifm(*inputs) + 1)


@pytest.mark.parametrize("bad, match", [
    (lambda y, mu, om, at: (y[0], mu, om, at), r"image must have 4 dimensions \(B, C, H, W\)"),
    (lambda y, mu, om, at: (y, mu[0], om, at), r"mu must have 4 dimensions \(B, R, H, W\)"),
    (lambda y, mu, om, at: (y, mu, om[0], at), r"omega must have 4 dimensions \(B, N, H, W\)"),
    (lambda y, mu, om, at: (y, mu[:1], om, at), "mu must match image's batch"),
    (lambda y, mu, om, at: (y, mu, om[..., :3], at), "omega must match image's batch"),
    (lambda y, mu, om, at: (y, mu, om, at[:, :, :4, :4]), "K must be odd"),
    (lambda y, mu, om, at: (y, mu, om, at[:, :, :3]), "atoms must be square"),
    (lambda y, mu, om, at: (y, mu[:, :2], om, at), "mu has 2 scales but atoms has R=3"),
    (lambda y, mu, om, at: (y, mu, om[:, :1], at), "omega has 1 atoms but atoms has N=2"),
    (lambda y, mu, om, at: (y, mu.float(), om, at), "share one dtype"),
    (lambda y, mu, om, at: (y.to("meta"), mu, om, at), "one device"),
])
def test_validation_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        ifm(*bad(*make_inputs()))


def test_validation_types_and_support():
    y, mu, om, at = make_inputs()
    with pytest.raises(TypeError, match="image must be a floating-point tensor"):
        ifm(y.long(), mu, om, at)
    with pytest.raises(TypeError, match="atoms must be a torch.Tensor"):
        ifm(y, mu, om, at.tolist())
    with pytest.raises(ValueError, match="support sizes must be odd"):
        ifm(y, mu, om, at, support=[5, 4, 3])
    with pytest.raises(ValueError, match="one size per scale"):
        ifm(y, mu, om, at, support=[5])
    # support sizes are integers, not coerced: 3.7 is not 3, "135" is not [1, 3, 5]
    for bad in ([5, 3.7, 1], "531", [True, True, True], 5):
        with pytest.raises(TypeError, match="support must be a sequence of R=3 odd integers"):
            ifm(y, mu, om, at, support=bad)
    want = ifm(y, mu, om, at, support=[5, 3, 1])
    for same in ((5, 3, 1), np.array([5, 3, 1]), torch.tensor([5, 3, 1]), [np.int64(5), 3, 1]):
        torch.testing.assert_close(ifm(y, mu, om, at, support=same), want, rtol=0, atol=0)


def test_backend_choice(monkeypatch):
    assert inik.ops.resolve_backend("cpu", "unfused") == "unfused"
    assert "reference" in inik.ops.available_backends("cpu")
    monkeypatch.setenv(inik.ops.ENV_BACKEND, "unfused")
    assert inik.ops.resolve_backend("cpu") == "unfused"
    for bad in ("nope", "CPP", None):  # a bad argument value: ValueError naming it
        with pytest.raises(ValueError, match=f"backend={bad!r}: unknown backend; expected 'auto' or one of"):
            inik.ops.resolve_backend("cpu", bad)
    with pytest.raises(RuntimeError, match="backend='cuda' cannot run on cpu"):
        inik.ops.resolve_backend("cpu", "cuda")
    monkeypatch.setenv(inik.ops.ENV_BACKEND, "nope")  # the variable is named when it is the culprit
    with pytest.raises(ValueError, match="INIK_IFM_BACKEND='nope': unknown backend"):
        ifm(*make_inputs())


def test_raw_ops_load_their_backend_and_reject_unusable_ones():
    """torch.ops.inik.ifm / ifm_backward called directly (no inik.ops.ifm first) load the
    backend they name, and an unknown or unusable one is a ValueError naming it."""
    x, mu, om = torch.rand(1, 3, 6, 7), torch.rand(1, 2, 6, 7), torch.rand(1, 3, 6, 7)
    at = torch.rand(2, 3, 3, 3)
    grads = torch.ops.inik.ifm_backward(torch.ones_like(x), x, mu, om, at, [3, 1], "reference",
                                        [True, False, False, True])
    assert grads[0].shape == x.shape and grads[1].numel() == 0 and grads[3].shape == at.shape
    with pytest.raises(ValueError, match="backend 'bogus'.*unknown backend"):
        torch.ops.inik.ifm(x, mu, om, at, [3, 3], "bogus")
    with pytest.raises(ValueError, match="backend 'cuda' cannot run on cpu"):
        torch.ops.inik.ifm_backward(x, x, mu, om, at, [3, 3], "cuda", [True] * 4)


@pytest.mark.parametrize("backend", PURE + ["cpp"])
def test_raw_ops_check_their_inputs(backend):
    """torch.ops.inik.ifm / ifm_backward called directly refuse inconsistent inputs as
    inik.ops.ifm does, naming the argument, for every backend and in their fakes (so
    tracing fails where running would): the pure backends silently used the first
    scales of a short support, broadcast a one-scale mu or mixed dtypes."""
    from inik.ops.ifm import backend_unavailable

    if backend_unavailable(backend, torch.device("cpu")):
        pytest.skip(f"{backend} is not built here")
    y, mu, om, at = make_inputs()  # R=3, N=2, K=5
    g = torch.randn_like(y)
    for args, match in (((y, mu, om, at, [5, 3]), r"support must give one size per scale \(R=3\)"),
                        ((y, mu, om, at, [5, 3, 2]), r"support sizes must be odd and in \[1, K=5\]"),
                        ((y, mu[:, :1], om, at, [5, 3, 1]), "mu has 1 scales but atoms has R=3"),
                        ((y, mu.float(), om, at, [5, 3, 1]), "all inputs must share one dtype")):
        with pytest.raises(ValueError, match=match):
            torch.ops.inik.ifm(*args, backend)
        with pytest.raises(ValueError, match=match):
            torch.ops.inik.ifm_backward(g, *args, backend, [True] * 4)
        meta = [x.to("meta") if isinstance(x, torch.Tensor) else x for x in args]
        with pytest.raises(ValueError, match=match):  # the fake kernel
            torch.ops.inik.ifm(*meta, backend)
    with pytest.raises(ValueError, match=r"grad must match image \(shape \(2, 3, 5, 7\)"):
        torch.ops.inik.ifm_backward(g[..., :3], y, mu, om, at, [5, 3, 1], backend, [True] * 4)
    with pytest.raises(ValueError, match="grad must match image"):
        torch.ops.inik.ifm_backward(g.float(), y, mu, om, at, [5, 3, 1], backend, [True] * 4)
    with pytest.raises(ValueError, match="needs must give four booleans"):
        torch.ops.inik.ifm_backward(g, y, mu, om, at, [5, 3, 1], backend, [True])


@pytest.mark.parametrize("backend", PURE)
def test_double_backward_is_a_clear_error(backend):
    """First-order gradients only (as documented): differentiating the gradients (a
    gradient penalty) is an error saying so, not torch's advice to register a formula."""
    inputs = make_inputs(grad=True)
    grads = torch.autograd.grad(ifm(*inputs, backend=backend).sum(), inputs, create_graph=True)
    with pytest.raises(RuntimeError, match="inik.ops.ifm has no second derivative"):
        sum(g.square().sum() for g in grads).backward()

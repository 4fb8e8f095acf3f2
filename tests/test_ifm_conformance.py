"""Conformance suite of the IFM backends: every registered backend, on every device
where it can run, passes the same checks (docs/adding_a_backend.md says which).

Backends are read from the registry at collection, so a new one is picked up by
registering it; one that can run nowhere here is skipped with its own reason.
Expected values come from the float64 oracle (naive loops) on small shapes and
from the float64 reference (``unfused`` for the reference itself) on larger ones.
Kernels run under the Triton interpreter get the small shapes only.
"""

import functools
import importlib
import re
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from ifm_checks import assert_models_agree, close, ifm_oracle, run_grads

import inik
from inik.ops import Backend, ifm, register_backend, resolve_backend
from inik.ops.ifm import auto_order, backend_names, backend_unavailable

IFM = importlib.import_module("inik.ops.ifm")  # the module (inik.ops.ifm is the function)
DOC = Path(__file__).resolve().parents[1] / "docs" / "adding_a_backend.md"
HALF = (torch.float16, torch.bfloat16)
GRADS = ("d_image", "d_mu", "d_omega", "d_atoms")
# Backends whose CPU runs go through the Triton interpreter: slow, and wrong in bfloat16.
INTERPRETED = {"triton", "triton2"}


@dataclass(frozen=True)
class Target:
    """A backend and the device the suite runs it on."""

    name: str
    device: torch.device

    @property
    def interpreted(self) -> bool:
        return self.name in INTERPRETED and self.device.type == "cpu"


def _targets():
    """One parameter per (backend, device) that can run here; a skipped one with the
    backend's own reasons where none can."""
    params = []
    for name in backend_names():
        reasons, runnable = [], []
        for dev in ("cpu", "cuda"):
            why = backend_unavailable(name, dev)
            if why is None and dev == "cuda" and not torch.cuda.is_available():
                why = "no CUDA device"
            if why is None:
                runnable.append(pytest.param(Target(name, torch.device(dev)), id=f"{name}-{dev}"))
            else:
                reasons.append(f"{dev}: {why}")
        params += runnable or [pytest.param(None, id=name, marks=pytest.mark.skip(
            reason=f"backend {name!r} cannot run here: " + "; ".join(reasons)))]
    return params


@pytest.fixture(params=_targets())
def target(request) -> Target:
    return request.param


@pytest.fixture(autouse=True)
def _exact_cudnn():
    """fp32 means fp32 and a backward repeats itself: no TF32 or nondeterministic cuDNN
    convolutions (the pure PyTorch backends on a GPU; nothing changes on a CPU)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic
    torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic = False, True
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic = saved


@pytest.fixture
def registry(monkeypatch):
    """Registrations made by a test are undone after it."""
    monkeypatch.setattr(IFM, "_REGISTRY", dict(IFM._REGISTRY))
    monkeypatch.setattr(IFM, "_LOADED", dict(IFM._LOADED))
    monkeypatch.setattr(IFM, "BACKEND_NAMES", IFM.BACKEND_NAMES)


# ---------------------------------------------------------------- cases

# (B, C, H, W, R, N, K, support). Small: against the oracle, every target.
SMALL = {
    "support": (2, 3, 5, 7, 3, 4, 5, [5, 3, 1]),  # B=2, C=3, odd H and W, per-scale support
    "k_gt_image": (2, 1, 3, 5, 2, 3, 7, None),  # C=1, K larger than H and W
    "one_pixel": (1, 2, 1, 1, 1, 1, 3, None),
    "wide_n": (2, 2, 6, 5, 2, 17, 3, [1, 3]),  # N above 16: two atom blocks (Triton)
    "many_chunks": (1, 2, 4, 9, 3, 2, 7, [7, 3, 5]),  # several column chunks (Triton)
    "channel_blocks": (1, 6, 3, 5, 2, 2, 3, None),  # 6 channels: blocks of 4 + 2 (Triton)
    "default_dictionary": (1, 3, 5, 6, 7, 10, 15, [3, 5, 7, 9, 11, 13, 15]),
}
# Larger: against the float64 reference, targets not interpreted. Several 16-pixel
# tiles with ragged tails, backward row chunks, more chunks than partial groups (C++).
LARGE = {
    "tiles_and_chunks": (2, 2, 37, 35, 3, 5, 9, [1, 9, 5]),
    "model_scales": (1, 3, 21, 18, 7, 10, 15, [3, 5, 7, 9, 11, 13, 15]),
    "model_scales_b2": (2, 3, 19, 23, 7, 10, 15, [3, 5, 7, 9, 11, 13, 15]),
    "model_dense": (2, 3, 19, 23, 7, 10, 15, None),
    "tall": (5, 1, 224, 3, 2, 2, 3, None),
}
CASES = {**SMALL, **LARGE}


def _skip_unless_fits(target: Target, case: str, dtype=torch.float32) -> None:
    """The interpreter takes seconds per call on the small cases: the larger ones would take hours."""
    if target.interpreted and case in LARGE:
        pytest.skip("the Triton interpreter runs the small cases only")
    if target.interpreted and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter computes bfloat16 wrongly")


@functools.cache
def _case(case: str, half: bool, stand_in):
    """Float64 CPU inputs, support, output gradient and the expected output and four
    gradients (oracle when ``stand_in`` is None, else that backend in float64). For
    half precision mu is a softmax over scales (the model's magnitudes) and every
    value is rounded to bfloat16, so all dtypes see the same numbers."""
    b, c, h, w, r, n, k, support = CASES[case]
    gen = torch.Generator().manual_seed(sum(map(ord, case)))
    xs = [torch.randn(s, generator=gen, dtype=torch.float64) for s in ((b, c, h, w), (b, r, h, w), (b, n, h, w),
                                                                       (r, n, k, k), (b, c, h, w))]
    if half:
        xs[1] = xs[1].softmax(1)
        xs = [x.to(torch.bfloat16).double() for x in xs]
    xs, grad_out = xs[:4], xs[4]
    leaves = [x.clone().requires_grad_() for x in xs]
    out = ifm_oracle(*leaves, support) if stand_in is None else ifm(*leaves, support=support, backend=stand_in)
    want = (out.detach(), *torch.autograd.grad(out, leaves, grad_out))
    return xs, support, grad_out, want


def expected(target: Target, case: str, dtype):
    """(inputs, support, output gradient) on the target's device in ``dtype``, and the
    float64 expected output and gradients."""
    stand_in = None if case in SMALL else ("unfused" if target.name == "reference" else "reference")
    xs, support, grad_out, want = _case(case, dtype in HALF, stand_in)
    move = lambda x: x.to(target.device, dtype)  # noqa: E731
    return [move(x) for x in xs], support, move(grad_out), want


def make_inputs(target, b=2, c=3, h=5, w=7, r=3, n=2, k=5, dtype=torch.float64, grad=False):
    shapes = ((b, c, h, w), (b, r, h, w), (b, n, h, w), (r, n, k, k))
    return [torch.randn(s, dtype=dtype, device=target.device).requires_grad_(grad) for s in shapes]


# ---------------------------------------------------------------- checks (also run on the docs' example)

def check_matches(target: Target, case: str, dtype) -> None:
    """Output and all four gradients, in the inputs' dtype, match the expected values."""
    _skip_unless_fits(target, case, dtype)
    xs, support, grad_out, want = expected(target, case, dtype)
    out, grads = run_grads(target.name, xs, support, grad_out)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    for what, got, w in zip(("output",) + GRADS, (out, *grads), want):
        close(got, w, dtype, f"{target.name} {case} {dtype}: {what}")


GRADCHECK = {  # (B, C, H, W, R, N, K, support, fast_mode)
    "k3": (1, 1, 3, 4, 2, 2, 3, None, False),
    "support_3_1": (1, 2, 4, 3, 2, 2, 3, [3, 1], False),
    "support_5_3": (2, 2, 4, 5, 2, 2, 5, [5, 3], True),
    "support_1_5": (2, 2, 4, 5, 2, 2, 5, [1, 5], True),
    "1x1_image": (1, 1, 1, 1, 1, 1, 3, None, False),
    "one_row": (1, 2, 1, 6, 2, 2, 5, None, False),
    "k1_one_col": (3, 1, 2, 1, 1, 3, 1, None, False),
}


def check_gradcheck(target: Target, case: str) -> None:
    """All four float64 gradients against finite differences of the forward."""
    b, c, h, w, r, n, k, support, fast = GRADCHECK[case]
    xs = make_inputs(target, b, c, h, w, r, n, k, grad=True)
    assert torch.autograd.gradcheck(lambda *a: ifm(*a, support=support, backend=target.name), xs,
                                    fast_mode=fast)


def check_opcheck(target: Target) -> None:
    """torch.library's own checks of the raw ops (schema, fake kernel, autograd
    registration, dynamic-shape tracing) with this backend."""
    for grad in (False, True):
        xs = make_inputs(target, 1, 2, 3, 4, 2, 3, 3, dtype=torch.float32, grad=grad)
        torch.library.opcheck(torch.ops.inik.ifm.default, (*xs, [3, 1], target.name))
    xs, g = [x.detach() for x in xs], torch.randn(1, 2, 3, 4, device=target.device)
    for needs in ([True, True, True, True], [True, False, True, True]):
        torch.library.opcheck(torch.ops.inik.ifm_backward.default, (g, *xs, [3, 3], target.name, needs))


def check_compile(target: Target) -> None:
    """torch.compile(fullgraph=True) around ifm makes one graph with one opaque
    inik.ifm call, and its output and gradients equal eager's."""
    xs = make_inputs(target, 1, 2, 4, 5, 2, 3, 3, dtype=torch.float32)
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def f(image, mu, omega, atoms):
        return ifm(image * 1.5, mu, omega, atoms, support=[3, 1], backend=target.name).sin().sum()

    torch._dynamo.reset()
    torch.compile(f, fullgraph=True, backend=counting_backend)(*xs)
    calls = [n for g in graphs for n in g.graph.nodes if n.target in (torch.ops.inik.ifm, torch.ops.inik.ifm.default)]
    assert len(graphs) == 1 and len(calls) == 1

    torch._dynamo.reset()
    eager = [x.clone().requires_grad_() for x in xs]
    compiled = [x.clone().requires_grad_() for x in xs]
    want = f(*eager)
    want.backward()
    got = torch.compile(f, fullgraph=True)(*compiled)
    got.backward()
    close(got.detach(), want.detach(), torch.float32, "compiled output")
    for a, b in zip(eager, compiled):
        close(b.grad, a.grad, torch.float32, "compiled grad")


def check_empty(target: Target, empty: str) -> None:
    """As conv2d: a zero-size batch, channel count or image is an empty result with
    zero gradients, through ifm and the raw op."""
    sizes = dict(b=2, c=3, h=5, w=7)
    sizes[empty] = 0
    xs = make_inputs(target, **sizes, grad=True)
    out = ifm(*xs, support=[5, 3, 1], backend=target.name)
    assert out.shape == xs[0].shape and out.dtype == xs[0].dtype
    out.sum().backward()
    for x in xs:
        assert x.grad.shape == x.shape and not x.grad.any()
    torch.library.opcheck(torch.ops.inik.ifm.default, (*xs, [5, 3, 1], target.name))


BAD = [  # (change to valid inputs, exception, message)
    (lambda y, mu, om, at: (y[0], mu, om, at), ValueError, r"image must have 4 dimensions \(B, C, H, W\)"),
    (lambda y, mu, om, at: (y, mu[0], om, at), ValueError, r"mu must have 4 dimensions \(B, R, H, W\)"),
    (lambda y, mu, om, at: (y, mu, om[0], at), ValueError, r"omega must have 4 dimensions \(B, N, H, W\)"),
    (lambda y, mu, om, at: (y, mu[:1], om, at), ValueError, "mu must match image's batch"),
    (lambda y, mu, om, at: (y, mu, om[..., :3], at), ValueError, "omega must match image's batch"),
    (lambda y, mu, om, at: (y, mu, om, at[:, :, :4, :4]), ValueError, "K must be odd"),
    (lambda y, mu, om, at: (y, mu, om, at[:, :, :3]), ValueError, "atoms must be square"),
    (lambda y, mu, om, at: (y, mu, om, at[:, :, :1, :1].expand(3, 2, 1025, 1025)), ValueError,
     "K must be at most 1023, got K=1025"),
    (lambda y, mu, om, at: (y, mu[:, :2], om, at), ValueError, "mu has 2 scales but atoms has R=3"),
    (lambda y, mu, om, at: (y, mu, om[:, :1], at), ValueError, "omega has 1 atoms but atoms has N=2"),
    (lambda y, mu, om, at: (y, mu.float(), om, at), ValueError, "share one dtype"),
    (lambda y, mu, om, at: (y.to("meta"), mu, om, at), ValueError, "one device"),
    (lambda y, mu, om, at: (y.long(), mu, om, at), TypeError, "image must be a floating-point tensor"),
    (lambda y, mu, om, at: (y, mu, om, at.tolist()), TypeError, "atoms must be a torch.Tensor"),
]
BAD_SUPPORT = [  # (support for R=3, K=5, exception, message)
    ([5, 4, 3], ValueError, "support sizes must be odd"),
    ([5], ValueError, "one size per scale"),
] + [(bad, TypeError, "support must be a sequence of R=3 odd integers")  # not coerced: 3.7 is not 3
     for bad in ([5, 3.7, 1], "531", [True, True, True], 5)]
RAW_BAD = [  # raw-op arguments, message: the raw ops check what ifm checks, in their fakes too
    (lambda y, mu, om, at: (y, mu, om, at, [5, 3]), r"support must give one size per scale \(R=3\)"),
    (lambda y, mu, om, at: (y, mu, om, at, [5, 3, 2]), r"support sizes must be odd and in \[1, K=5\]"),
    (lambda y, mu, om, at: (y, mu[:, :1], om, at, [5, 3, 1]), "mu has 1 scales but atoms has R=3"),
    (lambda y, mu, om, at: (y, mu.float(), om, at, [5, 3, 1]), "all inputs must share one dtype"),
]


def _raises_one_line(exc, match, fn, *args, **kwargs) -> None:
    with pytest.raises(exc, match=match) as info:
        fn(*args, **kwargs)
    assert "\n" not in str(info.value), str(info.value)


def check_bad_inputs(target: Target) -> None:
    """Bad inputs are one-line errors naming the argument: from ifm, the raw ops
    and their fake kernels (so tracing fails where running would)."""
    xs = make_inputs(target)  # R=3, N=2, K=5
    for bad, exc, match in BAD:
        _raises_one_line(exc, match, ifm, *bad(*xs), backend=target.name)
    for support, exc, match in BAD_SUPPORT:
        _raises_one_line(exc, match, ifm, *xs, support=support, backend=target.name)
    g = torch.randn_like(xs[0])
    for bad, match in RAW_BAD:
        args = bad(*xs)
        _raises_one_line(ValueError, match, torch.ops.inik.ifm, *args, target.name)
        _raises_one_line(ValueError, match, torch.ops.inik.ifm_backward, g, *args, target.name, [True] * 4)
        meta = [x.to("meta") if isinstance(x, torch.Tensor) else x for x in args]
        _raises_one_line(ValueError, match, torch.ops.inik.ifm, *meta, target.name)
    raw = (*xs, [5, 3, 1], target.name)
    _raises_one_line(ValueError, r"grad must match image \(shape \(2, 3, 5, 7\)",
                     torch.ops.inik.ifm_backward, g[..., :3], *raw, [True] * 4)
    _raises_one_line(ValueError, "grad must match image", torch.ops.inik.ifm_backward, g.float(), *raw, [True] * 4)
    _raises_one_line(ValueError, "needs must give four booleans", torch.ops.inik.ifm_backward, g, *raw, [True])


# ---------------------------------------------------------------- the suite

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("case", CASES)
def test_forward_and_gradients(target, case, dtype):
    check_matches(target, case, dtype)


@pytest.mark.parametrize("dtype", HALF, ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", ["support", "k_gt_image", "default_dictionary", "model_scales_b2", "model_dense"])
def test_half_precision(target, case, dtype):
    check_matches(target, case, dtype)


@functools.cache
def _layout_case(layout: str):
    """Float64 bases, the views the op gets, output gradient, and the oracle's output
    and gradients with respect to the bases."""
    b, c, h, w, r, n, k = 2, 3, 7, 18, 2, 3, 5  # W=18: two 16-pixel tiles with a ragged tail
    gen = torch.Generator().manual_seed(1)
    rand = lambda *s: torch.randn(s, generator=gen, dtype=torch.float64)  # noqa: E731
    if layout == "channels_last":
        bases = [rand(*s).contiguous(memory_format=torch.channels_last)
                 for s in ((b, c, h, w), (b, r, h, w), (b, n, h, w), (r, n, k, k))]
        views = lambda y, mu, om, at: (y, mu, om, at)  # noqa: E731
    elif layout == "sliced":  # a crop of every other column, every other scale, transposed, cropped atoms
        bases = [rand(b, c, h + 4, 2 * w), rand(b, 2 * r, h, w), rand(b, n, w, h), rand(r, n, k + 2, k + 2)]
        views = lambda y, mu, om, at: (y[:, :, 2:-2, ::2], mu[:, ::2], om.transpose(2, 3),  # noqa: E731
                                       at[:, :, 1:-1, 1:-1])
    else:  # "expanded": row-contiguous views: a crop, a channel slice, a batch expanded with stride 0
        bases = [rand(b, c, h + 3, w + 4), rand(b, r + 1, h, w), rand(1, n, h, w), rand(r, n, k, k)]
        views = lambda y, mu, om, at: (y[:, :, 1:1 + h, 2:2 + w], mu[:, 1:], om.expand(b, n, h, w), at)  # noqa: E731
    grad_out = rand(b, c, h, w)
    leaves = [x.clone().requires_grad_() for x in bases]
    out = ifm_oracle(*views(*leaves), [5, 3])
    return bases, views, grad_out, (out.detach(), *torch.autograd.grad(out, leaves, grad_out))


@pytest.mark.parametrize("layout", ["channels_last", "sliced", "expanded"])
def test_non_contiguous_inputs(target, layout):
    """Any strides in: gradients reach the base tensors, and the output has the
    strides of torch.empty_like(image)."""
    bases, views, grad_out, want = _layout_case(layout)
    leaves = [x.to(target.device, torch.float32).requires_grad_() for x in bases]
    xs = views(*leaves)
    assert not any(x.is_contiguous() for x in xs[:3])
    out = ifm(*xs, support=[5, 3], backend=target.name)
    out.backward(grad_out.to(target.device, torch.float32))
    assert out.stride() == torch.empty_like(xs[0]).stride()
    for what, got, w in zip(("output",) + GRADS, (out.detach(), *(x.grad for x in leaves)), want):
        close(got, w, torch.float32, f"{layout}: {what}")


@pytest.mark.parametrize("needs", [(True, False, False, False), (False, True, False, False),
                                   (False, False, True, True), (False, True, True, False),
                                   (False, False, False, True)])
def test_partial_gradients(target, needs):
    """Only the gradients asked for come back, and they are right."""
    case = "support" if target.interpreted else "tiles_and_chunks"
    xs, support, grad_out, want = expected(target, case, torch.float32)
    _, grads = run_grads(target.name, xs, support, grad_out, needs)
    for nd, what, got, w in zip(needs, GRADS, grads, want[1:]):
        assert (got is None) == (not nd), what
        if nd:
            close(got, w, torch.float32, what)


def test_backward_is_deterministic(target):
    case = "wide_n" if target.interpreted else "tiles_and_chunks"
    xs, support, grad_out, _ = expected(target, case, torch.float32)
    _, first = run_grads(target.name, xs, support, grad_out)
    _, second = run_grads(target.name, xs, support, grad_out)
    for what, a, b in zip(GRADS, first, second):
        assert torch.equal(a, b), what


@pytest.mark.parametrize("case", GRADCHECK)
def test_gradcheck_float64(target, case):
    check_gradcheck(target, case)


def test_opcheck(target):
    check_opcheck(target)


def test_torch_compile_fullgraph(target):
    check_compile(target)


@pytest.mark.parametrize("empty", ["b", "c", "h", "w"])
def test_empty_inputs(target, empty):
    check_empty(target, empty)


def test_bad_inputs(target):
    check_bad_inputs(target)


def test_support_forms(target):
    """support: any sequence of integers (tuple, numpy, tensor), the same result."""
    xs = make_inputs(target)
    want = ifm(*xs, support=[5, 3, 1], backend=target.name)
    for same in ((5, 3, 1), np.array([5, 3, 1]), torch.tensor([5, 3, 1]), [np.int64(5), 3, 1]):
        torch.testing.assert_close(ifm(*xs, support=same, backend=target.name), want, rtol=0, atol=0)


def test_identities(target):
    """A centred delta atom returns the image; a one-hot mu selects its scale; the op
    is linear in the image."""
    y, mu, om, at = make_inputs(target, r=4)
    delta = torch.zeros(1, 1, 5, 5, dtype=y.dtype, device=y.device)
    delta[0, 0, 2, 2] = 1
    ones = torch.ones(2, 1, 5, 7, dtype=y.dtype, device=y.device)
    torch.testing.assert_close(ifm(y, ones, ones, delta, backend=target.name), y)
    hot = torch.zeros_like(mu)
    hot[:, 2] = 1
    torch.testing.assert_close(ifm(y, hot, om, at, backend=target.name),
                               ifm(y, hot[:, 2:3], om, at[2:3], backend=target.name))
    y2 = torch.randn_like(y)
    torch.testing.assert_close(ifm(2.5 * y - y2, mu, om, at, backend=target.name),
                               2.5 * ifm(y, mu, om, at, backend=target.name) - ifm(y2, mu, om, at, backend=target.name))


def test_atoms_outside_the_support_are_never_read(target):
    """As documented, the op behaves as if the atoms were zero outside each support: NaN
    there changes nothing (one design multiplied them by 0: all outputs NaN)."""
    y, mu, om, at = make_inputs(target, r=3)
    want = ifm(y, mu, om, at, support=[5, 3, 1], backend=target.name)
    poisoned = at.clone()
    poisoned[2, :, 0, 0] = float("nan")
    poisoned[1, :, 4, :] = float("inf")
    torch.testing.assert_close(ifm(y, mu, om, poisoned, support=[5, 3, 1], backend=target.name), want,
                               rtol=0, atol=0)
    xs = [t.detach().requires_grad_() for t in (y, mu, om, poisoned)]
    ifm(*xs, support=[5, 3, 1], backend=target.name).sum().backward()
    assert all(bool(torch.isfinite(t.grad).all()) for t in xs)


def test_double_backward_is_a_clear_error(target):
    """First-order gradients only (as documented): differentiating the gradients is an
    error saying so, not torch's advice to register a formula."""
    xs = make_inputs(target, grad=True)
    grads = torch.autograd.grad(ifm(*xs, backend=target.name).sum(), xs, create_graph=True)
    with pytest.raises(RuntimeError, match="inik.ops.ifm has no second derivative"):
        sum(g.square().sum() for g in grads).backward()


# ---------------------------------------------------------------- the registry

def test_registry_declares_the_package_backends():
    assert IFM.BACKEND_NAMES == backend_names() == inik.ops.BACKEND_NAMES == (
        "reference", "unfused", "cpp", "cuda", "triton", "triton2")
    assert auto_order("cpu") == ["cpp", "reference"]
    assert auto_order("cuda") == ["triton", "cuda", "reference"]
    assert auto_order("meta") == ["reference"]  # "unfused" is never picked by "auto"


def test_registry_loads_lazily_and_replaces(registry):
    """A "module:function" registration that cannot be imported is unavailable with
    the ImportError and skipped by "auto"; registering the name again replaces it
    (keeping its priority)."""
    before = resolve_backend("cpu")
    register_backend("no_such_module_for_inik:make", name="ghost", auto={"cpu": 99})
    assert IFM.BACKEND_NAMES[-1] == inik.ops.BACKEND_NAMES[-1] == "ghost" and auto_order("cpu")[0] == "ghost"
    assert backend_unavailable("ghost", "cpu").startswith("ModuleNotFoundError")
    assert resolve_backend("cpu") == before
    with pytest.raises(RuntimeError, match="backend='ghost' cannot run on cpu: ModuleNotFoundError"):
        ifm(*make_inputs(Target("ghost", torch.device("cpu"))), backend="ghost")
    ref = IFM._REGISTRY["reference"].source
    register_backend(Backend("ghost", ref.forward, ref.backward, ref.unavailable))
    assert resolve_backend("cpu") == "ghost" and backend_names().count("ghost") == 1


def test_register_backend_rejects_bad_arguments(registry):
    ref = IFM._REGISTRY["reference"].source
    for args, kwargs, exc, match in (
            (("some.module:make",), {}, TypeError, "'module:function' with name="),
            ((ref.forward,), {}, TypeError, "must be a Backend"),
            ((Backend("auto", ref.forward, ref.backward, ref.unavailable),), {}, ValueError, "other than 'auto'"),
            ((Backend("x", ref.forward, ref.backward, ref.unavailable),), {"auto": {"cpu": 1.5}}, TypeError,
             "integer priorities"),
            ((Backend("x", ref.forward, ref.backward, ref.unavailable),), {"auto": [("cpu", 1)]}, TypeError,
             "integer priorities")):
        _raises_one_line(exc, match, register_backend, *args, **kwargs)
    assert backend_names() == IFM.BACKEND_NAMES and "x" not in backend_names()


def test_a_backend_returning_the_wrong_result_is_named(registry):
    """What a backend returns is checked against what the op promises: a wrong shape was
    broadcast into the output silently, None was an AttributeError."""
    ref = IFM._REGISTRY["reference"].source
    xs = make_inputs(Target("reference", torch.device("cpu")), grad=True)
    for bad in (lambda *a: ref.forward(*a)[:, :1], lambda *a: None):
        register_backend(Backend("buggy", bad, ref.backward, ref.unavailable))
        _raises_one_line(RuntimeError, r"backend 'buggy': its forward returned .*expected a floating tensor of "
                         r"shape \(2, 3, 5, 7\)", ifm, *xs, backend="buggy")
    register_backend(Backend("buggy", ref.forward, lambda *a: ref.backward(*a)[:3], ref.unavailable))
    _raises_one_line(RuntimeError, "its backward returned tuple, expected four gradients",
                     lambda: ifm(*xs, backend="buggy").sum().backward())
    register_backend(Backend("buggy", ref.forward,
                             lambda *a: tuple(g[:1] if g is not None else g for g in ref.backward(*a)),
                             ref.unavailable))
    _raises_one_line(RuntimeError, r"its gradient of image returned shape \(1, 3, 5, 7\)",
                     lambda: ifm(*xs, backend="buggy").sum().backward())


def test_user_registered_backend(registry, monkeypatch):
    """The docs' worked example, run as the user's module ``my_ifm``: once imported, ifm,
    "auto", the model and the suite's core checks accept it."""
    code = re.search(r"```python\n(# my_ifm\.py\n.*?)```", DOC.read_text(), re.DOTALL).group(1)
    with pytest.raises(ValueError, match="ifm_backend must be 'auto' or one of"):
        inik.INIKNet(width=8, ifm_backend="my_ifm")
    module = types.ModuleType("my_ifm")
    monkeypatch.setitem(sys.modules, "my_ifm", module)
    exec(compile(code, str(DOC), "exec"), module.__dict__)

    assert backend_names()[-1] == "my_ifm" and auto_order("cpu")[-2:] == ["my_ifm", "reference"]
    assert "my_ifm" in inik.ops.available_backends("cpu") and backend_unavailable("my_ifm", "meta")
    target = Target("my_ifm", torch.device("cpu"))
    for dtype in (torch.float64, torch.float32, torch.bfloat16):
        check_matches(target, "support", dtype)
    check_gradcheck(target, "support_3_1")
    check_opcheck(target)
    check_compile(target)
    check_empty(target, "h")
    check_bad_inputs(target)

    assert_models_agree("my_ifm", "reference")

"""The fused ConvLSTM pointwise op (inik._C, CPU) against PyTorch's ops: forward,
backward, gradcheck, dtypes, channel tails, layouts, fallbacks and bad input.

Like the IFM extension tests, these fail when inik._C is missing unless
INIK_NO_EXTENSION=1 says it was left out on purpose.
"""


import pytest
import torch

from inik.ops import _ext
from inik.ops.lstm import fused_unavailable, lstm_pointwise

if not _ext.is_built() and _ext.left_out_on_purpose():
    pytest.skip("INIK_NO_EXTENSION=1: the extension was not built on purpose", allow_module_level=True)

CL = torch.channels_last


def reference(gates, c):
    i, f, o, g = gates.chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def make(hidden, dtype=torch.float64, b=2, h=5, w=7, seed=0):
    """Gates spread wide enough to reach both saturated ends of the sigmoid and tanh."""
    gen = torch.Generator().manual_seed(seed)
    gates = (torch.randn(b, 4 * hidden, h, w, generator=gen, dtype=torch.float64) * 6).to(dtype)
    c = (torch.randn(b, hidden, h, w, generator=gen, dtype=torch.float64) * 3).to(dtype)
    return gates.contiguous(memory_format=CL), c.contiguous(memory_format=CL)


# 32: the model's width (two full 16-lane vectors); 5 and 17: lane tails; 1: scalar
@pytest.mark.parametrize("hidden", [32, 17, 5, 1])
@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-14), (torch.float32, 1e-6),
                                         (torch.bfloat16, None)])
def test_forward_matches_pytorch(hidden, dtype, atol):
    gates, c = make(hidden, dtype)
    h, c_new = lstm_pointwise(gates, c, fused=True)
    ref_h, ref_c = reference(gates.double(), c.double())  # exact, from the same rounded inputs
    for got, want in ((h, ref_h), (c_new, ref_c)):
        assert got.dtype == dtype and got.is_contiguous(memory_format=CL)
        if dtype == torch.bfloat16:  # one rounding of the float32 result: half a bf16 ulp
            tol = want.abs().clamp_min(2 ** -126) * 2 ** -8 + 1e-6
            assert bool(((got.double() - want).abs() <= tol).all())
        else:
            torch.testing.assert_close(got.double(), want, rtol=0, atol=atol)


@pytest.mark.parametrize("isa", _ext.cpu_isas())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_instruction_set_matches_pytorch(isa, dtype, monkeypatch):
    """Each kernel the CPU can run (INIK_CPU_ISA), forward and backward, with a lane tail."""
    monkeypatch.setenv("INIK_CPU_ISA", isa)
    gates, c = make(17, dtype)
    gates.requires_grad_()
    h, c_new = lstm_pointwise(gates, c, fused=True)
    (h.float().sum() + 2 * c_new.float().sum()).backward()
    g64 = gates.detach().double().requires_grad_()
    ref_h, ref_c = reference(g64, c.double())
    (ref_h.sum() + 2 * ref_c.sum()).backward()
    tol = 1e-5 if dtype == torch.float32 else 2 ** -6
    for got, want in ((h, ref_h), (c_new, ref_c), (gates.grad, g64.grad)):
        assert (got.double() - want.detach()).abs().max().item() <= tol * want.abs().max().item()


def test_extreme_inputs_saturate_without_nan():
    gates, c = make(16, torch.float32)
    gates[:, :, 0] = 1e4
    gates[:, :, 1] = -1e4
    h, c_new = lstm_pointwise(gates, c, fused=True)
    ref_h, ref_c = reference(gates, c)
    assert torch.isfinite(h).all() and torch.isfinite(c_new).all()
    torch.testing.assert_close(h, ref_h, rtol=0, atol=1e-6)
    torch.testing.assert_close(c_new, ref_c, rtol=0, atol=1e-5)


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-13), (torch.float32, 2e-6)])
@pytest.mark.parametrize("which", ["both", "h", "c"])
def test_backward_matches_autograd(dtype, atol, which):
    gates, c = make(17, dtype, seed=1)
    gen = torch.Generator().manual_seed(2)
    gh, gc = (torch.randn(c.shape, generator=gen, dtype=dtype) for _ in range(2))
    grads = {"both": (gh, gc), "h": (gh, None), "c": (None, gc)}[which]
    results = []
    for fused in (True, False):
        g = gates.clone().requires_grad_()
        cc = c.clone().requires_grad_()
        outs = lstm_pointwise(g, cc, fused=fused)
        torch.autograd.backward([o for o, d in zip(outs, grads) if d is not None],
                                [d for d in grads if d is not None])
        results.append((g.grad, cc.grad))
    (fg, fc), (rg, rc) = results
    assert fg.is_contiguous(memory_format=CL) and fc.is_contiguous(memory_format=CL)
    torch.testing.assert_close(fg, rg, rtol=0, atol=atol)
    torch.testing.assert_close(fc, rc, rtol=0, atol=atol)


def test_backward_bfloat16_close_to_float32():
    gates, c = make(32, torch.float32, seed=3)
    gh = torch.randn(c.shape, generator=torch.Generator().manual_seed(4))
    grads = []
    for dt in (torch.float32, torch.bfloat16):
        g = gates.detach().to(dt).requires_grad_()
        h, _ = lstm_pointwise(g, c.to(dt), fused=True)
        h.backward(gh.to(dt))
        grads.append(g.grad.float())
    torch.testing.assert_close(grads[1], grads[0], rtol=2e-2, atol=2e-2)


def test_gradcheck_float64():
    gates, c = make(3, torch.float64, b=1, h=3, w=2, seed=5)
    gates.requires_grad_()
    c.requires_grad_()
    assert torch.autograd.gradcheck(lambda g, cc: lstm_pointwise(g, cc, fused=True), (gates, c))


def test_double_backward_matches_pytorch():
    """A gradient penalty differentiates the cell's gradients again: through gates and c
    even when the upstream gradients are constants (h.sum()). The fused path's second
    derivatives equal PyTorch's (they were silently dropped: the first-order gradient
    came back as a constant)."""
    gates, c = make(3, torch.float64, b=1, h=3, w=2, seed=7)
    results = []
    for fused in (True, False):
        g, cc = gates.clone().requires_grad_(), c.clone().requires_grad_()
        h, c_new = lstm_pointwise(g, cc, fused=fused)
        dg, dc = torch.autograd.grad(h.sum() + 2 * c_new.sum(), (g, cc), create_graph=True)
        assert dg.requires_grad and dc.requires_grad
        (h.sum() + dg.square().sum() + dc.square().sum()).backward()
        results.append((g.grad, cc.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    g, cc = gates.clone().requires_grad_(), c.clone().requires_grad_()
    assert torch.autograd.gradgradcheck(lambda a, b: lstm_pointwise(a, b, fused=True), (g, cc))


def test_gradient_arrives_in_any_layout():
    """Upstream gradients need not be channels_last: the backward lays them out."""
    gates, c = make(8, torch.float32, seed=6)
    g = gates.requires_grad_()
    h, c_new = lstm_pointwise(g, c, fused=True)
    gh = torch.randn(c.shape).contiguous()  # NCHW
    gc = torch.randn(1, 8, 1, 1).expand(c.shape)  # broadcast, zero strides
    torch.autograd.backward([h, c_new], [gh, gc])
    g2 = gates.detach().clone().requires_grad_()
    torch.autograd.backward(list(reference(g2, c)), [gh, gc])
    torch.testing.assert_close(g.grad, g2.grad, rtol=0, atol=2e-6)


def test_automatic_choice_and_fallbacks():
    gates, c = make(4, torch.float32)
    assert fused_unavailable(gates, c) is None
    nchw = (gates.contiguous(), c.contiguous())
    assert "channels_last" in fused_unavailable(*nchw)
    assert "dtype" in fused_unavailable(gates.half(), c.half())
    assert "dtype" in fused_unavailable(gates, c.double())
    # the fallback (PyTorch's ops) and the fused op give the same numbers
    fused, plain = lstm_pointwise(gates, c), lstm_pointwise(*nchw)
    for a, b in zip(fused, plain):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="fused=True.*channels_last"):
        lstm_pointwise(*nchw, fused=True)
    half = lstm_pointwise(gates.half(), c.half())  # float16: PyTorch's ops
    assert half[0].dtype == torch.float16
    with pytest.raises(ValueError, match="gates and c must be on one device, got meta and cpu"):
        lstm_pointwise(gates.to("meta"), c)
    with pytest.raises(TypeError, match="must be floating point, got torch.int64"):
        lstm_pointwise(gates.long(), c.long())  # computed, and returned as float32


def test_under_torch_compile_matches_eager():
    gates, c = make(4, torch.float32)
    compiled = torch.compile(lambda g, cc: lstm_pointwise(g, cc), fullgraph=True, backend="eager")
    for a, b in zip(compiled(gates, c), lstm_pointwise(gates, c)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_bad_input_is_rejected_with_named_arguments():
    gates, c = make(4, torch.float32)
    with pytest.raises(ValueError, match=r"gates must be \(B, 4h, \.\.\.\)"):
        lstm_pointwise(gates[:, :15], c)
    with pytest.raises(ValueError, match="gates must be"):
        lstm_pointwise(gates, c[:, :, :3])
    with pytest.raises(TypeError, match="must be tensors"):
        lstm_pointwise(gates, 1.0)
    op = torch.ops.inik
    with pytest.raises(RuntimeError, match=r"lstm_cell_forward: gates must be \(B, 4h, H, W\)"):
        op.lstm_cell_forward(gates[:, :15], c)
    with pytest.raises(RuntimeError, match="lstm_cell_forward: gates and c must have one dtype"):
        op.lstm_cell_forward(gates, c.double())
    with pytest.raises(RuntimeError, match="lstm_cell_forward: gates must be float32, bfloat16 or float64"):
        op.lstm_cell_forward(gates.half(), c.half())
    with pytest.raises(RuntimeError, match="lstm_cell_forward: gates and c must be channels_last"):
        op.lstm_cell_forward(gates.contiguous(), c.contiguous())
    with pytest.raises(RuntimeError, match="lstm_cell_forward: gates and c must be 4-D"):
        op.lstm_cell_forward(gates[0], c[0])
    with pytest.raises(RuntimeError, match="lstm_cell_backward: grad_h must be a channels_last"):
        op.lstm_cell_backward(gates, c, c[:, :, :2].contiguous(memory_format=CL), None)
    empty_g, empty_c = make(4, torch.float32, h=0)
    assert lstm_pointwise(empty_g, empty_c, fused=True)[0].shape == empty_c.shape


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_opcheck_native_ops(dtype):
    """Schemas, fake (meta) kernels against the real ones, and torch.compile's view of
    torch.ops.inik.lstm_cell_forward / lstm_cell_backward."""
    gates, c = make(17, dtype)
    dh, dc = (torch.randn_like(c.float()).to(dtype).contiguous(memory_format=CL) for _ in range(2))
    torch.library.opcheck(torch.ops.inik.lstm_cell_forward.default, (gates, c))
    for grads in ((dh, dc), (dh, None), (None, dc)):
        torch.library.opcheck(torch.ops.inik.lstm_cell_backward.default, (gates, c, *grads))

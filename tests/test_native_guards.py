"""The raw native ops (torch.ops.inik.*, the building blocks engineers call directly)
refuse what they cannot do rather than return something wrong: differentiating them
raises (autograd otherwise only warns and drops their contribution), a meta tensor
among CPU tensors raises (the fake kernel would otherwise return an empty CPU tensor
as the result), their fake kernels refuse what the real ones refuse (so tracing
under torch.compile fails where running would), and empty inputs work.

Like the other extension tests, these fail when inik._C is missing unless
INIK_NO_EXTENSION=1 says it was left out on purpose.
"""


import pytest
import torch

from inik.ops import _ext, winograd

if not _ext.is_built() and _ext.left_out_on_purpose():
    pytest.skip("INIK_NO_EXTENSION=1: the extension was not built on purpose", allow_module_level=True)

ops = torch.ops.inik
CL = torch.channels_last


def _wino(device="cpu", **change):
    args = dict(x=torch.randn(1, 4, 6, 6).contiguous(memory_format=CL), weight=torch.randn(5, 4, 3, 3),
                bias=torch.randn(5), residual=None, padding_mode="zeros", relu=False, tile=0, bf16_gemm=True)
    args.update(change)
    if device != "cpu":
        args = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
    return args


def _lstm(device="cpu"):
    return (torch.randn(1, 8, 3, 5).contiguous(memory_format=CL).to(device),
            torch.randn(1, 2, 3, 5).contiguous(memory_format=CL).to(device))


def _ifm(device="cpu", b=1):
    return (torch.randn(b, 3, 5, 6, device=device), torch.randn(b, 2, 5, 6, device=device),
            torch.randn(b, 4, 5, 6, device=device), torch.randn(2, 4, 3, 3, device=device))


def test_differentiating_a_raw_op_raises():
    """The forward ops carry their backward (tested in test_winograd, test_lstm_cell);
    the backward ops and the IFM's native forward refuse to be differentiated."""
    x = _wino()["x"].requires_grad_()
    ops.conv3x3_winograd(**_wino(x=x)).sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    gates, c = _lstm()
    h, c_new = ops.lstm_cell_forward(gates.requires_grad_(), c)
    h.sum().backward()
    assert gates.grad is not None
    grad = torch.ones_like(c).requires_grad_()
    d_gates, _ = ops.lstm_cell_backward(gates.detach(), c, grad, None)
    with pytest.raises(RuntimeError, match="lstm_cell_backward has no derivative"):
        d_gates.sum().backward()
    image, mu, omega, atoms = _ifm()
    out = ops.ifm_native_forward(image, mu, omega, atoms.requires_grad_(), [3, 1])
    with pytest.raises(RuntimeError, match="ifm_native_forward has no derivative.*inik.ops.ifm"):
        out.sum().backward()
    with torch.no_grad():  # without autograd they run as before
        assert ops.conv3x3_winograd(**_wino(x=x)).shape == (1, 5, 6, 6)


@pytest.mark.parametrize("which", ["bias", "weight", "residual"])
def test_a_meta_tensor_among_cpu_tensors_raises(which):
    change = {which: _wino("meta")[which] if which != "residual" else torch.randn(1, 5, 6, 6, device="meta")}
    with pytest.raises(RuntimeError, match="conv3x3_winograd: all tensors must be on one device"):
        ops.conv3x3_winograd(**_wino(**change))
    gates, c = _lstm()
    with pytest.raises(RuntimeError, match="lstm_cell_forward: all tensors must be on one device"):
        ops.lstm_cell_forward(gates.to("meta"), c)
    with pytest.raises(RuntimeError, match="lstm_cell_backward: all tensors must be on one device"):
        ops.lstm_cell_backward(gates, c, c.to("meta"), None)
    image, mu, omega, atoms = _ifm()
    with pytest.raises(RuntimeError, match="ifm_native_forward: all tensors must be on one device"):
        ops.ifm_native_forward(image, mu.to("meta"), omega, atoms, [3, 1])
    with pytest.raises(RuntimeError, match="ifm_native_backward: all tensors must be on one device"):
        ops.ifm_native_backward(image.to("meta"), image, mu, omega, atoms, [3, 1], [True] * 4)


@pytest.mark.parametrize("bad, match", [
    (dict(x=torch.randn(1, 4, 6, 6, dtype=torch.float64).contiguous(memory_format=CL)), "float32 or bfloat16"),
    (dict(x=torch.randn(1, 4, 6, 6)), "channels_last"),
    (dict(weight=torch.randn(5, 4, 5, 5)), r"weight \(Co, C, 3, 3\)"),
    (dict(bias=torch.randn(9)), r"bias must be \(5,\)"),
    (dict(residual=torch.randn(1, 5, 6, 7)), "residual must be"),
    (dict(padding_mode="bogus"), "padding_mode"),
    (dict(tile=5), "tile must be 0"),
    (dict(weight=torch.randn(5, 4, 3, 3).int()), "weight must be a floating-point"),
    (dict(residual=torch.randn(1, 5, 6, 6)), "residual must be a channels_last-contiguous"),
    (dict(residual=torch.randn(1, 5, 6, 6, dtype=torch.float64).contiguous(memory_format=CL)),
     "residual must be a channels_last-contiguous"),
    (dict(x=torch.randn(1, 4, 1, 6).contiguous(memory_format=CL), padding_mode="reflect"),
     "reflect padding needs H and W of at least 2"),
])
def test_winograd_fake_refuses_what_the_kernel_refuses(bad, match):
    args = _wino("meta", **{k: v.to("meta") if isinstance(v, torch.Tensor) else v for k, v in bad.items()})
    with pytest.raises(RuntimeError, match=match):
        ops.conv3x3_winograd(**args)
    with pytest.raises(RuntimeError):  # and so does the kernel
        ops.conv3x3_winograd(**_wino(**bad))
    assert ops.conv3x3_winograd(**_wino("meta")).shape == (1, 5, 6, 6)  # valid meta input: shape inference


def test_lstm_and_ifm_fakes_refuse_what_the_kernels_refuse():
    gates, c = _lstm("meta")
    for bad, match in (((gates.contiguous(), c.contiguous()), "channels_last"),
                       ((gates.half(), c.half()), "share a dtype"),
                       ((gates[:, :7], c), r"gates must be \(B, 4h, H, W\)")):
        with pytest.raises(RuntimeError, match=match):
            ops.lstm_cell_forward(*bad)
    for grad_h in (c[:, :1], c.contiguous(), c.new_zeros(1, 2, 1, 1).expand(c.shape)):  # shape, layouts
        with pytest.raises(RuntimeError, match="grad_h must be a channels_last-contiguous tensor like c"):
            ops.lstm_cell_backward(gates, c, grad_h, None)
        with pytest.raises(RuntimeError, match="grad_h must be a channels_last-contiguous tensor like c"):
            ops.lstm_cell_backward(*_lstm(), torch.empty_strided(grad_h.shape, grad_h.stride()), None)
    image, mu, omega, atoms = _ifm("meta")
    for support, match in (([99, 1], r"odd and in \[1, K=3\]"), ([3], "one size per scale")):
        with pytest.raises(RuntimeError, match=match):
            ops.ifm_native_forward(image, mu, omega, atoms, support)
    with pytest.raises(RuntimeError, match="share one floating-point dtype"):
        ops.ifm_native_forward(image, mu.double(), omega, atoms, [3, 1])


@pytest.mark.parametrize("bad, match", [
    (lambda y, mu, om, at: (y, mu[:, :, :4], om, at),
     r"mu must be \(B, R, H, W\) = \(1, 2, 5, 6\), got \[1, 2, 4, 6\]"),
    (lambda y, mu, om, at: (y, mu.expand(2, -1, -1, -1), om, at), r"mu must be \(B, R, H, W\)"),
    (lambda y, mu, om, at: (y, mu[:, :1], om, at), r"mu must be \(B, R, H, W\)"),
    (lambda y, mu, om, at: (y, mu, om[:, :3], at), r"omega must be \(B, N, H, W\) = \(1, 4, 5, 6\)"),
    (lambda y, mu, om, at: (y, mu, om, at[..., :2]), r"atoms must be \(R, N, K, K\) with K odd"),
    (lambda y, mu, om, at: (y, mu, om, at.new_zeros(2, 4, 4, 4)), r"atoms must be \(R, N, K, K\) with K odd"),
    # K*K past int32 (65537**2) crashed the CPU kernel's planning (a segfault)
    (lambda y, mu, om, at: (y, mu, om, at[..., :1, :1].expand(2, 4, 65537, 65537)),
     "atoms' kernel size K must be at most 1023, got K=65537"),
])
def test_ifm_fakes_check_shapes_as_the_kernels_do(bad, match):
    """Inconsistent shapes fail in the fake kernels (tracing, meta tensors) with the
    kernels' own message; the fakes returned a result of the image's shape."""
    for device in ("cpu", "meta"):
        args = bad(*_ifm(device))
        with pytest.raises(RuntimeError, match="ifm_native_forward: " + match):
            ops.ifm_native_forward(*args, [3, 1])
        with pytest.raises(RuntimeError, match="ifm_native_backward: " + match):
            ops.ifm_native_backward(torch.randn(1, 3, 5, 6, device=device), *args, [3, 1], [True] * 4)
    with pytest.raises(RuntimeError):  # the schema's bool[4], in the kernel and the fake
        ops.ifm_native_backward(torch.randn(1, 3, 5, 6), *_ifm(), [3, 1], [True] * 3)
    with pytest.raises(RuntimeError, match="needs must give 4 booleans"):
        ops.ifm_native_backward(torch.randn(1, 3, 5, 6, device="meta"), *_ifm("meta"), [3, 1], [True] * 3)


def test_ifm_largest_atoms_are_accepted():
    """K = 1023 is the largest atom side (the bound keeps K*K and the tap offsets in int32)."""
    from inik.ops import ifm
    from inik.ops.ifm import validate
    y, mu, om, at = _ifm()
    big = torch.zeros(2, 4, 1023, 1023)
    big[..., 510:513, 510:513] = at  # the same 3x3 atoms, centred
    torch.testing.assert_close(ops.ifm_native_forward(y, mu, om, big, [3, 1]),
                               ifm(y, mu, om, at, support=[3, 1], backend="reference"), rtol=1e-5, atol=1e-5)
    assert validate(y, mu, om, big, [1023, 1]) == [1023, 1]


@pytest.mark.parametrize("b", [0, 1])
def test_ifm_native_backward_with_no_pixels(b):
    image, mu, omega, atoms = _ifm(b=b)
    if b:
        image, mu, omega = image[..., :0, :], mu[..., :0, :], omega[..., :0, :]  # H = 0
    grads = ops.ifm_native_backward(image, image, mu, omega, atoms, [3, 1], [True] * 4)
    for g, x in zip(grads, (image, mu, omega, atoms)):
        assert g.shape == x.shape and not g.any()


def test_winograd_keeps_float64_out_of_autocast():
    """CPU autocast casts float32/16 and bfloat16 convolutions, not float64 ones: conv3x3
    refuses float64 with or without autocast (it downcast it to bfloat16 under autocast)."""
    x = torch.randn(1, 4, 6, 6, dtype=torch.float64)
    for autocast in (False, True):
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
            with pytest.raises(TypeError, match="float32 or bfloat16"):
                winograd.conv3x3(x, torch.randn(5, 4, 3, 3, dtype=torch.float64))
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        assert winograd.conv3x3(x.float(), torch.randn(5, 4, 3, 3)).dtype == torch.bfloat16

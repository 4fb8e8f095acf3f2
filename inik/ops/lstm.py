"""The pointwise update of a ConvLSTM cell, fused on the CPU.

:func:`lstm_pointwise` computes, from the gate pre-activations ``gates`` =
(i, f, o, g) along channels and the cell state ``c``::

    c_new = sigmoid(f) * c + sigmoid(i) * tanh(g)
    h     = sigmoid(o) * tanh(c_new)

On CPU tensors in channels_last layout (the fast path of ``inik deblur`` and
``inik train``) it runs the native ops ``torch.ops.inik.lstm_cell_forward`` /
``lstm_cell_backward`` of ``inik._C``: one pass over memory instead of ten
PyTorch ops on strided channel slices (see ``csrc/lstm_cpu.cpp``; timings in
``benchmarks/RESULTS.md``), and a backward that recomputes the activations, so
autograd keeps two tensors per cell instead of seven (a backward with
``create_graph=True``, whose gradients get differentiated again, runs PyTorch
ops from the same two tensors). Everywhere else (CUDA,
NCHW, float16, inside ``torch.compile``, which fuses the ops itself - not inside
``torch.export``, whose programs keep the op -, inside
:func:`inik.ops.paths.plain_ops`, or without the extension) it runs the PyTorch ops.

float32 results differ from PyTorch's by rounding (relative error about 1e-7:
its exp is a polynomial); bfloat16 ones are computed in float32 and rounded once.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import _ext, paths

FUSED_DTYPES = (torch.float32, torch.bfloat16, torch.float64)


def fused_unavailable(gates: Tensor, c: Tensor) -> Optional[str]:
    """Why the fused op cannot take these tensors (None when it can)."""
    if not _ext.is_built():
        return _ext.build_hint()
    if torch.compiler.is_compiling() and not getattr(torch.compiler, "is_exporting", bool)():
        return "inside torch.compile (the compiler fuses the PyTorch ops itself)"
    if paths.plain():
        return "inside inik.ops.paths.plain_ops (PyTorch operators only)"
    if gates.device.type != "cpu" or c.device.type != "cpu":
        return f"the fused op runs on CPU tensors, got {gates.device} and {c.device}"
    if gates.dtype != c.dtype or gates.dtype not in FUSED_DTYPES:
        return f"gates and c must share a dtype among {FUSED_DTYPES}, got {gates.dtype} and {c.dtype}"
    if gates.dim() != 4 or c.dim() != 4:
        return f"gates and c must be 4-D, got {gates.dim()}-D and {c.dim()}-D"
    cl = torch.channels_last
    if not (gates.is_contiguous(memory_format=cl) and c.is_contiguous(memory_format=cl)):
        return "gates and c must be channels_last-contiguous"
    return None


def _channels_last(t: Optional[Tensor], like: Tensor) -> Optional[Tensor]:
    if t is None:
        return None
    return t.to(like.dtype).contiguous(memory_format=torch.channels_last)


def _backward_torch(gates: Tensor, c: Tensor, grad_h: Optional[Tensor],
                    grad_c: Optional[Tensor]) -> tuple[Tensor, Tensor]:
    """The cell's backward in PyTorch ops (itself differentiable): for a backward with
    ``create_graph=True``, whose gradients are differentiated again."""
    i, f, o, g = gates.chunk(4, 1)
    si, sf, so, tg = torch.sigmoid(i), torch.sigmoid(f), torch.sigmoid(o), torch.tanh(g)
    d_c = torch.zeros_like(c) if grad_c is None else grad_c.expand_as(c)
    d_o = torch.zeros_like(o)
    if grad_h is not None:
        tc = torch.tanh(sf * c + si * tg)
        d_c = d_c + grad_h * so * (1 - tc * tc)
        d_o = grad_h * tc * so * (1 - so)
    d_gates = torch.cat([d_c * tg * si * (1 - si), d_c * c * sf * (1 - sf), d_o, d_c * si * (1 - tg * tg)], 1)
    return d_gates, d_c * sf


def _check_shapes(gates: Tensor, c: Tensor) -> None:
    if not isinstance(gates, Tensor) or not isinstance(c, Tensor):
        raise TypeError("lstm_pointwise: gates and c must be tensors")
    if (gates.dim() != c.dim() or gates.dim() < 2 or gates.shape[1] != 4 * c.shape[1]
            or gates.shape[:1] + gates.shape[2:] != c.shape[:1] + c.shape[2:]):
        raise ValueError(f"lstm_pointwise: gates must be (B, 4h, ...) for c of shape (B, h, ...), "
                         f"got gates {tuple(gates.shape)} and c {tuple(c.shape)}")
    if not gates.is_floating_point() or not c.is_floating_point():
        raise TypeError(f"lstm_pointwise: gates and c must be floating point, got {gates.dtype} and {c.dtype}")
    if gates.device != c.device:
        raise ValueError(f"lstm_pointwise: gates and c must be on one device, got {gates.device} and {c.device}")


def lstm_pointwise(gates: Tensor, c: Tensor, fused: Optional[bool] = None) -> tuple[Tensor, Tensor]:
    """``(h, c_new)`` of a ConvLSTM cell from ``gates`` (B, 4h, H, W) and ``c`` (B, h, H, W).

    ``fused``: None picks the native op when it can take the tensors (see the
    module docstring); True requires it (ValueError saying why not); False
    always runs the PyTorch ops.
    """
    _check_shapes(gates, c)
    why = fused_unavailable(gates, c) if fused is not False else "fused=False"
    if why is None:
        return torch.ops.inik.lstm_cell_forward(gates, c, _ext.cpu_isa())
    if fused:
        raise ValueError(f"lstm_pointwise: fused=True but the fused op cannot run: {why}")
    i, f, o, g = gates.chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


if _ext.is_built():
    # Shapes and layouts of the native ops' results, for torch.compile and opcheck.
    def _check_fake(op, gates, c, **grads):
        _ext.check_fake(op, gates=gates, c=c, **grads)
        torch._check(gates.dim() == 4 and c.dim() == 4 and gates.shape[1] == 4 * c.shape[1]
                     and gates.shape[:1] + gates.shape[2:] == c.shape[:1] + c.shape[2:],
                     lambda: f"{op}: gates must be (B, 4h, H, W) for c of shape (B, h, H, W)")
        torch._check(gates.dtype == c.dtype and c.dtype in FUSED_DTYPES,
                     lambda: f"{op}: gates and c must share a dtype among {FUSED_DTYPES}")
        cl = torch.channels_last
        torch._check(gates.is_contiguous(memory_format=cl) and c.is_contiguous(memory_format=cl),
                     lambda: f"{op}: gates and c must be channels_last-contiguous")
        for name, g in grads.items():
            torch._check(g is None or (g.shape == c.shape and g.dtype == c.dtype and g.is_contiguous(memory_format=cl)),
                         lambda name=name: f"{op}: {name} must be a channels_last-contiguous tensor like c "
                                           f"(c's shape and dtype)")

    @torch.library.register_fake("inik::lstm_cell_forward")
    def _(gates, c, isa=""):
        _check_fake("lstm_cell_forward", gates, c)
        cl = torch.channels_last
        return torch.empty_like(c, memory_format=cl), torch.empty_like(c, memory_format=cl)

    @torch.library.register_fake("inik::lstm_cell_backward")
    def _(gates, c, grad_h, grad_c, isa=""):
        _check_fake("lstm_cell_backward", gates, c, grad_h=grad_h, grad_c=grad_c)
        cl = torch.channels_last
        return torch.empty_like(gates, memory_format=cl), torch.empty_like(c, memory_format=cl)

    def _setup_context(ctx, inputs, output):
        gates, c, isa = inputs
        ctx.save_for_backward(gates, c)
        ctx.isa = isa

    def _backward(ctx, grad_h, grad_c):
        gates, c = ctx.saved_tensors
        if grad_h is None and grad_c is None:
            return None, None, None
        if torch.is_grad_enabled():
            # create_graph=True: the gradients may be differentiated again (a gradient
            # penalty), through gates and c as well as through grad_h and grad_c; the
            # native backward has no derivative
            return (*_backward_torch(gates, c, grad_h, grad_c), None)
        return (*torch.ops.inik.lstm_cell_backward(gates, c, _channels_last(grad_h, c), _channels_last(grad_c, c),
                                                   ctx.isa), None)

    torch.library.register_autograd("inik::lstm_cell_forward", _backward, setup_context=_setup_context)
    _ext.forbid_backward("inik::lstm_cell_backward", "the backward of lstm_cell_forward runs PyTorch ops when "
                                                      "its result is differentiated again")

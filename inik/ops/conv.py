"""The model's 3x3 convolution with one pixel of reflect padding, behind one call.

:func:`conv3x3_reflect` computes ``conv2d(pad_reflect1(x), weight, stride=stride)
[+ residual]``, then ReLU if asked, and picks how: on CPU channels_last float32
or bfloat16 input the Winograd op (``inik.ops.winograd``: forward and backward,
residual and ReLU fused), else on the CPU a zero-padded convolution with its
border recomputed (inference), else :func:`reflect_pad1` and ``conv2d`` (always
inside :func:`inik.ops.paths.plain_ops`: PyTorch operators only). Every path
computes the same function; the Winograd one rounds differently (about 3e-6 of
the output's scale).
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from . import paths, winograd

CL = torch.channels_last


def is_channels_last(x: Tensor) -> bool:
    """Whether 4-D ``x`` is laid out channels_last - and not also NCHW-contiguous, as
    tensors with one channel or one pixel are (those take the plain NCHW paths)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=CL)


def reflect_pad1_forward(x: Tensor) -> Tensor:
    """One pixel of reflect padding of channels_last ``x``, written in its layout (no autograd)."""
    h, w = x.shape[-2:]
    out = torch.empty((*x.shape[:-2], h + 2, w + 2), dtype=x.dtype, device=x.device, memory_format=CL)
    out[..., 1:-1, 1:-1] = x
    out[..., 0, 1:-1] = x[..., 1, :]
    out[..., -1, 1:-1] = x[..., -2, :]
    out[..., :, 0] = out[..., :, 2]
    out[..., :, -1] = out[..., :, -3]
    return out


def reflect_pad1_backward(g: Tensor) -> Tensor:
    """Adjoint of :func:`reflect_pad1_forward`: the interior plus each border row and
    column added onto the row or column it reflects (corners through the columns)."""
    gx = g[..., 1:-1, 1:-1].contiguous(memory_format=CL)
    for col, dst in ((0, 1), (-1, -2)):  # out column 0 is x column 1, over every out row
        c = g[..., :, col]
        gx[..., :, dst] += c[..., 1:-1]
        gx[..., 1, dst] += c[..., 0]
        gx[..., -2, dst] += c[..., -1]
    gx[..., 1, :] += g[..., 0, 1:-1]
    gx[..., -2, :] += g[..., -1, 1:-1]
    return gx


@torch.library.custom_op("inik::reflect_pad1", mutates_args=())
def _reflect_pad1_op(x: Tensor) -> Tensor:
    return reflect_pad1_forward(x)


@_reflect_pad1_op.register_fake
def _(x):
    return x.new_empty((*x.shape[:-2], x.shape[-2] + 2, x.shape[-1] + 2)).contiguous(memory_format=CL)


# Its gradient is one copy of the interior plus four border adds; left to autograd, the
# forward's five in-place writes would each clone the whole gradient (CopySlices).
_reflect_pad1_op.register_autograd(lambda ctx, g: reflect_pad1_backward(g.contiguous(memory_format=CL)),
                                   setup_context=lambda ctx, inputs, output: None)


def reflect_pad1(x: Tensor) -> Tensor:
    """``F.pad(x, (1, 1, 1, 1), mode="reflect")`` that keeps x's memory format.

    PyTorch's reflection pad returns an NCHW tensor even for a channels_last
    input, so a channels_last network would pay two layout conversions per
    padded convolution (on a GPU, more time than the convolutions themselves).
    """
    h, w = x.shape[-2:]
    if h < 2 or w < 2 or not is_channels_last(x) or paths.plain():
        return F.pad(x, (1, 1, 1, 1), mode="reflect")
    if torch.is_grad_enabled() and x.requires_grad:
        return _reflect_pad1_op(x)
    return reflect_pad1_forward(x)


def conv3x3_reflect_borders(x: Tensor, weight: Tensor, stride: int) -> Tensor:
    """``F.conv2d(F.pad(x, (1,) * 4, mode="reflect"), weight, stride=stride)`` without
    the padded copy of x: a zero-padded convolution, then the output rows and
    columns that read the padding recomputed from reflect-padded three-pixel strips.
    Inference only (its border writes are in place)."""
    h, w = x.shape[-2:]
    out = F.conv2d(x, weight, None, stride, 1)
    ho, wo = out.shape[-2:]

    def strip(part: Tensor, rows: slice, cols: slice) -> Tensor:
        # In float32: oneDNN's AMX bfloat16 convolution (Intel Xeon, torch 2.14) returns wrong,
        # run-to-run different values (uninitialised memory) for an output one pixel wide at
        # stride 2 - the left and right strips here. The strips are a few pixels: no cost.
        wide = torch.promote_types(out.dtype, torch.float32)  # float64 stays float64
        # (autocast left alone when it is off: each context is a subgraph to torch.export)
        with (torch.autocast(x.device.type, enabled=False) if torch.is_autocast_enabled(x.device.type)
              else contextlib.nullcontext()):
            padded = F.pad(part.to(wide), (1, 1, 1, 1), mode="reflect")[..., rows, cols]
            return F.conv2d(padded, weight.to(wide), None, stride).to(out.dtype)

    # Reflect-padding two rows (a, b) gives (b, a, b, a): its first three rows are the
    # top border's input, its last three the bottom's; the same for columns.
    first, last, every = slice(0, 3), slice(-3, None), slice(None)
    out[..., :1, :] = strip(x[..., :2, :], first, every)
    out[..., :, :1] = strip(x[..., :, :2], every, first)
    if (ho - 1) * stride + 1 >= h:  # the last output row reads the padding row below
        out[..., -1:, :] = strip(x[..., -2:, :], last, every)
    if (wo - 1) * stride + 1 >= w:
        out[..., :, -1:] = strip(x[..., :, -2:], every, last)
    return out


def path(x: Tensor, weight: Tensor, stride: int = 1) -> str:
    """Which way :func:`conv3x3_reflect` computes this convolution: ``"winograd"``,
    ``"borders"`` (CPU inference without Winograd) or ``"pad"`` (reflect_pad1, then conv2d)."""
    if paths.plain():
        return "pad"
    if winograd.eligible(x, weight, stride) or winograd.trainable(x, weight, stride):
        return "winograd"
    # (also under torch.compile, whose graph would otherwise go back to padded copies)
    if x.device.type == "cpu" and min(x.shape[-2:]) >= 2 and not torch.is_grad_enabled() and is_channels_last(x):
        return "borders"
    return "pad"


def conv3x3_reflect(x: Tensor, weight: Tensor, stride: int = 1, relu: bool = False,
                    residual: Optional[Tensor] = None) -> Tensor:
    """``conv2d(reflect_pad1(x), weight, stride=stride) [+ residual]``, then ReLU if ``relu``.

    x (B, C, H, W); weight (Co, C, 3, 3), no bias; residual (B, Co, H', W') like
    the output. Differentiable on every path.
    """
    way = path(x, weight, stride)
    if way == "winograd":
        training = torch.is_grad_enabled()
        # training keeps the float32 GEMM for bfloat16 (bf16_gemm=False): its rounding is
        # fine for inference, not measured for training
        return winograd.conv3x3(x, weight, residual=residual, padding_mode="reflect", relu=relu,
                                bf16_gemm=not training)
    if way == "borders":
        out = conv3x3_reflect_borders(x, weight, stride)
    else:
        out = F.conv2d(reflect_pad1(x), weight, None, stride)
    if residual is not None:
        if out.dtype == residual.dtype and out.shape == residual.shape:
            # into the convolution's fresh output (its backward does not need it): no new
            # full-size buffer, whose first touch page-faults on CPUs
            out = out.add_(residual)
        else:
            out = out + residual
    return F.relu(out, inplace=True) if relu else out

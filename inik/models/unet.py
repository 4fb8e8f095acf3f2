"""The shared U-Net feature extractor and its building blocks (docs/ARCHITECTURE.md section 3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import winograd


def is_channels_last(x: torch.Tensor) -> bool:
    """Whether 4-D ``x`` is laid out channels_last - and not also NCHW-contiguous, as
    tensors with one channel or one pixel are (those take the plain NCHW paths)."""
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _reflect_pad1_forward(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    out = torch.empty((*x.shape[:-2], h + 2, w + 2), dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last)
    out[..., 1:-1, 1:-1] = x
    out[..., 0, 1:-1] = x[..., 1, :]
    out[..., -1, 1:-1] = x[..., -2, :]
    out[..., :, 0] = out[..., :, 2]
    out[..., :, -1] = out[..., :, -3]
    return out


def _reflect_pad1_backward(g: torch.Tensor) -> torch.Tensor:
    """Adjoint of :func:`_reflect_pad1_forward`: the interior plus each border row and
    column added onto the row or column it reflects (corners through the columns)."""
    gx = g[..., 1:-1, 1:-1].contiguous(memory_format=torch.channels_last)
    for col, dst in ((0, 1), (-1, -2)):  # out column 0 is x column 1, over every out row
        c = g[..., :, col]
        gx[..., :, dst] += c[..., 1:-1]
        gx[..., 1, dst] += c[..., 0]
        gx[..., -2, dst] += c[..., -1]
    gx[..., 1, :] += g[..., 0, 1:-1]
    gx[..., -2, :] += g[..., -1, 1:-1]
    return gx


class _ReflectPad1(torch.autograd.Function):
    """Autograd through one interior copy and four border adds. Left to autograd,
    the five in-place writes of the forward would each clone the whole gradient
    (CopySlices) in the backward."""

    @staticmethod
    def forward(ctx, x):
        return _reflect_pad1_forward(x)

    @staticmethod
    def backward(ctx, g):
        return _reflect_pad1_backward(g)


def reflect_pad1(x: torch.Tensor) -> torch.Tensor:
    """``F.pad(x, (1, 1, 1, 1), mode="reflect")`` that keeps x's memory format.

    PyTorch's reflection pad returns an NCHW tensor even for a channels_last
    input, so a channels_last network pays two layout conversions per padded
    convolution (on an H200 the pads and conversions took more GPU time than
    the convolutions themselves). This writes the interior in one copy and the
    one-pixel border from it, in x's own layout; its gradient (a custom autograd
    function) is one copy of the interior plus the borders added back.
    """
    h, w = x.shape[-2:]
    if h < 2 or w < 2 or not is_channels_last(x):
        return F.pad(x, (1, 1, 1, 1), mode="reflect")
    if torch.is_grad_enabled() and x.requires_grad:
        return _ReflectPad1.apply(x)
    return _reflect_pad1_forward(x)


def conv3x3_reflect_borders(x: torch.Tensor, weight: torch.Tensor, stride: int) -> torch.Tensor:
    """``F.conv2d(F.pad(x, (1,) * 4, mode="reflect"), weight, stride=stride)`` without
    the padded copy of x: a zero-padded convolution, then the output rows and
    columns that read the padding recomputed from reflect-padded three-pixel strips.

    For inference on the CPU (no padded copy of every activation); not
    differentiable (its in-place border writes).
    """
    h, w = x.shape[-2:]
    out = F.conv2d(x, weight, None, stride, 1)
    ho, wo = out.shape[-2:]

    def strip(part: torch.Tensor, rows: slice, cols: slice) -> torch.Tensor:
        # In float32: oneDNN's AMX bfloat16 convolution (Intel Xeon, torch 2.14) returns wrong,
        # run-to-run different values (uninitialised memory) for an output one pixel wide at
        # stride 2 - the left and right strips here. The strips are a few pixels: no cost.
        wide = torch.promote_types(out.dtype, torch.float32)  # float64 stays float64
        with torch.autocast(x.device.type, enabled=False):
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


class _WinogradReflectConv(torch.autograd.Function):
    """``F.conv2d(reflect_pad1(x), weight)`` for CPU training: the forward and the input
    gradient as Winograd convolutions (computed in float32, with the float32 GEMM for
    bfloat16 too: ``bf16_gemm=False``), the weight gradient by oneDNN.

    y is the valid correlation of P(x) (P: the reflect pad) with w, so the gradient of
    P(x) is the full correlation of dy with w flipped and transposed - a Winograd
    convolution of dy zero-padded by one pixel, (H+2, W+2) - and P's adjoint folds its
    border back onto x.
    """

    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(x, weight)
        return torch.ops.inik.conv3x3_winograd(x, weight, None, None, "reflect", False, 0, False)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous(memory_format=torch.channels_last)
        gx = gw = None
        if ctx.needs_input_grad[0]:
            padded = F.pad(grad, (1, 1, 1, 1)).contiguous(memory_format=torch.channels_last)
            g_pad = torch.ops.inik.conv3x3_winograd(padded, weight.flip((2, 3)).transpose(0, 1), None, None,
                                                    "zeros", False, 0, False)
            gx = _reflect_pad1_backward(g_pad)
        if ctx.needs_input_grad[1]:  # (under bf16 autocast in bf16, as autocast's convolution would)
            gw = torch.ops.aten.convolution_backward(grad, _reflect_pad1_forward(x), weight.to(grad.dtype), None,
                                                     [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
                                                     [False, True, False])[1].to(weight.dtype)
        return gx, gw


class ReflectConv2d(nn.Conv2d):
    """A 3x3 convolution with one pixel of reflect padding (the same parameters and
    numbers as ``nn.Conv2d(..., padding=1, padding_mode="reflect")``), padded by
    :func:`reflect_pad1` so that channels_last stays channels_last. In CPU
    inference on channels_last input: Winograd's F(4x4, 3x3) or F(6x6, 3x3) where
    :func:`inik.ops.winograd.eligible` allows it (faster, rounding differences of
    about 3e-6; see :mod:`inik.ops.winograd`), else :func:`conv3x3_reflect_borders`.
    ``relu``: a ReLU on the output, fused into the Winograd convolution where it runs."""

    def __init__(self, cin: int, cout: int, stride: int = 1, relu: bool = False):
        super().__init__(cin, cout, 3, stride=stride, padding=0, bias=False)
        self.relu = relu

    def winograd(self, x: torch.Tensor) -> bool:
        """Whether this convolution of x runs as a Winograd convolution (inference)."""
        return winograd.eligible(x, self.weight, self.stride[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.winograd(x):
            return winograd.conv3x3(x, self.weight, padding_mode="reflect", relu=self.relu)
        if winograd.trainable(x, self.weight, self.stride[0]):
            out = _WinogradReflectConv.apply(x, self.weight)
        # (also under torch.compile, whose graph would otherwise go back to padded copies)
        elif (x.device.type == "cpu" and min(x.shape[-2:]) >= 2 and not torch.is_grad_enabled()
                and is_channels_last(x)):
            out = conv3x3_reflect_borders(x, self.weight, self.stride[0])
        else:
            out = F.conv2d(reflect_pad1(x), self.weight, None, self.stride)
        return F.relu(out, inplace=True) if self.relu else out  # on the convolution's fresh output

    def extra_repr(self) -> str:
        return super().extra_repr() + (", relu=True" if self.relu else "")


def conv3x3(cin: int, cout: int, stride: int = 1, relu: bool = False) -> nn.Conv2d:
    """Bias-free 3x3 convolution with reflect padding (``relu``: followed by a ReLU)."""
    return ReflectConv2d(cin, cout, stride, relu)


class ResBlock(nn.Module):
    """conv3x3 + ReLU, conv3x3, plus identity."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv1 = conv3x3(ch, ch)
        self.conv2 = conv3x3(ch, ch)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.conv1.winograd(x):  # then conv2 takes the same kind of input: ReLU and the add fused
            out = winograd.conv3x3(x, self.conv1.weight, padding_mode="reflect", relu=True)
            return winograd.conv3x3(out, self.conv2.weight, residual=x, padding_mode="reflect")
        out = self.conv2(self.act(self.conv1(x)))
        if out.dtype == x.dtype and out.shape == x.shape:
            # into the convolution's output (its backward does not need it): no fresh
            # full-size buffer, whose first touch page-faults on CPUs
            return out.add_(x)
        return x + out


class Stage(nn.Sequential):
    """A convolution with a ReLU (as the authors' BasicConv; without it for
    ``relu=False``, INIKNet revision 1) and two ResBlocks. The ReLU, part of the
    convolution module (fused into its Winograd form), holds no parameters, so both
    variants share one state-dict layout (0: conv, 1 and 2: ResBlocks)."""

    def __init__(self, cin: int, cout: int, stride: int = 1, relu: bool = True):
        super().__init__(conv3x3(cin, cout, stride, relu=relu), ResBlock(cout), ResBlock(cout))

    @property
    def relu(self) -> bool:
        return self[0].relu


class UNet(nn.Module):
    """(B, in_ch, H, W) -> (B, width, H, W) features; H and W must be multiples of 4."""

    def __init__(self, in_ch: int = 3, width: int = 32, stage_relu: bool = True):
        super().__init__()
        w1, w2, w3 = width, 2 * width, 4 * width
        r = stage_relu
        self.enc1 = Stage(in_ch, w1, relu=r)
        self.enc2 = Stage(w1, w2, stride=2, relu=r)
        self.enc3 = Stage(w2, w3, stride=2, relu=r)
        self.up2 = nn.ConvTranspose2d(w3, w2, 4, stride=2, padding=1, bias=False)
        self.dec2 = Stage(2 * w2, w2, relu=r)
        self.up1 = nn.ConvTranspose2d(w2, w1, 4, stride=2, padding=1, bias=False)
        self.dec1 = Stage(2 * w1, w1, relu=r)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r1 = self.enc1(x)
        r2 = self.enc2(r1)
        r3 = self.enc3(r2)
        d2 = self.dec2(torch.cat([self.act(self.up2(r3)), r2], 1))
        return self.dec1(torch.cat([self.act(self.up1(d2)), r1], 1))

"""3x3 convolutions by Winograd's F(4x4, 3x3) and F(6x6, 3x3) on the CPU, for inference and training.

:func:`conv3x3` computes ``conv2d(pad1(x, padding_mode), weight) + bias [+ residual]``,
then ReLU if asked, with the native op ``torch.ops.inik.conv3x3_winograd``
(``csrc/winograd_cpu.cpp``): 36 multiply-adds per input channel for every 4x4
block of outputs instead of 144, or 64 for every 6x6 block instead of 324,
padding applied by index (no padded copy), the residual add and ReLU fused into
the output transform. The op takes F(6x6, 3x3) for images of at least 128x128
pixels, where it needs fewer multiplies, and F(4x4, 3x3) below, where F(6x6)'s
larger transformed weights and partial tiles cost more than they save
(:func:`tile_for` says which; ``tile`` or ``INIK_WINOGRAD_TILE=4|6`` choose).

bfloat16 input is computed in float32 and rounded once, except on CPUs with
AVX512-BF16, where by default (``bf16_gemm=True``) the GEMM takes the transformed
input and weights rounded to bfloat16 and sums their products in float32
(``vdpbf16ps``, twice the float32 FMA rate): faster, at a larger rounding error
per convolution than oneDNN's bf16 convolution, without a measurable change in
the default model's output quality. Training keeps the float32 GEMM. The kernel
is picked at run time for the CPU's instruction set (:func:`isa`: 16-lane
AVX-512 with or without AVX512-BF16, 8-lane AVX2, or a generic build).

Numerics: Winograd's transforms round more than a direct convolution - about
3e-6 of the output's scale in float32, 5-15x oneDNN's error, for F(4x4, 3x3),
about twice that for F(6x6, 3x3) - and it can be
switched off: :func:`enabled` reads ``INIK_WINOGRAD`` (``1``: on, ``0``: off,
unset or ``auto``: on for CPUs with AVX2 or AVX-512, where it is faster than
oneDNN, off elsewhere, e.g. on ARM). The model's convolutions
(:func:`inik.ops.conv.conv3x3_reflect`) take it where :func:`eligible` (CPU
inference) or :func:`trainable` (CPU training) allow: channels_last input,
float32 or bfloat16 (autocast's dtype when autocast is on), stride 1, at least
16 input channels. Its backward computes the input gradient as a Winograd
convolution too. Speed and accuracy figures, with their machines and commands:
``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import settings
from . import _ext

ENV = "INIK_WINOGRAD"
TILE_ENV = "INIK_WINOGRAD_TILE"  # "4" or "6": fixes tile=0's choice
WEIGHT_GRAD_ENV = "INIK_CONV_WEIGHT_GRAD"  # "winograd" (unset) or "onednn": the float32 weight gradient's way
MIN_CHANNELS = 16  # below this the transforms cost more than they save
_DTYPES = (torch.float32, torch.bfloat16)
_MODES = ("zeros", "reflect")
TILES = (4, 6)  # output tile sides: F(4x4, 3x3) and F(6x6, 3x3)
# read once: torch.compile cannot trace the call (it returns a string)
_AUTO = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")

if _ext.is_built():
    @torch.library.register_fake("inik::conv3x3_winograd")
    def _(x, weight, bias, residual, padding_mode, relu, tile=0, bf16_gemm=True, isa=""):
        op = "conv3x3_winograd"
        _ext.check_fake(op, x=x, weight=weight, bias=bias, residual=residual)
        torch._check(x.dim() == 4 and weight.dim() == 4 and tuple(weight.shape[1:]) == (x.shape[1], 3, 3),
                     lambda: f"{op}: x must be (B, C, H, W) and weight (Co, C, 3, 3), got {tuple(x.shape)} "
                             f"and {tuple(weight.shape)}")
        torch._check(x.dtype in _DTYPES, lambda: f"{op}: x must be float32 or bfloat16, got {x.dtype}")
        torch._check(x.is_contiguous(memory_format=torch.channels_last),
                     lambda: f"{op}: x must be channels_last-contiguous")
        torch._check(weight.is_floating_point(),
                     lambda: f"{op}: weight must be a floating-point CPU tensor, got {weight.dtype}")
        out_shape = (x.shape[0], weight.shape[0], x.shape[2], x.shape[3])
        torch._check(bias is None or tuple(bias.shape) == (weight.shape[0],),
                     lambda: f"{op}: bias must be ({weight.shape[0]},), got {tuple(bias.shape)}")
        torch._check(residual is None or (tuple(residual.shape) == out_shape and residual.dtype == x.dtype
                                          and residual.is_contiguous(memory_format=torch.channels_last)),
                     lambda: f"{op}: residual must be a channels_last-contiguous tensor of shape {out_shape} "
                             f"and dtype {x.dtype}, got {tuple(residual.shape)}, {residual.dtype}")
        torch._check(padding_mode in _MODES, lambda: f"{op}: padding_mode must be one of {_MODES}")
        torch._check(padding_mode != "reflect" or (x.shape[2] >= 2 and x.shape[3] >= 2),
                     lambda: f"{op}: reflect padding needs H and W of at least 2, got {tuple(x.shape)}")
        torch._check(tile in (0,) + TILES, lambda: f"{op}: tile must be 0 or one of {TILES}, got {tile}")
        return x.new_empty(out_shape).contiguous(memory_format=torch.channels_last)

    @torch.library.register_fake("inik::conv3x3_winograd_weight_grad")
    def _(x, grad, padding_mode, isa="", chunk=0):
        op = "conv3x3_winograd_weight_grad"
        _ext.check_fake(op, x=x, grad=grad)
        torch._check(x.dim() == 4 and grad.dim() == 4 and x.shape[0] == grad.shape[0]
                     and x.shape[2:] == grad.shape[2:],
                     lambda: f"{op}: x (B, Ci, H, W) and grad (B, Co, H, W) must match, got {tuple(x.shape)} "
                             f"and {tuple(grad.shape)}")
        torch._check(x.dtype == torch.float32 and grad.dtype == torch.float32,
                     lambda: f"{op}: x and grad must be float32, got {x.dtype} and {grad.dtype}")
        torch._check(padding_mode in _MODES, lambda: f"{op}: padding_mode must be one of {_MODES}")
        return x.new_empty(grad.shape[1], x.shape[1], 3, 3)

    _ext.forbid_backward("inik::conv3x3_winograd_weight_grad",
                         "a backward with create_graph=True takes oneDNN's weight gradient instead")

    def _setup_context(ctx, inputs, output):
        x, weight, bias, residual, padding_mode, relu, tile, bf16_gemm, isa = inputs
        ctx.save_for_backward(x, weight, output if relu else None)
        ctx.padding_mode, ctx.isa, ctx.bias_dtype = padding_mode, isa, None if bias is None else bias.dtype
        ctx.tile = int(settings.get(TILE_ENV) or 0)  # INIK_WINOGRAD_TILE holds for the backward too

    def _backward(ctx, grad):
        """Gradients of y = act(conv(P(x), w) + b + r): the input's is the full correlation
        of dy with w flipped and transposed (a Winograd convolution of dy zero-padded by one
        pixel), folded back by P's adjoint for reflect padding; the weight's in float32 by the
        Winograd weight-gradient op (padding by index; faster than oneDNN's: RESULTS.md), in
        bfloat16 or with create_graph=True (a differentiable one) oneDNN's (in dy's dtype, as
        autocast's convolution computes it; on NCHW copies without AVX-512)."""
        from .conv import reflect_pad1_backward

        x, weight, y = ctx.saved_tensors
        g = grad if y is None else grad * (y > 0)
        g = g.to(x.dtype).contiguous(memory_format=torch.channels_last)
        reflect = ctx.padding_mode == "reflect"
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            w_t = weight.flip((2, 3)).transpose(0, 1)
            if reflect:
                padded = F.pad(g, (1, 1, 1, 1)).contiguous(memory_format=torch.channels_last)
                gx = reflect_pad1_backward(torch.ops.inik.conv3x3_winograd(padded, w_t, None, None, "zeros", False,
                                                                           ctx.tile, False, ctx.isa))
            else:
                gx = torch.ops.inik.conv3x3_winograd(g, w_t, None, None, "zeros", False, ctx.tile, False, ctx.isa)
        if ctx.needs_input_grad[1] and g.dtype == torch.float32 and not torch.is_grad_enabled() \
                and settings.get(WEIGHT_GRAD_ENV) != "onednn":
            gw = torch.ops.inik.conv3x3_winograd_weight_grad(x, g, ctx.padding_mode, ctx.isa).to(weight.dtype)
        elif ctx.needs_input_grad[1]:
            gw = onednn_weight_grad(x, g, weight, ctx.padding_mode, ctx.isa).to(weight.dtype)
        if ctx.needs_input_grad[2]:
            gb = g.sum((0, 2, 3), dtype=torch.float32).to(ctx.bias_dtype)
        gr = g if ctx.needs_input_grad[3] else None
        return gx, gw, gb, gr, None, None, None, None, None

    torch.library.register_autograd("inik::conv3x3_winograd", _backward, setup_context=_setup_context)


def onednn_weight_grad(x: Tensor, g: Tensor, weight: Tensor, padding_mode: str, isa: str = "") -> Tensor:
    """dL/dweight of the padded 3x3 convolution by oneDNN, in g's dtype, as the op's
    backward takes it where the Winograd weight gradient does not apply."""
    from .conv import reflect_pad1_forward

    source, pad = (reflect_pad1_forward(x), 0) if padding_mode == "reflect" else (x, 1)
    gs, ws = g, weight.to(g.dtype)
    if _nchw_weight_grad(isa):  # (all three: a channels_last weight makes oneDNN's choice channels_last)
        source, gs, ws = source.contiguous(), g.contiguous(), ws.contiguous()
    return torch.ops.aten.convolution_backward(gs, source, ws, None, [1, 1], [pad, pad],
                                               [1, 1], False, [0, 0], 1, [False, True, False])[1]


@functools.lru_cache(maxsize=None)
def _nchw_weight_grad(isa_name: str) -> bool:
    """Whether the weight gradient runs on NCHW copies: on CPUs without AVX-512, oneDNN's
    channels_last weight gradient is slower than its NCHW one with both conversions."""
    return torch.ops.inik.conv3x3_winograd_isa(isa_name) in ("avx2", "generic")


def isa() -> str:
    """The instruction set of the kernel that runs on this CPU: ``"avx512_bf16"``,
    ``"avx512"``, ``"avx2"`` or ``"generic"`` (``INIK_CPU_ISA`` may ask for a lesser one,
    for tests and timings; ``avx512_bf16`` differs from ``avx512`` in the bfloat16 GEMM only)."""
    if not _ext.is_built():
        raise RuntimeError(f"inik.ops.winograd needs the C++ extension: {_ext.build_hint()}")
    return torch.ops.inik.conv3x3_winograd_isa(_ext.cpu_isa())


def tile_for(height: int, width: int) -> int:
    """The output tile side (4 or 6) :func:`conv3x3` with ``tile=0`` uses for a
    ``height x width`` image (``INIK_WINOGRAD_TILE`` may fix it, for tests and timings)."""
    if not _ext.is_built():
        raise RuntimeError(f"inik.ops.winograd needs the C++ extension: {_ext.build_hint()}")
    return int(settings.get(TILE_ENV) or 0) or torch.ops.inik.conv3x3_winograd_tile(int(height), int(width))


def enabled() -> bool:
    """Whether the model may use Winograd convolutions here (``INIK_WINOGRAD``)."""
    value = settings.get(ENV)
    return _AUTO if value is None else value


def _autocast_dtype(x: Tensor) -> torch.dtype:
    """The dtype a convolution of x computes in: autocast's on the CPU for the dtypes
    autocast casts (float32, float16, bfloat16; float64 stays, as for conv2d), else x's."""
    if (x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
            and x.dtype in (torch.float32, torch.float16, torch.bfloat16)):
        return torch.get_autocast_dtype("cpu")
    return x.dtype


def _fits(x: Tensor, weight: Tensor, stride: int) -> bool:
    """The conditions :func:`eligible` and :func:`trainable` share: a CPU channels_last
    float32/bfloat16 input (in autocast's dtype when autocast is on), a 3x3 stride-1
    convolution with at least MIN_CHANNELS inputs, the extension built, Winograd enabled."""
    return (x.device.type == "cpu" and x.dim() == 4 and stride == 1 and tuple(weight.shape[2:]) == (3, 3)
            and x.shape[1] >= MIN_CHANNELS and min(x.shape[2:]) >= 2 and x.dtype in _DTYPES
            and _autocast_dtype(x) == x.dtype and x.is_contiguous(memory_format=torch.channels_last)
            and _ext.is_built() and enabled())


def eligible(x: Tensor, weight: Tensor, stride: int = 1) -> bool:
    """Whether the model's 3x3 convolution of x can run as :func:`conv3x3` (see the module doc)."""
    return not torch.is_grad_enabled() and _fits(x, weight, stride)


def trainable(x: Tensor, weight: Tensor, stride: int = 1) -> bool:
    """Whether the model's reflect 3x3 convolution of x trains with Winograd: CPU training
    (autograd on) under the same conditions as :func:`eligible` - float32, or bfloat16
    under bf16 autocast; the forward and the input gradient are Winograd convolutions,
    the weight gradient oneDNN's (:func:`inik.ops.conv.conv3x3_reflect`)."""
    return (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad) and not torch.compiler.is_compiling()
            and weight.shape[0] >= MIN_CHANNELS and weight.dtype in _DTYPES and _fits(x, weight, stride))


def conv3x3(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, residual: Optional[Tensor] = None,
            padding_mode: str = "zeros", relu: bool = False, tile: int = 0, bf16_gemm: bool = True) -> Tensor:
    """``conv2d(pad1(x), weight, bias) (+ residual)``, then ReLU if ``relu``, on the CPU.

    x: (B, C, H, W) float32 or bfloat16 on the CPU (any layout; channels_last
    avoids a copy); weight (Co, C, 3, 3); bias (Co,); residual (B, Co, H, W).
    Under CPU autocast the computation follows autocast's dtype, as ``conv2d``
    would. ``tile``: the output tile side, 4 for F(4x4, 3x3), 6 for F(6x6, 3x3),
    0 (default) for the one the op picks for the image's size (:data:`TILES`).
    ``bf16_gemm``: for bfloat16 on a CPU with AVX512-BF16, multiply in bfloat16
    (faster, larger rounding: see the module doc); ``False`` keeps the float32 GEMM.
    Differentiable in x, weight, bias and residual (the input gradient is a Winograd
    convolution too, with the float32 GEMM). Returns a channels_last tensor.
    """
    if not _ext.is_built():
        raise RuntimeError(f"inik.ops.winograd.conv3x3 needs the C++ extension: {_ext.build_hint()}")
    if not isinstance(x, Tensor) or not isinstance(weight, Tensor):
        raise TypeError("conv3x3: x and weight must be tensors")
    for name, t in (("x", x), ("residual", residual)):
        if isinstance(t, Tensor) and t.dim() != 4:  # (laid out channels_last below)
            raise ValueError(f"conv3x3: {name} must be 4-D (B, C, H, W), got shape {tuple(t.shape)}")
    if tile not in (0,) + TILES:
        raise ValueError(f"conv3x3: tile must be 0 (automatic) or one of {TILES}, got {tile!r}")
    if padding_mode not in _MODES:
        raise ValueError(f"conv3x3: padding_mode must be one of {_MODES}, got {padding_mode!r}")
    dtype = _autocast_dtype(x)
    if dtype not in _DTYPES:
        raise TypeError(f"conv3x3: x must be float32 or bfloat16 (or autocast to them), got {dtype}")
    cl = torch.channels_last
    x = x.to(dtype).contiguous(memory_format=cl)
    if residual is not None:
        residual = residual.to(dtype).contiguous(memory_format=cl)
    tile = int(tile or settings.get(TILE_ENV) or 0)
    return torch.ops.inik.conv3x3_winograd(x, weight, bias, residual, padding_mode, bool(relu), tile,
                                           bool(bf16_gemm), _ext.cpu_isa())

"""The shared U-Net feature extractor and its building blocks (docs/ARCHITECTURE.md section 3)."""

from __future__ import annotations

import torch
from torch import nn

# conv3x3_reflect_borders, is_channels_last, reflect_pad1: moved to inik.ops.conv, importable here too
from ..ops.conv import conv3x3_reflect, conv3x3_reflect_borders, is_channels_last, reflect_pad1  # noqa: F401


class ReflectConv2d(nn.Conv2d):
    """A bias-free 3x3 convolution with one pixel of reflect padding (the parameters and
    numbers of ``nn.Conv2d(..., padding=1, padding_mode="reflect")``), then a ReLU if
    ``relu``, computed by :func:`inik.ops.conv.conv3x3_reflect`, which keeps
    channels_last and fuses the ReLU and a residual where it can."""

    def __init__(self, cin: int, cout: int, stride: int = 1, relu: bool = False):
        super().__init__(cin, cout, 3, stride=stride, padding=0, bias=False)
        self.relu = relu

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        return conv3x3_reflect(x, self.weight, self.stride[0], self.relu, residual)

    def extra_repr(self) -> str:
        return super().extra_repr() + (", relu=True" if self.relu else "")


def conv3x3(cin: int, cout: int, stride: int = 1, relu: bool = False) -> nn.Conv2d:
    """Bias-free 3x3 convolution with reflect padding (``relu``: followed by a ReLU)."""
    return ReflectConv2d(cin, cout, stride, relu)


class ResBlock(nn.Module):
    """conv3x3 + ReLU, conv3x3, plus identity."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv1 = conv3x3(ch, ch, relu=True)
        self.conv2 = conv3x3(ch, ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x), residual=x)


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

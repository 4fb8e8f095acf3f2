"""Scale-recurrent sub-networks: ConvLSTM cells over the pyramid levels (docs/ARCHITECTURE.md section 3)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.conv import is_channels_last
from ..ops.lstm import lstm_pointwise
from .unet import ResBlock

State = tuple[torch.Tensor, torch.Tensor]


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel dimension of (B, C, H, W), layout-agnostic."""

    def __init__(self, ch: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ch))
        self.bias = nn.Parameter(torch.zeros(ch))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) * torch.rsqrt(var + self.eps)
        # in x's dtype: under autocast x is bf16/fp16 while the parameters stay fp32
        return x * self.weight[:, None, None].to(x.dtype) + self.bias[:, None, None].to(x.dtype)


class ConvLSTMCell(nn.Module):
    """concat [input, h] -> 2 ResBlocks -> 1x1 conv (with bias) -> gates i, f, o, g."""

    def __init__(self, in_ch: int, hidden: int):
        super().__init__()
        ch = in_ch + hidden
        self.body = nn.Sequential(ResBlock(ch), ResBlock(ch))
        self.gates = nn.Conv2d(ch, 4 * hidden, 1)
        self.hidden = hidden

    def forward(self, x: torch.Tensor, state: Optional[State]) -> State:
        if state is None:
            # in x's memory format: an NCHW zero state would make the cat below NCHW,
            # and every layer after it would convert back and forth (channels_last models)
            zeros = torch.empty((x.shape[0], self.hidden, *x.shape[2:]), dtype=x.dtype, device=x.device,
                                memory_format=torch.channels_last if is_channels_last(x)
                                else torch.contiguous_format).zero_()
            state = (zeros, zeros)
        h, c = state
        # i, f, o, g gates -> c = s(f) c + s(i) tanh(g), h = s(o) tanh(c); fused on the CPU
        return lstm_pointwise(self.gates(self.body(torch.cat([x, h], 1))), c)


def _resize_state(state: State, size: Sequence[int]) -> State:
    return tuple(F.interpolate(t, size=tuple(size), mode="bilinear", align_corners=False) for t in state)


def _recur(cell: ConvLSTMCell, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Run ``cell`` over ``inputs`` in order, carrying (h, c) resized bilinearly between levels."""
    state, hidden = None, []
    for x in inputs:
        if state is not None:
            state = _resize_state(state, x.shape[-2:])
        state = cell(x, state)
        hidden.append(state[0])
    return hidden


class DuplexRecurrence(nn.Module):
    """Fine-to-coarse then coarse-to-fine ConvLSTM passes over the levels' features.

    ``forward`` takes the levels' (B, width, H_l, W_l) features coarse to fine and
    returns, per level, the features plus the second pass's hidden state.
    """

    def __init__(self, width: int = 32):
        super().__init__()
        self.norm = ChannelLayerNorm(width)
        self.down_pass = ConvLSTMCell(width, width)
        self.up_pass = ConvLSTMCell(width, width)

    def forward(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        normed = [self.norm(f) for f in feats]
        first = _recur(self.down_pass, normed[::-1])[::-1]  # fine -> coarse, re-ordered coarse -> fine
        second = _recur(self.up_pass, first)
        return [f + h for f, h in zip(feats, second)]


class UnidirectionalRecurrence(nn.Module):
    """The paper's "Unidirectional" ablation: one coarse-to-fine ConvLSTM pass.

    Unlike the duplex form it is causal over levels, so it can run one level at
    a time: ``step(feat, state) -> (out, state)``.
    """

    def __init__(self, width: int = 32):
        super().__init__()
        self.norm = ChannelLayerNorm(width)
        self.cell = ConvLSTMCell(width, width)

    def step(self, feat: torch.Tensor, state: Optional[State]) -> tuple[torch.Tensor, State]:
        if state is not None:
            state = _resize_state(state, feat.shape[-2:])
        state = self.cell(self.norm(feat), state)
        return feat + state[0], state

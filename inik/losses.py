"""The training loss of INIKNet (paper, Sec. 4.3; docs/ARCHITECTURE.md section 4).

Summed over the three output levels (coarse to fine), each compared with the
ground truth bilinearly downsampled to that level's size:

    loss = w_mse  * MSE(x, y)
         + w_freq * (mean |Re(F(x) - F(y))| + mean |Im(F(x) - F(y))|)   F = 2-D FFT
         + w_lpips * LPIPS_AlexNet(2x - 1, 2y - 1)
         + w_vgg  * sum_l mean |VGG19_l(x) - VGG19_l(y)|      (off by default)

Defaults: 1, 0.1, 0.1, 0. The VGG-19 term (the authors' training script,
not the paper) uses the features after the 2nd, 4th and 7th convolutions,
before their ReLU, of ImageNet-normalised inputs.

LPIPS and VGG need torchvision's ImageNet weights in the torch hub cache; they
are never downloaded from here: a missing file raises
:class:`MissingWeightsError` saying which file to put where. A term whose
weight is 0 is never built.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import first_line

__all__ = [
    "LPIPS_MIN_SIZE",
    "MissingWeightsError",
    "hub_weights_path",
    "build_lpips",
    "VGG19Features",
    "frequency_loss",
    "downsample_to",
    "INIKLoss",
]


#: Smallest image side AlexNet's LPIPS layers accept (11x11/4 conv, two 3x3/2 pools).
LPIPS_MIN_SIZE = 31


class MissingWeightsError(FileNotFoundError):
    """Pretrained backbone weights are not in the torch hub cache, or the file there
    is not such weights (a command then goes on without them where it can)."""


_WEIGHTS = {
    # name: (torchvision weights enum name, what it is for, how to go without)
    "alexnet": ("AlexNet_Weights", "LPIPS (AlexNet backbone)",
                "go without LPIPS: `inik train --lpips-weight 0`, `inik eval --lpips off`"),
    "vgg19": ("VGG19_Weights", "the VGG-19 feature loss", "train without it: --vgg-weight 0 (the default)"),
}


def hub_weights_path(arch: str) -> tuple[str, str]:
    """``(path, url)`` of torchvision's ImageNet weights for ``arch``
    (``"alexnet"`` or ``"vgg19"``) in the torch hub cache
    (``$TORCH_HOME/hub/checkpoints``, by default ``~/.cache/torch/hub/checkpoints``)."""
    import torchvision.models as tvm

    enum_name = _WEIGHTS[arch][0]
    url = getattr(tvm, enum_name).IMAGENET1K_V1.url
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url)), url


def _require_weights(arch: str) -> None:
    path, url = hub_weights_path(arch)
    if not os.path.isfile(path):
        _, purpose, without = _WEIGHTS[arch]
        raise MissingWeightsError(
            f"{purpose} needs torchvision's ImageNet {arch} weights, which are not in the torch hub cache. "
            f"Put the file {os.path.basename(path)} (downloadable from {url}) at {path} "
            f"(the folder is $TORCH_HOME/hub/checkpoints), or {without}."
        )


def _backbone_state(arch: str) -> dict:
    """The state dict in the hub file of ``arch``, read with ``weights_only=True``
    (tensors and containers only: a file that holds anything else is refused, and
    nothing in it runs); MissingWeightsError naming the file when it is not such a state dict."""
    path, url = hub_weights_path(arch)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a refused pickle, a truncated or foreign file
        first = first_line(exc)
        raise MissingWeightsError(f"{path}: not torchvision's {arch} weights ({first}); replace it with the "
                                  f"file from {url}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()) \
            or not all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point()):
        raise MissingWeightsError(f"{path}: not torchvision's {arch} weights (not a state dict); replace it "
                                  f"with the file from {url}")
    return state


def _load_backbone(module: nn.Module, state: dict, arch: str) -> None:
    """``module.load_state_dict(state)``; MissingWeightsError naming the hub file when the
    file's tensors are not ``arch``'s (other names or shapes)."""
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        path, url = hub_weights_path(arch)
        first = first_line(exc)
        raise MissingWeightsError(f"{path}: not torchvision's {arch} weights ({first}); replace it with the "
                                  f"file from {url}") from None


def build_lpips(net: str = "alex", pretrained_backbone: bool = True) -> nn.Module:
    """An ``lpips.LPIPS`` module, frozen and in eval mode, expecting inputs in [-1, 1].

    Args:
        net: ``"alex"`` (the paper's choice).
        pretrained_backbone: load the ImageNet backbone from the torch hub cache
            (raises :class:`MissingWeightsError` if absent, never downloads).
            False gives a random backbone: only for testing the wiring; its
            values mean nothing. The linear calibration layers ship with the
            ``lpips`` package and are always loaded.
    """
    import lpips

    if net != "alex":
        raise ValueError(f"only net='alex' is supported; got {net!r}")
    if pretrained_backbone:
        _require_weights("alexnet")
    with warnings.catch_warnings():
        # lpips asks torchvision for weights with the deprecated `pretrained=` argument
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
        # a random backbone first: torchvision would read the hub file as a full pickle
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    if pretrained_backbone:
        features = {k.split(".", 1)[1]: v for k, v in _backbone_state("alexnet").items() if k.startswith("features.")}
        for part in (model.net.slice1, model.net.slice2, model.net.slice3, model.net.slice4, model.net.slice5):
            for name, layer in part.named_children():  # lpips keeps torchvision's layer numbers as names
                _load_backbone(layer, {k.split(".", 1)[1]: v for k, v in features.items()
                                       if k.split(".", 1)[0] == name}, "alexnet")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class VGG19Features(nn.Module):
    """VGG-19 features after the 2nd, 4th and 7th convolutions (before ReLU).

    Input ``(B, 3, H, W)`` in [0, 1], fed as it is (not ImageNet-normalised), as
    the authors' training script feeds it; output a list
    of three tensors with 64, 128 and 256 channels at full, 1/2 and 1/4 size.
    ``pretrained=False`` (random weights) is for tests only."""

    _TAPS = (2, 7, 14)  # indices of conv 2, 4 and 7 in torchvision's vgg19().features

    def __init__(self, pretrained: bool = True):
        super().__init__()
        import torchvision.models as tvm

        if pretrained:
            _require_weights("vgg19")
            vgg = tvm.vgg19()
            _load_backbone(vgg, _backbone_state("vgg19"), "vgg19")
        else:
            vgg = tvm.vgg19()
        self.features = vgg.features[: self._TAPS[-1] + 1].eval()
        for m in self.features:
            if isinstance(m, nn.ReLU):
                m.inplace = False  # an in-place ReLU would overwrite the tapped conv outputs
        for p in self.features.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self._TAPS:
                out.append(x)
        return out


def frequency_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``mean |Re(F(x) - F(y))| + mean |Im(F(x) - F(y))|``, F the 2-D FFT over
    the last two dims (unnormalised, as ``torch.fft.fft2``); means over all
    elements. ``x``, ``y``: ``(B, C, H, W)`` float."""
    d = torch.fft.fft2(x.float() - y.float())  # F is linear: F(x) - F(y) = F(x - y)
    return d.real.abs().mean() + d.imag.abs().mean()


def downsample_to(y: torch.Tensor, size) -> torch.Tensor:
    """Bilinear resize of ``(B, C, H, W)`` to ``size`` (h, w), as the model's
    input pyramid (``align_corners=False``, no antialiasing)."""
    if tuple(y.shape[-2:]) == tuple(size):
        return y
    return F.interpolate(y, size=tuple(size), mode="bilinear", align_corners=False)


class INIKLoss(nn.Module):
    """Multi-level INIKNet loss.

    Args:
        mse_weight, freq_weight, lpips_weight, vgg_weight: term weights
            (paper: 1, 0.1, 0.1; VGG 0 = off). A zero weight never builds its
            network.
        pretrained_backbones: load ImageNet backbones for LPIPS / VGG from the
            torch hub cache (False: random backbones, for wiring tests only).

    ``forward(outputs, target)``: ``outputs`` a sequence of ``(B, 3, h_l, w_l)``
    (e.g. ``INIKNet.forward_levels``, coarse to fine) or one tensor; ``target``
    ``(B, 3, H, W)`` in [0, 1]. Returns ``(total, terms)``: the scalar loss and
    a dict of detached per-term sums over levels (``mse``, ``freq``, ``lpips``,
    ``vgg``; only the enabled ones) for logging.
    """

    def __init__(
        self,
        mse_weight: float = 1.0,
        freq_weight: float = 0.1,
        lpips_weight: float = 0.1,
        vgg_weight: float = 0.0,
        *,
        pretrained_backbones: bool = True,
    ):
        super().__init__()
        for name, w in (("mse", mse_weight), ("freq", freq_weight), ("lpips", lpips_weight), ("vgg", vgg_weight)):
            if w < 0:
                raise ValueError(f"{name}_weight must be >= 0; got {w}")
        self.weights = {"mse": mse_weight, "freq": freq_weight, "lpips": lpips_weight, "vgg": vgg_weight}
        self.lpips = build_lpips("alex", pretrained_backbones) if lpips_weight > 0 else None
        self.vgg = VGG19Features(pretrained_backbones) if vgg_weight > 0 else None

    def level_terms(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unweighted terms for one level; ``x``, ``y`` the same shape."""
        terms = {}
        if self.weights["mse"] > 0:
            terms["mse"] = F.mse_loss(x.float(), y.float())
        if self.weights["freq"] > 0:
            terms["freq"] = frequency_loss(x, y)
        if self.lpips is not None:
            if min(x.shape[-2:]) < LPIPS_MIN_SIZE:
                raise ValueError(
                    f"LPIPS (AlexNet) needs every level at least {LPIPS_MIN_SIZE}x{LPIPS_MIN_SIZE} px; got a "
                    f"{x.shape[-2]}x{x.shape[-1]} level (the coarsest level is 1/4 of the crop): use crops of at "
                    f"least {4 * LPIPS_MIN_SIZE} px or --lpips-weight 0"
                )
            terms["lpips"] = self.lpips(x.float() * 2 - 1, y.float() * 2 - 1).mean()
        if self.vgg is not None:
            terms["vgg"] = sum(F.l1_loss(a, b) for a, b in zip(self.vgg(x.float()), self.vgg(y.float())))
        return terms

    def forward(self, outputs, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if isinstance(outputs, torch.Tensor):
            outputs = [outputs]
        if not isinstance(outputs, Sequence) or not outputs:
            raise TypeError("outputs must be a tensor or a non-empty sequence of (B, 3, h, w) tensors")
        total = target.new_zeros((), dtype=torch.float32)
        sums: dict[str, torch.Tensor] = {}
        for x in outputs:
            if x.shape[:2] != target.shape[:2]:
                raise ValueError(f"output of shape {tuple(x.shape)} does not match target {tuple(target.shape)} "
                                 f"in batch/channels")
            y = downsample_to(target, x.shape[-2:])
            for name, value in self.level_terms(x, y).items():
                total = total + self.weights[name] * value
                sums[name] = sums.get(name, 0) + value.detach()
        return total, sums

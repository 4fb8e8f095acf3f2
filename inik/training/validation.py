"""Validation during training (PSNR; with TensorBoard also SSIM and images) and the
TensorBoard writer."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..models import INIKNet

log = logging.getLogger("inik")


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    mse = F.mse_loss(x.clamp(0, 1).float(), y.float()).item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


@torch.no_grad()
def validation_outputs(model: INIKNet, pairs, device) -> list[torch.Tensor]:
    """The model's (3, H, W) output, on the CPU, for each (blurry, sharp) pair."""
    model.eval()
    return [model(b[None].to(device))[0].float().cpu() for b, _ in pairs]


def validate(model: INIKNet, pairs, device) -> float:
    """Mean PSNR of the model's output over (blurry, sharp) pairs."""
    return validate_and_show(model, pairs, device, None, 0)


#: validation images shown in TensorBoard, and their height at most [px]
SHOWN_IMAGES, SHOWN_HEIGHT = 3, 128


def validate_and_show(model: INIKNet, pairs, device, board, it: int) -> float:
    """Mean validation PSNR; to TensorBoard (``board``, unless None) also that, the mean
    SSIM and the first few pairs as blurry | output | sharp strips."""
    outputs = validation_outputs(model, pairs, device)
    val_psnr = float(np.mean([psnr(o, s) for o, (_, s) in zip(outputs, pairs)]))
    if board is not None:
        from ..metrics import ssim
        board.add_scalar("psnr/val", val_psnr, it)
        board.add_scalar("ssim/val", float(np.mean([ssim(o, s, backend="torch") for o, (_, s) in zip(outputs, pairs)])),
                         it)
        for i, (o, (b, s)) in enumerate(zip(outputs[:SHOWN_IMAGES], pairs)):
            strip = torch.cat([b.float(), o.clamp(0, 1), s.float()], dim=-1)[None]
            if strip.shape[-2] > SHOWN_HEIGHT:
                strip = F.interpolate(strip, scale_factor=SHOWN_HEIGHT / strip.shape[-2], mode="bilinear",
                                      antialias=True).clamp(0, 1)
            board.add_image(f"val/{i}", strip[0], it)
        board.flush()
    return val_psnr


def tensorboard_writer(out: Path, start: int):
    """A SummaryWriter into ``OUT`` (event files beside log.csv), or None (and a line
    saying how to get one) without the tensorboard package. Its first event drops what
    earlier event files logged past ``start``, the iteration this run starts from."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("no TensorBoard logs (log.csv only): pip install 'inik[tensorboard]' to get them in %s",
                    out)
        return None
    return SummaryWriter(str(out), purge_step=start + 1, flush_secs=10)

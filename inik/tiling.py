"""Tiled inference: any photo size in bounded memory, tiles blended over their overlaps."""

from __future__ import annotations

import numbers
from typing import Optional

import torch

from .models import INIKNet
from .models.iniknet import MULTIPLE, pad_to_valid

# Default tile overlap in pixels. How far a tile's border disturbs its output is a
# property of the network (its coarsest level works at 1/16 resolution, where
# one pixel is 16 px of the photo, and the cascade's coarsest inverse kernels span
# 60 px of it), not of the tile size: with the default weights it falls below one
# level of 255 from 120 px inside a tile's inner edge
# (benchmarks/tile_error.py; figures in benchmarks/RESULTS.md). A 288-px overlap
# keeps every used pixel >= 126 px from the edge of the tile it comes from.
DEFAULT_OVERLAP = 288


def _window(n: int, overlap: int, lo_edge: bool, hi_edge: bool) -> torch.Tensor:
    """1-D blending weights of a tile of length n.

    On a side shared with a neighbour, the outer 7/16 of the overlap gets
    weight 0 (a tile's own border, where its padding differs from the real
    neighbourhood, is never used) and the middle eighth ramps linearly to 1;
    the neighbour's weights mirror these, so the weights of every pixel sum to
    1. Sides at the image border keep weight 1.
    """
    w = torch.ones(n)
    if overlap > 0:
        z = 7 * overlap // 16
        d = torch.arange(n, dtype=torch.float32)
        ramp = lambda dist: ((dist + 1 - z) / (overlap - 2 * z + 1)).clamp(0, 1)  # noqa: E731
        if not lo_edge:
            w = torch.minimum(w, ramp(d))
        if not hi_edge:
            w = torch.minimum(w, ramp(n - 1 - d))
    return w


# Smallest tile: a tile's output depends on what the network sees around each
# pixel, so small tiles change the result whatever the blending. The pixels a
# tile contributes lie at least 7/16 of the overlap inside it; the default
# overlap, min(288, 3/4 of the tile), gives 126 px for tiles of 384 px and up
# (under one level of 255, DEFAULT_OVERLAP's note) and less for smaller ones.
MIN_TILE = 384


def check_tiling(tile, overlap, *, names: tuple[str, str] = ("tile", "overlap")) -> None:
    """Validate ``tile`` (None: automatic, 0: whole image, else at least MIN_TILE
    pixels, rounded down to a multiple of 16) and ``overlap`` (None: default, else
    0 to 3/4 of the tile - of AUTO_TILE when ``tile`` is None), whatever the
    image size; ValueError naming the argument (``names``: as the caller calls them)."""
    tname, oname = names
    if tile is not None and (isinstance(tile, bool) or not isinstance(tile, numbers.Integral)
                             or (tile != 0 and tile < MIN_TILE)):
        raise ValueError(f"{tname} must be None (automatic), 0 (whole image) or at least {MIN_TILE} pixels "
                         f"(smaller tiles change the result), got {tile!r}" if tname == "tile" else
                         f"{tname} must be 0 (whole image) or at least {MIN_TILE} pixels (smaller tiles change "
                         f"the result), got {tile}")
    if overlap is None:
        return
    if isinstance(overlap, bool) or not isinstance(overlap, numbers.Integral):
        raise ValueError(f"{oname} must be None (default) or a number of pixels, got {overlap!r}")
    if overlap < 0:
        raise ValueError(f"{oname} must be " + ("" if oname.startswith("--") else "None (default) or ")
                         + f"a number of pixels >= 0, got {overlap}")
    if tile == 0:
        return  # the whole image: no overlap to speak of
    size = AUTO_TILE if tile is None else int(tile) - int(tile) % MULTIPLE
    if not 0 <= overlap <= 3 * size // 4:
        of = (f"the automatic {AUTO_TILE}-px tiles" if tile is None else
              f"{tname} {tile}" + (f" (used as {size})" if size != tile else ""))
        raise ValueError(f"{oname} must be in [0, 3/4 of {tname}], got {overlap} for {of}")


def tile_grid(tile: int, overlap: Optional[int]) -> tuple[int, int, int]:
    """``(tile, overlap, step)`` as :func:`tiled` uses them: the tile rounded down to a
    multiple of 16, the default overlap ``min(DEFAULT_OVERLAP, 3/4 of it)``, and the
    step between tiles rounded down to a multiple of 16 (at least 16), the overlap
    widened to match. The network's output is the same under shifts by multiples
    of 16 only (its coarsest level works at 1/16 resolution): a tile at another
    offset computes other values even far from its borders (shifting by one pixel
    changes pixels 64 px inside by 7e-2)."""
    tile -= tile % MULTIPLE
    overlap = min(DEFAULT_OVERLAP, 3 * tile // 4) if overlap is None else overlap
    step = max(MULTIPLE, (tile - overlap) // MULTIPLE * MULTIPLE)
    return tile, tile - step, step


def tile_starts(size: int, tile: int, step: int) -> list[int]:
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, step)) + [size - tile]
    return sorted(set(starts))


@torch.no_grad()
def restore(model: INIKNet, y: torch.Tensor, tile: Optional[int] = None, overlap: Optional[int] = None,
            autocast_dtype: Optional[torch.dtype] = None, progress=None) -> torch.Tensor:
    """Deblur (B, 3, H, W) float in [0, 1] on the model's device; returns it clipped to [0, 1].

    ``tile``: run on T x T windows (T at least MIN_TILE, rounded down to a
    multiple of 16; the stride T - overlap rounded down to a multiple of 16, see
    :func:`tile_grid`) and blend them over the overlaps (see :func:`_window`), so
    memory stays bounded for any photo size. ``overlap`` defaults to
    ``min(DEFAULT_OVERLAP, 3 * T // 4)``; both are checked (:func:`check_tiling`) by
    :func:`tiled` before anything runs.
    """
    if not isinstance(y, torch.Tensor) or y.dim() != 4 or y.shape[1] != 3:
        got = f"shape {tuple(y.shape)}" if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"restore: y must be a (B, 3, H, W) tensor, got {got}")
    device = next(model.parameters()).device

    def run(x):
        x = x.to(device).contiguous(memory_format=torch.channels_last)
        if autocast_dtype is None:
            return model(x).float()
        with torch.autocast(device.type, dtype=autocast_dtype):
            return model(x).float()

    out = tiled(run, y, tile, overlap, progress)
    if not bool(torch.isfinite(out).all()):
        peak = float(y.detach().abs().max()) if y.numel() else 0.0
        why = (f"y's values reach {peak:.3g}, expected floats in [0, 1]" if peak > 1e6  # the network overflows
               else f"the weights overflow{f' in {autocast_dtype}' if autocast_dtype is not None else ''}")
        raise ValueError(f"restore: the network's output is not finite: {why}")
    return out.clamp_(0, 1)


def tiled(run, y: torch.Tensor, tile: Optional[int] = None, overlap: Optional[int] = None,
          progress=None) -> torch.Tensor:
    """``run(y)`` for a per-pixel network function ``run`` ((B, C, H, W) -> (B, C', H, W)),
    on the CPU: whole, or with ``tile`` on T x T windows blended over their overlaps as
    :func:`restore` describes (the image padded once, as the network pads it)."""
    check_tiling(tile, overlap)
    h0, w0 = y.shape[-2:]
    if not tile or (h0 <= tile and w0 <= tile):
        return run(y).cpu()
    tile, overlap, step = tile_grid(tile, overlap)
    # Pad once, as model(y) would, so that tiles never pad: each tile then sees
    # exactly the neighbourhood (image or border padding) the whole-image run sees.
    y, _ = pad_to_valid(y)
    h, w = y.shape[-2:]
    out = None
    weight = torch.zeros((1, 1, h, w))
    rows, cols = tile_starts(h, tile, step), tile_starts(w, tile, step)
    if progress is not None:
        progress.reset(total=len(rows) * len(cols))
    for top in rows:
        for left in cols:
            th, tw = min(tile, h), min(tile, w)
            patch = run(y[:, :, top:top + th, left:left + tw]).cpu()
            if out is None:
                out = torch.zeros((patch.shape[0], patch.shape[1], h, w))
            # (th < tile only where the image is smaller than a tile: one tile, no shared side)
            wy = _window(th, overlap, top == 0, top + th >= h)
            wx = _window(tw, overlap, left == 0, left + tw >= w)
            wt = (wy[:, None] * wx[None, :])[None, None]
            out[:, :, top:top + th, left:left + tw] += patch * wt
            weight[:, :, top:top + th, left:left + tw] += wt
            if progress is not None:
                progress.update()
    return (out / weight)[..., :h0, :w0]


# Whole-image inference up to this many pixels (1920x1080 fits; about 5 GB peak
# in fp32 on a CPU); larger photos are tiled with AUTO_TILE x AUTO_TILE tiles.
AUTO_MAX_PIXELS = 1920 * 1088


AUTO_TILE = 1024


def auto_tile(height: int, width: int, tile: Optional[int] = None,
              overlap: Optional[int] = None) -> tuple[Optional[int], Optional[int]]:
    """The ``(tile, overlap)`` :func:`deblur` uses for an image of this size.

    ``tile=None`` (automatic): the whole image when it has at most
    ``AUTO_MAX_PIXELS`` pixels, else ``AUTO_TILE`` tiles overlapping by
    ``DEFAULT_OVERLAP`` pixels, so memory stays bounded for any photo size.
    ``tile=0``: always the whole image. Any other ``tile`` is returned as given;
    its overlap defaults to ``min(DEFAULT_OVERLAP, 3 * tile // 4)`` (in :func:`restore`).
    """
    check_tiling(tile, overlap)
    overlap = None if overlap is None else int(overlap)
    if tile is None:
        if height * width <= AUTO_MAX_PIXELS:
            return None, None
        return AUTO_TILE, DEFAULT_OVERLAP if overlap is None else overlap
    return (None, None) if tile == 0 else (int(tile), overlap)

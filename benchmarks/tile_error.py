"""How far a tile's border disturbs the network's output, and what tiling costs in accuracy.

    python benchmarks/tile_error.py [--weights W] [--size 768] [--tile 384] [--overlap O] [--dists 16,32,...]

A photo-like test image (upsampled random blocks plus fine texture, as in
tests/test_infer.py) is deblurred whole, then as single tiles at several
positions: for each distance d from a tile's inner edge (edges not on the image
border), the largest difference from the whole-image output among pixels at
least d away. Then the full tiled result (``inik.tiling.restore``) at the
default overlap or ``--overlap``. ``inik.tiling.DEFAULT_OVERLAP`` and ``MIN_TILE``
are chosen from these figures.
"""

from __future__ import annotations

import argparse
import sys

import torch

from inik.loading import load_model
from inik.runtime import keep_freed_memory
from inik.tiling import MIN_TILE, check_tiling, restore, tile_grid


def test_image(size: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    y = torch.nn.functional.interpolate(torch.rand(1, 3, 16, 16, generator=g), size=(size, size),
                                        mode="bicubic", align_corners=False)
    return (y + 0.05 * torch.rand(1, 3, size, size, generator=g)).clamp(0, 1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", help="default: the bundled weights")
    p.add_argument("--size", type=int, default=768, help="image side in pixels (default 768)")
    p.add_argument("--tile", type=int, default=MIN_TILE, help=f"tile side in pixels (default {MIN_TILE})")
    p.add_argument("--overlap", type=int, help="overlap of the full tiled result (default: the default overlap)")
    p.add_argument("--dists", default="16,32,48,64,80,96,112,128,160",
                   help="distances from a tile's inner edge to report, in pixels, comma-separated")
    args = p.parse_args(argv)
    try:
        check_tiling(args.tile, args.overlap, names=("--tile", "--overlap"))
    except ValueError as e:
        p.error(str(e))
    t, overlap, _ = tile_grid(args.tile, args.overlap)  # the tile as restore() rounds it
    if t == 0 or args.size <= t:
        p.error(f"--size must be larger than --tile (rounded down to a multiple of 16), "
                f"got {args.size} and {args.tile}")
    try:
        dists = tuple(int(v) for v in args.dists.split(","))
    except ValueError:
        p.error(f"--dists: expected comma-separated whole numbers of pixels, got {args.dists!r}")
    keep_freed_memory()
    model, _ = load_model(args.weights)
    n = args.size
    y = test_image(n)
    full = restore(model, y)
    starts = sorted({0, (n - t) // 4 // 16 * 16, (n - t) // 2 // 16 * 16, n - t})
    worst = dict.fromkeys(dists)  # None: no pixel of a tile is that far from its inner edges
    far = torch.full((t,), 10**6)
    r = torch.arange(t)
    for top in starts:
        for left in starts:
            d = (restore(model, y[..., top:top + t, left:left + t])
                 - full[..., top:top + t, left:left + t]).abs().amax(1)[0]
            dy = torch.minimum(r if top > 0 else far, (t - 1 - r) if top + t < n else far)
            dx = torch.minimum(r if left > 0 else far, (t - 1 - r) if left + t < n else far)
            dist = torch.minimum(dy[:, None], dx[None, :])
            for k in dists:
                sel = d[dist >= k]
                if sel.numel():
                    worst[k] = max(worst[k] or 0.0, sel.max().item())
    print(f"{n}x{n} image, {t}-px tiles at offsets {starts}")
    print("max |tile - whole| at >= d px from a tile's inner edge: "
          + ", ".join(f"{k} px: " + ("-" if v is None else f"{v:.1e}") for k, v in worst.items()))
    tiled = restore(model, y, tile=t, overlap=args.overlap)
    print(f"tiled (overlap {overlap}) vs whole: max |diff| "
          f"{(tiled - full).abs().max().item():.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

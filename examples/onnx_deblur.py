"""Deblur a photo of any size with a dynamic ONNX export of INIKNet: onnxruntime, numpy
and Pillow only (no torch, no inik) - what a caller of the export must do, in one file.

    inik export --dynamic -o iniknet.onnx
    python examples/onnx_deblur.py iniknet.onnx photo.jpg sharp.png [--tile 1024] [--overlap 288]

1. Pad the photo once, at the bottom and right, to a multiple of 16 (at least 32):
   reflected, as ``model(y)`` pads (repeated edge pixels where the image is too small
   to reflect).
2. Small photos run whole. Larger ones run in T x T tiles (T a multiple of 16) that
   start on multiples of 16 - the network's output is the same only under such shifts -
   the step between them rounded down to a multiple of 16.
3. Blend the tiles: on a side shared with a neighbour, the outer 7/16 of the overlap
   counts for nothing (a tile's border differs from the whole-image result) and the
   middle eighth ramps up linearly, so every pixel's weights sum to 1.
4. Crop to the photo's size and clip to [0, 1].

``inik deblur`` tiles the same way (``inik.tiling``); docs/deploy.md explains why.
"""

from __future__ import annotations

import argparse

import numpy as np

MULTIPLE, MIN_SIZE = 16, 32
MIN_TILE = 384  # smaller tiles change the result (inik.tiling.MIN_TILE)


def pad_to_grid(image: np.ndarray) -> np.ndarray:
    """(3, H, W) -> padded at the bottom and right to multiples of 16, at least 32."""
    out = image
    for axis in (1, 2):
        size = out.shape[axis]
        pad = max(MIN_SIZE, -(-size // MULTIPLE) * MULTIPLE) - size
        if pad:
            widths = [(0, 0)] * 3
            widths[axis] = (0, pad)
            out = np.pad(out, widths, mode="reflect" if pad < size else "edge")
    return out


def blend_weights(length: int, overlap: int, first: bool, last: bool) -> np.ndarray:
    """Weights along one side of a tile: 1 inside, 0 then a linear ramp over a shared overlap."""
    zero = 7 * overlap // 16
    dist = np.arange(length, dtype=np.float32)
    ramp_in = np.clip((dist + 1 - zero) / (overlap - 2 * zero + 1), 0, 1) if overlap else np.ones(length)
    weights = np.ones(length, dtype=np.float32)
    if not first:
        weights = np.minimum(weights, ramp_in)
    if not last:
        weights = np.minimum(weights, ramp_in[::-1])
    return weights


def starts(size: int, tile: int, step: int) -> list[int]:
    """Tile origins along one side: every ``step`` pixels, the last one flush with the end."""
    return [0] if size <= tile else sorted({*range(0, size - tile, step), size - tile})


def deblur(session, image: np.ndarray, tile: int = 1024, overlap: int = 288) -> np.ndarray:
    """(3, H, W) float32 in [0, 1] -> deblurred (3, H, W), through ``session`` (a dynamic export)."""
    height, width = image.shape[1:]
    padded = pad_to_grid(image)
    ph, pw = padded.shape[1:]
    tile -= tile % MULTIPLE
    step = max(MULTIPLE, (tile - overlap) // MULTIPLE * MULTIPLE)
    overlap = tile - step
    total = np.zeros(padded.shape, dtype=np.float32)
    weight = np.zeros((1, ph, pw), dtype=np.float32)
    for top in starts(ph, tile, step):
        for left in starts(pw, tile, step):
            rows, cols = slice(top, top + min(tile, ph)), slice(left, left + min(tile, pw))
            window = np.ascontiguousarray(padded[None, :, rows, cols])
            restored = session.run(None, {"y": window})[0][0]
            wy = blend_weights(window.shape[2], overlap, top == 0, rows.stop >= ph)
            wx = blend_weights(window.shape[3], overlap, left == 0, cols.stop >= pw)
            total[:, rows, cols] += restored * np.outer(wy, wx)
            weight[:, rows, cols] += np.outer(wy, wx)
    return np.clip(total / weight, 0, 1)[:, :height, :width]


def main() -> None:
    import onnxruntime
    from PIL import Image

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="an export made with `inik export --dynamic -o FILE.onnx`")
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--tile", type=int, default=1024, help="tile side in pixels (default 1024)")
    p.add_argument("--overlap", type=int, default=288, help="tile overlap in pixels (default 288)")
    args = p.parse_args()
    if args.tile < MIN_TILE:
        p.error(f"--tile must be at least {MIN_TILE} pixels (smaller tiles change the result), got {args.tile}")
    if not 0 <= args.overlap <= 3 * (args.tile - args.tile % MULTIPLE) // 4:
        p.error(f"--overlap must be in [0, 3/4 of --tile], got {args.overlap} for --tile {args.tile}")
    session = onnxruntime.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    if not all(isinstance(d, str) for d in session.get_inputs()[0].shape[2:]):
        p.error(f"{args.model} takes one size only; export it with --dynamic")
    rgb = np.asarray(Image.open(args.input).convert("RGB"), dtype=np.float32) / 255
    sharp = deblur(session, rgb.transpose(2, 0, 1), args.tile, args.overlap)
    Image.fromarray((sharp.transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8)).save(args.output)


if __name__ == "__main__":
    main()

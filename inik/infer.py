"""Deblurring photos: the default model, tiled inference, ``inik.deblur`` and ``inik deblur``."""

from __future__ import annotations

import copy
import glob
import logging
import numbers
import os
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .models import INIKNet
from .models.iniknet import MULTIPLE, pad_to_valid

log = logging.getLogger("inik")

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "default.safetensors"
UNTRAINED_NOTE = ("no trained weights found (looked for {path}): using an UNTRAINED INIKNet "
                  "(random initialisation, seed 0) - its output is not a deblurred photo")


def load_model(weights: Optional[str | os.PathLike] = None, device: str | torch.device = "cpu"
               ) -> tuple[INIKNet, bool]:
    """``(model, trained)``: the model in ``weights`` (default: the bundled weights),
    in eval mode on ``device``. Without any weights file, an untrained model and False."""
    path = Path(weights) if weights is not None else DEFAULT_WEIGHTS
    if weights is None and not path.is_file():
        torch.manual_seed(0)
        model, trained = INIKNet(), False
    else:
        model, trained = INIKNet.load(path, map_location=device), True
    # channels_last: same numbers (tests/test_fast_path.py), faster convolutions on CPU
    return model.eval().to(device, memory_format=torch.channels_last), trained


# Default tile overlap in pixels. How far a tile's border disturbs its output is a
# property of the network (its coarsest level works at 1/16 resolution, where
# one pixel is 16 px of the photo), not of the tile size: with the default
# weights it falls below one level of 255 from about 80 px inside a tile's
# inner edge (benchmarks/tile_error.py; figures in benchmarks/RESULTS.md). A
# 192-px overlap keeps every used pixel >= 84 px from the edge of the tile it
# comes from.
DEFAULT_OVERLAP = 192


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
# pixel (its coarsest level works at 1/16 resolution), so small tiles change the
# result whatever the blending. The pixels a tile contributes lie at least 7/16
# of the overlap inside it; at the default overlap, min(192, 3/4 of the tile),
# that is 84 px for tiles of 256 px and up (under one level of 255, DEFAULT_OVERLAP's
# note) but 42 px for 128-px tiles (several levels of 255, benchmarks/HISTORY.md)
# and less below.
MIN_TILE = 256


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


def _starts(size: int, tile: int, step: int) -> list[int]:
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
    device = next(model.parameters()).device

    def run(x):
        x = x.to(device).contiguous(memory_format=torch.channels_last)
        if autocast_dtype is None:
            return model(x).float()
        with torch.autocast(device.type, dtype=autocast_dtype):
            return model(x).float()

    return tiled(run, y, tile, overlap, progress).clamp_(0, 1)


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
    rows, cols = _starts(h, tile, step), _starts(w, tile, step)
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


_MODEL_CACHE: dict = {}


def _default_model(device) -> INIKNet:
    key = str(device)
    if key not in _MODEL_CACHE:
        model, trained = load_model(device=device)
        if not trained:
            log.warning(UNTRAINED_NOTE.format(path=DEFAULT_WEIGHTS))
        _MODEL_CACHE[key] = model
    return _MODEL_CACHE[key]


def _on_device(model: INIKNet, device) -> INIKNet:
    """``model`` if it is on ``device``, else a copy there: ``deblur(model=m, device=d)``
    leaves the caller's model where it was (``Module.to`` moves it in place)."""
    want, have = torch.device(device), next(model.parameters()).device
    if want.type == have.type and (want.index is None or want.index == have.index):
        return model
    return copy.deepcopy(model).to(want)


def half_dtype(device) -> Optional[torch.dtype]:
    """The autocast dtype of ``--half`` on ``device``: float16 on CUDA, bfloat16 on CPUs
    with native bfloat16 arithmetic, and None (float32, with a one-line notice) on CPUs
    that only emulate it, where bfloat16 runs several times slower than float32."""
    if torch.device(device).type == "cuda":
        return torch.float16
    if not cpu_has_bf16():
        log.warning("half=True (--half): this CPU has no native bfloat16 arithmetic (AVX-512 BF16 or AMX), "
                    "where bfloat16 is slower than float32: running in float32")
        return None
    return torch.bfloat16


def cpu_has_bf16() -> bool:
    """Whether oneDNN has native bfloat16 kernels on this CPU."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # not exposed by this torch build
        return True


def deblur(image, model: Optional[INIKNet] = None, *, tile: Optional[int] = None,
           overlap: Optional[int] = None, device: Optional[str] = None, half: bool = False,
           progress=None):
    """Deblur one image and return the same kind of object.

    ``image``: numpy (H, W), (H, W, 3) or (H, W, 4) - uint8, uint16 or float in
    [0, 1]; a torch tensor (3, H, W) or (B, 3, H, W) in [0, 1]; or a PIL image.
    Grey images are deblurred as RGB and returned grey; alpha passes through.
    A PIL image comes back with its ICC profile, EXIF block and resolution in
    ``info`` (pass them to ``save``: ``out.save(p, icc_profile=out.info.get("icc_profile"),
    exif=out.info.get("exif", b""))``).
    ``model``: default: the bundled default weights. ``tile``: None picks
    automatically (whole image up to about 2 megapixels, 1024-px tiles beyond,
    see :func:`auto_tile`); 0 forces the whole image; T runs T x T tiles
    blended over ``overlap`` pixels (see :func:`restore`). ``device``: where the
    network runs (default: the model's device, or the CPU for the default model;
    a tensor comes back on its own device). ``half``: bf16 autocast (fp16 on
    CUDA). ``progress``: a tqdm-like bar advanced per tile.
    """
    if device is None:
        device = next(model.parameters()).device if model is not None else "cpu"
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={device!r}: not a torch device ({exc})") from None
    model = _on_device(model, device) if model is not None else _default_model(device)
    autocast = half_dtype(device) if half else None

    def run(y):
        t, o = auto_tile(y.shape[-2], y.shape[-1], tile, overlap)
        return restore(model, y, tile=t, overlap=o, autocast_dtype=autocast, progress=progress)

    if isinstance(image, torch.Tensor):
        if image.dim() not in (3, 4) or image.shape[-3] != 3 or min(image.shape) < 1:
            raise ValueError(f"image tensor must be (3, H, W) or (B, 3, H, W) with B, H, W >= 1, got "
                             f"{tuple(image.shape)}")
        if image.dim() == 3:
            return deblur(image[None], model, tile=tile, overlap=overlap, device=device, half=half,
                          progress=progress)[0]
        if not image.is_floating_point():
            raise TypeError(f"image tensor must be floating point in [0, 1], got {image.dtype} "
                            f"(for 8-bit data: image.float() / 255)")
        if not torch.isfinite(image).all():
            raise ValueError("image contains NaN or Inf values")
        if image.abs().max() > 1e30:  # beyond float32: not [0, 1] data of any kind
            raise ValueError(f"image values reach {image.abs().max().item():.3g}: expected floats in [0, 1]")
        f = image.float()
        _warn_out_of_range(f)
        return run(f).to(image.device, image.dtype)  # tiles are blended on the CPU
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        Image = None
    if Image is not None and isinstance(image, Image.Image):
        _load_strictly(image)
        image = _pil_for_deblur(image)
        out = deblur(np.asarray(image), model, tile=tile, overlap=overlap, device=device, half=half,
                     progress=progress)
        result = Image.fromarray(out, mode=image.mode)
        result.info.update(_pil_metadata(image))
        return result
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array, torch tensor or PIL image, got {type(image).__name__}")
    return _deblur_array(image, run)


def _warn_out_of_range(f) -> None:
    """Floating-point input is taken to be in [0, 1]: say so when it is not (e.g. 0..255)."""
    lo, hi = float(f.min()), float(f.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        log.warning("image values span [%.4g, %.4g], outside [0, 1]: they are deblurred as they are and "
                    "the output is clipped to [0, 1] (scale 8-bit data by 1/255)", lo, hi)


# PIL modes deblurred as they are; the others are converted to one of these first
_PIL_MODES = ("L", "LA", "RGB", "RGBA")


def _load_strictly(image) -> None:
    """Decode a lazily opened PIL image now, as :func:`inik.data.read_image` decodes files:
    damaged or cut data raise an error naming the file (Pillow's own names none, and with
    ``ImageFile.LOAD_TRUNCATED_IMAGES`` it fills a cut image with black)."""
    from .data.io import ImageReadError, strict_pillow
    try:
        with strict_pillow():
            image.load()
    except (OSError, SyntaxError, ValueError) as exc:
        name = getattr(image, "filename", "") or "the PIL image"
        raise ImageReadError(f"{name}: cannot decode the image ({' '.join(str(exc).split())})") from None


def _pil_for_deblur(image):
    """A PIL image in a mode :func:`deblur` works on: palette images become RGB(A),
    bilevel ones L, CMYK / YCbCr / LAB / HSV RGB. 16-bit and float modes (I, I;16, F)
    are refused: their value range is not defined by the mode (read the file with
    :func:`inik.data.read_image` instead)."""
    mode = image.mode
    if mode in ("L", "RGB") and "transparency" in image.info:  # a colour key (PNG tRNS): alpha 0 there
        return image.convert(mode + "A")
    if mode in _PIL_MODES:
        return image
    if mode in ("P", "PA"):
        alpha = mode == "PA" or "transparency" in image.info
        return image.convert("RGBA" if alpha else "RGB")
    if mode == "1":
        return image.convert("L")
    if mode in ("CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        return image.convert("RGB")
    if mode in ("RGBa", "La"):  # premultiplied alpha: un-premultiplied, alpha kept
        return image.convert(mode[:-1] + "A")
    raise ValueError(f"PIL image mode {mode!r} is not supported: use L, LA, RGB, RGBA, P, 1, CMYK or YCbCr, "
                     f"or read the file with inik.data.read_image")


def _pil_metadata(image) -> dict:
    """What of a PIL image's ``info`` still describes its deblurred pixels (same
    size, orientation and mode): the ICC profile when it fits the mode (not a CMYK
    one after conversion to RGB), the EXIF block (its orientation tag included, as
    the pixels are not turned), the resolution."""
    from .data.io import EXIF_PREFIX, exif_body, icc_fits
    info = image.info
    kept = {k: info[k] for k in ("exif", "dpi") if k in info}
    if kept.get("exif"):  # with JPEG's header, as its info holds it: save() writes it into any format
        kept["exif"] = EXIF_PREFIX + exif_body(kept["exif"])
    if icc_fits(info.get("icc_profile"), len(image.getbands())):
        kept["icc_profile"] = info["icc_profile"]
    return kept


def _deblur_array(image: np.ndarray, run) -> np.ndarray:
    if image.ndim == 2:
        return _deblur_array(image[:, :, None], run)[:, :, 0]
    if image.ndim != 3 or image.shape[2] not in (1, 2, 3, 4) or min(image.shape[:2]) < 1:
        raise ValueError(f"image must be (H, W) or (H, W, C) with C in 1..4 and H, W >= 1, "
                         f"got shape {image.shape}")
    if image.dtype.byteorder not in ("=", "|"):  # big-endian data (e.g. read raw from a file)
        image = image.astype(image.dtype.newbyteorder("="))
    dtype = image.dtype
    if dtype == np.uint8 or dtype == np.uint16:
        scale = float(np.iinfo(dtype).max)
        f = image.astype(np.float32) / scale
    elif np.issubdtype(dtype, np.floating):
        if not np.isfinite(image).all():
            raise ValueError("image contains NaN or Inf values")
        if image.size and np.abs(image).max() > 1e30:  # beyond float32: not [0, 1] data of any kind
            raise ValueError(f"image values reach {np.abs(image).max():.3g}: expected floats in [0, 1]")
        scale, f = None, image.astype(np.float32)
    else:
        raise TypeError(f"image dtype must be uint8, uint16 or floating, got {dtype}")
    if scale is None:
        _warn_out_of_range(f)
    c = f.shape[2]
    colour = f[:, :, :3] if c >= 3 else np.repeat(f[:, :, :1], 3, axis=2)
    y = torch.from_numpy(np.ascontiguousarray(colour.transpose(2, 0, 1)))[None]
    x = run(y)[0].numpy().transpose(1, 2, 0)
    if c < 3:
        x = x.mean(2, keepdims=True)
    x = np.round(np.clip(x, 0, 1) * scale).astype(dtype) if scale is not None else x.astype(dtype)
    return np.concatenate([x, image[:, :, c - 1:]], 2) if c in (2, 4) else x  # alpha as it came


# ------------------------------------------------------------------ command line

def expand_inputs(inputs: list[str]) -> list[tuple[Path, Optional[Path]]]:
    """(file, folder it came from or None) for every input file, folder or glob."""
    from .data.io import list_images
    found = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            images = list_images(p)
            if not images:
                from .data.io import IMAGE_EXTENSIONS
                raise ValueError(f"{p}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
            found += [(f, p) for f in images]
        elif p.exists():
            found.append((p, None))
        else:
            matches = sorted(glob.glob(item))
            if not matches:
                found.append((p, None))  # reported as missing when read
            for m in map(Path, matches):  # a folder the pattern matches counts as a folder named here
                found += [(f, m) for f in list_images(m)] if m.is_dir() else [(m, None)]
    return found


def configure_parser(p) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders or globs")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output file (one input) or folder (created if needed) (required)")
    p.add_argument("--weights", help="INIKNet safetensors file (default: the bundled weights)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--tile", type=int, default=None,
                   help=f"tile size in pixels, at least {MIN_TILE}, rounded down to a multiple of 16 (default: "
                        f"whole image up to ~2 megapixels, "
                        f"{AUTO_TILE}-px tiles beyond; 0: always the whole image)")
    p.add_argument("--overlap", type=int, default=None,
                   help=f"tile overlap in pixels (default {DEFAULT_OVERLAP}, at most 3/4 of the tile; widened so "
                        f"that tiles start every multiple of 16 px)")
    p.add_argument("--half", action="store_true",
                   help="bf16 autocast (fp16 on CUDA) where the CPU has native bf16 (AVX-512 BF16 or AMX); "
                        "elsewhere, where bf16 is emulated and slower, float32 with a notice; speed: see "
                        "benchmarks/RESULTS.md (default: off, float32)")
    p.add_argument("--compile", action="store_true",
                   help="run the network under torch.compile: a one-off compilation per image size, then "
                        "faster forwards; pays off only for many tiles or images of one size, see "
                        "benchmarks/RESULTS.md (default: off)")
    p.add_argument("--format", choices=OUTPUT_FORMATS, default=None,
                   help="format of the outputs written into a folder (default: each input's own when it "
                        "can be written - PNG, TIFF, JPEG - else PNG); a single output file's suffix decides")
    p.add_argument("--quality", type=int, default=95, metavar="Q",
                   help="JPEG quality of JPEG outputs, 1-95 (default 95)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files (default: off)")


#: values of --format
OUTPUT_FORMATS = ("png", "jpg", "tif")


def _output_path(src: Path, root: Optional[Path], out: Path, to_file: bool, fmt: Optional[str] = None) -> Path:
    from .data.io import WRITE_EXTENSIONS as WRITABLE
    if to_file:
        return out
    rel = src.relative_to(root) if root is not None else Path(src.name)
    if fmt is not None:
        suffix = "." + fmt
    else:
        suffix = src.suffix if src.suffix.lower() in WRITABLE else ".png"
    return out / rel.with_suffix(suffix)


def _plan(inputs: list[str], output: str, fmt: Optional[str] = None) -> list[tuple[Path, Path]]:
    """(input, output) for every input file, checked before any is written: one output
    per input, none of them another input. Raises ValueError saying what is wrong."""
    from .data.io import WRITE_EXTENSIONS as WRITABLE
    files = expand_inputs(inputs)
    seen, unique = set(), []
    for src, root in files:  # the same file named twice (or through a link) is deblurred once
        key = src.resolve()
        if key not in seen:
            seen.add(key)
            unique.append((src, root))
    out = Path(output)
    single = len(unique) == 1
    # "out.png/" names a folder (Path drops the trailing separator)
    folder = out.is_dir() or str(output).endswith(("/", os.sep))
    if not single and out.suffix.lower() in WRITABLE and not folder:
        raise ValueError(f"-o {output}: {len(unique)} inputs need an output folder, not an image file")
    to_file = bool(single and out.suffix and not folder)
    if to_file and out.suffix.lower() not in WRITABLE:
        raise ValueError(f"-o {output}: cannot write {out.suffix!r} images; name a .png, .tif, .tiff, .jpg "
                         f"or .jpeg file, or an output folder")
    if fmt is not None and to_file:
        kind = {".jpeg": "jpg", ".tiff": "tif"}.get(out.suffix.lower(), out.suffix.lower()[1:])
        if kind != fmt:
            raise ValueError(f"--format {fmt} contradicts the output file -o {output}; name a folder, or "
                             f"a .{fmt} file")
    plan, writer = [], {}
    for src, root in unique:
        dst = _output_path(src, root, out, to_file, fmt)
        key = dst.resolve()
        if key in writer:
            raise ValueError(f"{writer[key]} and {src} would both be written to {dst}; deblur them into "
                             f"different folders")
        writer[key] = src
        blocked = next((d for d in dst.parents if d.exists() and not d.is_dir()), None)
        if blocked is not None:
            raise ValueError(f"{dst}: cannot write there, {blocked} is a file, not a folder")
        plan.append((src, dst))
    for src, dst in plan:  # after the collisions above, which name both inputs
        key = dst.resolve()
        if key in seen and key != src.resolve():
            raise ValueError(f"{src} would be written to {dst}, which is another input; choose another "
                             f"output folder")
    return plan


def check_tile_option(tile: Optional[int], overlap: Optional[int] = None) -> None:
    """``--tile`` and ``--overlap`` of ``inik deblur``, ``explain`` and ``eval``
    (:func:`check_tiling`); ValueError naming the option."""
    check_tiling(tile, overlap, names=("--tile", "--overlap"))


#: help text of --device in deblur, explain and eval
DEVICE_HELP = "torch device: auto (default: cuda when available, else cpu), cpu, cuda, cuda:1 ..."


def check_device(device: str) -> torch.device:
    """The torch device named by --device, usable here (``"auto"``: CUDA when it is
    available, else the CPU); ValueError saying why not."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"--device {device}: not a torch device ({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available (use --device cpu)")
    try:
        torch.empty(1, device=dev)
    except (RuntimeError, AssertionError) as exc:
        raise ValueError(f"--device {device}: cannot use it here ({str(exc).splitlines()[0]})") from None
    return dev


#: what one bad item of a batch (an unreadable or odd image, a failed write, a model that cannot run on
#: it, too little memory) raises; deblur, explain and eval report it and go on with the rest
ITEM_ERRORS = (OSError, ValueError, RuntimeError, MemoryError)


def item_error(exc: BaseException, *paths) -> str:
    """``exc`` as one line naming the file: the first line of its message (torch's run over
    several), after the first of ``paths`` unless it names one of them already."""
    from .errors import first_line
    msg = first_line(exc)
    return msg if any(str(p) in msg for p in paths) else f"{paths[0]}: {msg}"


def _output_depth(dst: Path, info) -> int:
    """16-bit output for 16-bit and floating-point sources (except JPEG, 8 bits only)."""
    return 8 if dst.suffix.lower() in (".jpg", ".jpeg") or info.bit_depth == 8 else 16


def run(args) -> int:
    from tqdm import tqdm

    from .data.io import read_image, write_image
    try:
        check_tile_option(args.tile, args.overlap)
        args.device = str(check_device(args.device))
        if not 1 <= args.quality <= 95:
            raise ValueError(f"--quality must be in 1..95 (JPEG quality), got {args.quality}")
        plan = _plan(args.inputs, args.output, args.format)
    except ValueError as exc:
        print(f"inik deblur: {exc}", file=sys.stderr)
        return 2
    try:
        model, trained = load_model(args.weights, device=args.device)
    except (OSError, ValueError) as exc:
        print(f"inik deblur: cannot load weights: {exc}", file=sys.stderr)
        return 2
    if not trained:
        print("inik deblur: WARNING: " + UNTRAINED_NOTE.format(path=DEFAULT_WEIGHTS), file=sys.stderr)
    if args.compile:
        # One graph per input shape (all tiles of a photo share one); the IFM stays one opaque op.
        model = torch.compile(model, dynamic=False)
    failures = 0
    tiles = tqdm(desc="tiles", unit="tile", leave=False, disable=None, position=1)
    for done, (src, dst) in enumerate(tqdm(plan, desc="deblur", unit="img", disable=None, position=0)):
        try:
            if dst.resolve() == src.resolve() and not args.overwrite:
                raise FileExistsError(f"{dst}: output would replace the input (pass --overwrite)")
            if dst.exists() and not args.overwrite:
                raise FileExistsError(f"{dst}: exists (pass --overwrite to replace it)")
            img, info = read_image(src, mode=None)
            depth = _output_depth(dst, info)
            if dst.suffix.lower() in (".jpg", ".jpeg") and info.has_alpha:
                raise ValueError(f"{dst}: JPEG cannot hold {src}'s alpha channel; write .png or .tif")
            t0 = time.perf_counter()
            result = deblur(img, model, tile=args.tile, overlap=args.overlap, device=args.device,
                            half=args.half, progress=tiles)
            dst.parent.mkdir(parents=True, exist_ok=True)
            write_image(dst, result, bit_depth=depth, overwrite=args.overwrite, quality=args.quality,
                        icc_profile=info.icc_profile, exif=info.exif)
            tqdm.write(f"{src} -> {dst} ({info.width}x{info.height}, {depth}-bit, "
                       f"{time.perf_counter() - t0:.1f} s)")
        except ITEM_ERRORS as exc:  # one bad file must not stop the batch
            failures += 1
            print(f"inik deblur: {item_error(exc, src)}", file=sys.stderr)
        except KeyboardInterrupt:  # cli.main prints it; an output is whole or absent (write_image is atomic)
            raise KeyboardInterrupt(f"interrupted after {done} of {len(plan)} images") from None
    tiles.close()
    if not trained:
        print("inik deblur: the output above came from an UNTRAINED model", file=sys.stderr)
    return 1 if failures else 0

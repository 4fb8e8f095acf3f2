"""``inik.deblur``: deblur a numpy array, a PIL image or a tensor with the default model or yours."""

from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import torch

from .devices import usable_device
from .loading import default_model, half_dtype, on_device
from .models import INIKNet
from .tiling import auto_tile, restore

log = logging.getLogger("inik")

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
    if model is not None and not isinstance(getattr(model, "_orig_mod", model), INIKNet):  # or torch.compile's
        raise ValueError(f"model: expected an INIKNet (inik.INIKNet.load(path) for a weights file) or None "
                         f"for the default weights, got {type(model).__name__}")
    if device is None:
        device = next(model.parameters()).device if model is not None else "cpu"
    device = usable_device(device, "device=")
    model = on_device(model, device) if model is not None else default_model(device)
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
        peak = float(image.detach().abs().max())
        if peak > 1e30:  # beyond float32: not [0, 1] data of any kind
            raise ValueError(f"image values reach {peak:.3g}: expected floats in [0, 1]")
        f = image.detach().float()  # inference: no graph to keep
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
    if isinstance(image, np.ma.MaskedArray):
        raise TypeError("image: a masked array's mask would be ignored; pass image.filled(value)")
    return _deblur_array(np.asarray(image), run)  # a plain array: subclasses (np.matrix) index otherwise


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
        peak = float(np.abs(image).max()) if image.size else 0.0  # a Python float: no float16 overflow
        if peak > 1e30:  # beyond float32: not [0, 1] data of any kind
            raise ValueError(f"image values reach {peak:.3g}: expected floats in [0, 1]")
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

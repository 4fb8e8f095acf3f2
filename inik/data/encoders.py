"""Format-specific encoders behind :func:`inik.data.io.write_image`: quantisation to 8 or 16 bits,
16-bit PNG (with its ICC and EXIF chunks), TIFF, and the checks of the metadata to embed."""

from __future__ import annotations

import io
import logging
import struct
import zlib

import numpy as np
from PIL import Image

from .decoders import MODES, pypng
from .metadata import EXIF_PREFIX, exif_body, icc_colour_space, icc_space_for

_JPEG_MAX_EXIF = 65533 - len(EXIF_PREFIX)  # one APP1 segment

log = logging.getLogger(__name__)


def _quantize(img: np.ndarray, bit_depth: int) -> np.ndarray:
    if img.dtype == np.uint8 and bit_depth == 8 or img.dtype == np.uint16 and bit_depth == 16:
        return img
    if np.issubdtype(img.dtype, np.integer):
        raise ValueError(f"integer image of dtype {img.dtype} cannot be written at {bit_depth} bits; "
                         f"pass floats in [0, 1]")
    maxval = 255 if bit_depth == 8 else 65535
    img = np.nan_to_num(np.asarray(img, dtype=np.float64), nan=0.0)
    return np.round(np.clip(img, 0.0, 1.0) * maxval).astype(np.uint8 if bit_depth == 8 else np.uint16)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _write_png16(f, q: np.ndarray, icc: bytes | None, exif: bytes | None) -> None:
    png = pypng()

    h, w, c = q.shape
    writer = png.Writer(w, h, greyscale=c in (1, 2), alpha=c in (2, 4), bitdepth=16, compression=6)
    body = io.BytesIO()
    writer.write_array(body, q.reshape(-1))
    data = body.getvalue()
    head = 8 + 25  # signature, IHDR; iCCP and eXIf go before the image data
    extra = b""
    if icc:
        extra += _png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc))
    if exif:
        extra += _png_chunk(b"eXIf", exif)
    f.write(data[:head] + extra + data[head:])


def _check_metadata(path, channels: int, icc_profile, exif) -> tuple[bytes | None, bytes | None]:
    """write_image's icc_profile and exif, checked; exif without its JPEG prefix."""
    if icc_profile is not None:
        space = icc_colour_space(icc_profile)
        if space is None:
            raise ValueError(f"icc_profile must be the bytes of an ICC profile (writing {path})")
        if space != icc_space_for(channels):
            raise ValueError(f"icc_profile describes {space} data, but the image has {channels} channel(s) "
                             f"({MODES[channels]}): it needs a {icc_space_for(channels)} profile (writing {path})")
        icc_profile = bytes(icc_profile)
    if exif is not None:
        if not isinstance(exif, (bytes, bytearray)):
            raise ValueError(f"exif must be bytes (an EXIF block), got {type(exif).__name__} (writing {path})")
        exif = bytes(exif_body(exif))
        if exif[:4] not in (b"II*\x00", b"MM\x00*"):
            raise ValueError(f"exif must be an EXIF block (a TIFF structure, optionally after 'Exif\\0\\0'); "
                             f"got bytes starting {exif[:8]!r} (writing {path})")
    return icc_profile or None, exif or None


def encode_image(path, img: np.ndarray, suffix: str, bit_depth: int, *, quality: int, icc_profile: bytes | None,
                 exif: bytes | None) -> memoryview:
    """The bytes of the file :func:`inik.data.io.write_image` writes (the arguments checked there):
    ``img`` (H, W, C) quantised to ``bit_depth`` in the format of ``suffix``, with ``icc_profile`` and
    ``exif`` (checked here: ValueError) embedded where the format holds them; ``path`` names the
    file in messages."""
    icc, exif = _check_metadata(path, img.shape[2], icc_profile, exif)
    q = _quantize(img, bit_depth)

    buf = io.BytesIO()
    if suffix in (".tif", ".tiff"):
        import tifffile

        photometric = "minisblack" if q.shape[2] in (1, 2) else "rgb"
        extrasamples = ("unassalpha",) if q.shape[2] in (2, 4) else None
        data = q[:, :, 0] if q.shape[2] == 1 else q
        tifffile.imwrite(buf, data, photometric=photometric, extrasamples=extrasamples, compression="zlib",
                         iccprofile=icc)
    elif suffix == ".png" and bit_depth == 16:
        _write_png16(buf, q, icc, exif)
    else:
        pil = Image.fromarray(q[:, :, 0] if q.shape[2] == 1 else q, MODES[q.shape[2]])
        meta = {"icc_profile": icc} if icc else {}
        if suffix == ".png":
            if exif:
                meta["exif"] = exif
            pil.save(buf, format="PNG", compress_level=6, **meta)
        else:
            if exif and len(exif) > _JPEG_MAX_EXIF:
                log.warning("%s: EXIF block of %d bytes left out (a JPEG holds at most %d)", path, len(exif),
                            _JPEG_MAX_EXIF)
            elif exif:
                meta["exif"] = EXIF_PREFIX + exif
            pil.save(buf, format="JPEG", quality=quality, subsampling=0 if quality >= 90 else 2, **meta)
    return buf.getbuffer()

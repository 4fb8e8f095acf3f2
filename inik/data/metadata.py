"""EXIF and ICC metadata of image files: orientation, colour-profile checks and the EXIF block
made fit for upright pixels, shared by reading (:mod:`.decoders`, :mod:`.io`) and writing (:mod:`.encoders`)."""

from __future__ import annotations

import struct

import numpy as np
from PIL import Image

EXIF_ORIENTATION = 0x0112
EXIF_PREFIX = b"Exif\x00\x00"  # before the TIFF structure in a JPEG's APP1 segment


def orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to an (H, W, ...) array."""
    if orientation == 2:
        arr = arr[:, ::-1]
    elif orientation == 3:
        arr = arr[::-1, ::-1]
    elif orientation == 4:
        arr = arr[::-1]
    elif orientation == 5:
        arr = arr.swapaxes(0, 1)
    elif orientation == 6:
        arr = arr.swapaxes(0, 1)[:, ::-1]
    elif orientation == 7:
        arr = arr.swapaxes(0, 1)[::-1, ::-1]
    elif orientation == 8:
        arr = arr.swapaxes(0, 1)[::-1]
    return np.ascontiguousarray(arr)


def orientation_of(im: Image.Image) -> int:
    """The EXIF orientation (1-8; 1 if none or malformed). Pillow decodes a PNG to look for
    an eXIf chunk after the image data: that decode runs first, outside the ``except``, as a
    decoder error caught there left a partial image behind that later reads as whole."""
    if im.format == "PNG" and "exif" not in im.info:
        im.load()
    try:
        value = int(im.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # a malformed EXIF block must not make the pixels unreadable
        return 1
    return value if 1 <= value <= 8 else 1


def icc_colour_space(profile) -> str | None:
    """The colour space of the data an ICC profile describes (``"RGB"``, ``"GRAY"``,
    ``"CMYK"``, ...: header bytes 16-19), or None if ``profile`` is not an ICC profile."""
    if not isinstance(profile, (bytes, bytearray)) or len(profile) < 128 or profile[36:40] != b"acsp":
        return None
    return bytes(profile[16:20]).decode("latin-1").strip() or None


def icc_space_for(channels: int) -> str:
    return "GRAY" if channels in (1, 2) else "RGB"


def icc_fits(profile, channels: int) -> bool:
    """Whether ``profile`` is an ICC profile of the colour space of pixels with
    ``channels`` channels (GRAY for 1-2, RGB for 3-4)."""
    return icc_colour_space(profile) == icc_space_for(channels)


def exif_body(raw: bytes) -> bytes:
    """An EXIF block without JPEG's ``Exif\\0\\0`` prefix (PNG, WebP and TIFF hold it so)."""
    return raw[len(EXIF_PREFIX):] if raw.startswith(EXIF_PREFIX) else raw


def upright_exif(raw) -> bytes | None:
    """An EXIF block fit for pixels whose orientation was applied: orientation 1 and
    no thumbnail (IFD1, a picture of the source), patched in place so that every
    other offset (maker notes, GPS and EXIF sub-IFDs) stays valid. None if the block
    cannot be parsed or the patch does not take."""
    if not isinstance(raw, (bytes, bytearray)):
        return None
    data = bytearray(exif_body(raw))
    if len(data) < 8 or data[:2] not in (b"II", b"MM"):
        return None
    order = "<" if data[:2] == b"II" else ">"
    if struct.unpack_from(order + "H", data, 2)[0] != 42:
        return None
    ifd0 = struct.unpack_from(order + "I", data, 4)[0]
    if ifd0 + 2 > len(data):
        return None
    n = struct.unpack_from(order + "H", data, ifd0)[0]
    end = ifd0 + 2 + 12 * n
    if end + 4 > len(data):
        return None
    for k in range(n):
        entry = ifd0 + 2 + 12 * k
        tag, kind, count = struct.unpack_from(order + "HHI", data, entry)
        if tag == EXIF_ORIENTATION and kind == 3 and count == 1:  # SHORT, stored in the entry
            struct.pack_into(order + "H", data, entry + 8, 1)
    struct.pack_into(order + "I", data, end, 0)  # IFD0 is the last IFD: the thumbnail is gone
    try:
        check = Image.Exif()
        check.load(bytes(data))
        if int(check.get(EXIF_ORIENTATION, 1)) != 1:
            return None
    except Exception:
        return None
    return bytes(data)


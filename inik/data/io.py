"""Bit-depth-true image reading and writing.

Images are handled as float32 numpy arrays ``(H, W, C)`` in ``[0, 1]``: an
8-bit file is divided by 255, a 16-bit file by 65535, so that a 16-bit DPDD
image keeps its 16 bits. Every read also returns an :class:`ImageInfo` with the
file's bit depth, channel layout and EXIF orientation (which is applied to the
pixels), so that a result can be written back in the source's own bit depth,
and the file's colour profile (ICC) and EXIF block, so that it can be written
back with the same colours and camera metadata.

Routes, chosen because each is exact for its format:

* PNG, 8-bit or 16-bit grey: Pillow.
* PNG, 16-bit RGB / RGBA: Pillow cannot hold 16 bits per colour channel, but
  its PNG decoder (zlib + unfiltering, in C) can unpack either byte of each
  big-endian sample; the file is decoded twice, once for the high and once for
  the low bytes. Any other 16-bit PNG (grey + alpha) goes through ``pypng``.
  Both routes are tested against each other.
* TIFF (8-bit, 16-bit, float32): ``tifffile``.
* JPEG and everything else Pillow opens: Pillow (8-bit); HEIC/HEIF photos
  through Pillow with the optional ``pillow-heif`` package (its decoder applies
  the file's rotation, so the EXIF orientation it reports is 1). 10- and
  12-bit HEIF files (some cameras' .HIF, HDR phone photos) are read at 16 bits
  (``ImageInfo.bit_depth`` 16, the codes rescaled so that white stays white),
  8-bit ones at 8.

Every read either returns the file's true pixels or raises :class:`ImageReadError`
naming the file: damaged or truncated data are never returned as a partial image,
and a file whose header claims more than :func:`max_pixels` pixels is refused
before anything is decoded.

Writing is atomic: the file is written under a temporary name in the target
directory and moved into place with :func:`os.replace`, so a crash never leaves
a truncated image under the final name. An existing file is never replaced
unless ``overwrite=True``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import struct
import threading
import uuid
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

__all__ = [
    "ImageInfo",
    "IMAGE_EXTENSIONS",
    "WRITE_EXTENSIONS",
    "ImageReadError",
    "read_image",
    "read_image_info",
    "max_pixels",
    "MAX_PIXELS_ENV",
    "DEFAULT_MAX_PIXELS",
    "is_float_image",
    "icc_colour_space",
    "icc_fits",
    "write_atomically",
    "write_image",
    "image_to_tensor",
    "tensor_to_image",
    "list_images",
]

#: File suffixes (lower case) treated as images when scanning folders. HEIC/HEIF
#: (phone photos) are read with the optional ``pillow-heif`` package, AVIF by Pillow.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp", ".heic", ".heif", ".avif")
#: File suffixes (lower case) :func:`write_image` writes.
WRITE_EXTENSIONS = (".png", ".tif", ".tiff", ".jpg", ".jpeg")

_EXIF_ORIENTATION = 0x0112
EXIF_PREFIX = b"Exif\x00\x00"  # before the TIFF structure in a JPEG's APP1 segment
_TIFF_ICC_TAG = 34675  # InterColorProfile
_JPEG_MAX_EXIF = 65533 - len(EXIF_PREFIX)  # one APP1 segment

#: Environment variable that sets the largest image read, in pixels (width x height).
MAX_PIXELS_ENV = "INIK_MAX_PIXELS"
# 16384 x 16384: above any camera's photo (pixel-shift composites reach ~240 MP), 3 GiB as float32 RGB.
DEFAULT_MAX_PIXELS = 2**28

log = logging.getLogger(__name__)


class ImageReadError(OSError):
    """An image file could not be read; the message names the file."""


def max_pixels() -> int:
    """The largest image read, in pixels: ``INIK_MAX_PIXELS``, or :data:`DEFAULT_MAX_PIXELS`
    when it is unset or 0. ValueError naming the variable if it is not a whole number."""
    value = os.environ.get(MAX_PIXELS_ENV, "").strip()
    try:
        limit = int(value or 0)
    except ValueError:
        limit = -1
    if limit < 0:
        raise ValueError(f"{MAX_PIXELS_ENV} must be a whole number of pixels (0 or unset: {DEFAULT_MAX_PIXELS}), "
                         f"got {value!r}")
    return limit or DEFAULT_MAX_PIXELS


def _check_pixels(path, width: int, height: int, what: str = "image") -> None:
    """Refuse a file whose header claims more than :func:`max_pixels` pixels: its size
    comes from the file, so it is checked before any pixel buffer is allocated."""
    limit = max_pixels()
    if width * height > limit:
        raise _error(path, f"{what} of {width}x{height} pixels is larger than the limit of {limit} pixels "
                           f"(set {MAX_PIXELS_ENV} to a larger number of pixels to read it)")


_pillow_lock = threading.Lock()
_pillow_readers = 0
_pillow_saved = (False, None)


@contextlib.contextmanager
def strict_pillow():
    """Pillow's process-wide settings as reading needs them, while any read is running (counted
    across threads): truncated data raise (``ImageFile.LOAD_TRUNCATED_IMAGES``, which training
    scripts often set, makes Pillow fill the missing part silently), and Pillow's own
    decompression-bomb check is off: it would refuse what ``INIK_MAX_PIXELS`` allows, and
    from its header alone, before :func:`_check_pixels` can name the size and the limit.
    (Process-wide: another thread's Pillow reads during an inik read go unchecked too.)"""
    global _pillow_readers, _pillow_saved
    with _pillow_lock:
        if _pillow_readers == 0:
            _pillow_saved = ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS
            ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS = False, None
        _pillow_readers += 1
    try:
        yield
    finally:
        with _pillow_lock:
            _pillow_readers -= 1
            if _pillow_readers == 0:
                ImageFile.LOAD_TRUNCATED_IMAGES, Image.MAX_IMAGE_PIXELS = _pillow_saved


@dataclass(frozen=True)
class ImageInfo:
    """What a file held, before conversion to float.

    Attributes:
        path: the file read.
        format: ``"PNG"``, ``"JPEG"``, ``"TIFF"``, ... (Pillow's format name).
        bit_depth: bits per sample as read: 8, 16, or 32 (float TIFF); 10- and
            12-bit HEIF files are read at 16.
        mode: channel layout of the file: ``"L"``, ``"LA"``, ``"RGB"`` or ``"RGBA"``.
        has_alpha: whether the file has an alpha channel.
        orientation: EXIF orientation tag (1-8) that was applied; 1 = none.
        width, height: size after applying the orientation, in pixels.
        icc_profile: the ICC colour profile of the pixels as returned, or None
            (the file has none, or its profile describes a colour space the
            pixels were converted from: CMYK, or grey returned as RGB). Pixels
            are deblurred in the file's own colour space; writing them with
            this profile keeps their colours (without it, viewers take them to
            be sRGB).
        exif: the file's EXIF block (TIFF structure, without the ``Exif\\0\\0``
            prefix) made fit for the pixels as read: orientation 1 (it was
            applied), no thumbnail (it shows the source); or None. Read from
            JPEG, PNG, WebP and HEIC files; TIFFs keep theirs in their own tags,
            not carried.
    """

    path: str
    format: str
    bit_depth: int
    mode: str
    has_alpha: bool
    orientation: int
    width: int
    height: int
    icc_profile: bytes | None = field(default=None, repr=False)
    exif: bytes | None = field(default=None, repr=False)


def _error(path, what: str) -> ImageReadError:
    return ImageReadError(f"{path}: {' '.join(str(what).split())}")  # one line: decoders' messages may hold newlines


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
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


def _orientation_of(im: Image.Image) -> int:
    """The EXIF orientation (1-8; 1 if none or malformed). Pillow decodes a PNG to look for
    an eXIf chunk after the image data: that decode runs first, outside the ``except``, as a
    decoder error caught there left a partial image behind that later reads as whole."""
    if im.format == "PNG" and "exif" not in im.info:
        im.load()
    try:
        value = int(im.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # a malformed EXIF block must not make the pixels unreadable
        return 1
    return value if 1 <= value <= 8 else 1


def icc_colour_space(profile) -> str | None:
    """The colour space of the data an ICC profile describes (``"RGB"``, ``"GRAY"``,
    ``"CMYK"``, ...: header bytes 16-19), or None if ``profile`` is not an ICC profile."""
    if not isinstance(profile, (bytes, bytearray)) or len(profile) < 128 or profile[36:40] != b"acsp":
        return None
    return bytes(profile[16:20]).decode("latin-1").strip() or None


def _icc_space_for(channels: int) -> str:
    return "GRAY" if channels in (1, 2) else "RGB"


def icc_fits(profile, channels: int) -> bool:
    """Whether ``profile`` is an ICC profile of the colour space of pixels with
    ``channels`` channels (GRAY for 1-2, RGB for 3-4)."""
    return icc_colour_space(profile) == _icc_space_for(channels)


def exif_body(raw: bytes) -> bytes:
    """An EXIF block without JPEG's ``Exif\\0\\0`` prefix (PNG, WebP and TIFF hold it so)."""
    return raw[len(EXIF_PREFIX):] if raw.startswith(EXIF_PREFIX) else raw


def _upright_exif(raw) -> bytes | None:
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
        if tag == _EXIF_ORIENTATION and kind == 3 and count == 1:  # SHORT, stored in the entry
            struct.pack_into(order + "H", data, entry + 8, 1)
    struct.pack_into(order + "I", data, end, 0)  # IFD0 is the last IFD: the thumbnail is gone
    try:
        check = Image.Exif()
        check.load(bytes(data))
        if int(check.get(_EXIF_ORIENTATION, 1)) != 1:
            return None
    except Exception:
        return None
    return bytes(data)


# ISO base media brands of HEIF still images (HEVC-coded or generic)
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}


def _is_heif(path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    return head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS


def _webp_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) from the first 30 bytes of a WebP file (lossy, lossless or extended), else None."""
    if len(head) < 30 or head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        return None
    kind = head[12:16]
    if kind == b"VP8 ":
        return int.from_bytes(head[26:28], "little") & 0x3FFF, int.from_bytes(head[28:30], "little") & 0x3FFF
    if kind == b"VP8L":
        bits = int.from_bytes(head[21:25], "little")
        return (bits & 0x3FFF) + 1, (bits >> 14 & 0x3FFF) + 1
    if kind == b"VP8X":
        return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    return None


def _open(path) -> Image.Image:
    """``Image.open`` of an image within :func:`max_pixels` (call it under :func:`strict_pillow`;
    a WebP's size is checked from its header first, as Pillow allocates its canvas on opening),
    with HEIC/HEIF photos read through pillow-heif (registered on first need, by content: a phone
    photo renamed .jpg is read too)."""
    with open(path, "rb") as f:
        size = _webp_size(f.read(30))
    if size is not None:
        _check_pixels(path, *size)
    try:
        im = Image.open(path)
    except Exception:
        if not _is_heif(path):
            raise
        try:
            from pillow_heif import register_heif_opener
        except ImportError:
            raise _error(path, "a HEIC/HEIF image: reading it needs the pillow-heif package "
                               "(pip install pillow-heif, or pip install 'inik[heif]')") from None
        register_heif_opener()
        im = Image.open(path)
    try:
        _check_pixels(path, *im.size)
    except ImageReadError:
        im.close()
        raise
    return im


def _heif_bits(im) -> int:
    try:
        return int(im.info.get("bit_depth") or 8)
    except (TypeError, ValueError):
        return 8


def _read_heif_high(path, im, bits: int) -> np.ndarray | None:
    """A ``bits``-bit HEIF (10 or 12: some cameras' .HIF, HDR phone photos) as uint16 (H, W, C)
    on the full 16-bit scale (code v of b bits -> round(v * 65535 / (2^b - 1)), so
    white stays white), decoded by pillow-heif without its conversion to 8 bits;
    None, to read it at 8 bits instead, when that decode does not give the image
    Pillow's opener describes (size, channels)."""
    from pillow_heif import open_heif

    heif = open_heif(path, convert_hdr_to_8bit=False)
    arr = np.asarray(heif)
    if arr.dtype != np.uint16 or not 8 < bits <= 16:
        return None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[:2] != (im.height, im.width) or arr.shape[2] != len(im.getbands()):
        return None
    codes = arr >> (16 - bits)  # pillow-heif shifts b-bit codes to the top of 16 bits
    return np.round(codes * (65535.0 / ((1 << bits) - 1))).astype(np.uint16)


def _png_bit_depth(path) -> int:
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or head[12:16] != b"IHDR":
        raise _error(path, "not a valid PNG (no IHDR chunk)")
    return head[24]


# Pillow's 8-bit unpackers keep the most significant byte of each 16-bit sample;
# reading the big-endian PNG data as little-endian ("16L") makes them keep the
# least significant byte instead.
_PNG16_PILLOW = {"RGB;16B": "RGB;16L", "RGBA;16B": "RGBA;16L"}


def _read_png16_pillow(path) -> np.ndarray | None:
    """16-bit RGB(A) PNG through Pillow's decoder, as uint16 (H, W, C); None if
    Pillow's decoding plan is not the single-tile one this relies on."""
    with Image.open(path) as im:
        tile = list(getattr(im, "tile", []))
        if len(tile) != 1 or tile[0][0] != "zip" or tile[0][3] not in _PNG16_PILLOW:
            return None
        low_rawmode = _PNG16_PILLOW[tile[0][3]]
        im.load()
        high = np.asarray(im)
    with Image.open(path) as im:
        t = im.tile[0]
        im.tile = [t._replace(args=low_rawmode) if hasattr(t, "_replace") else (t[0], t[1], t[2], low_rawmode)]
        im.load()
        low = np.asarray(im)
    return (high.astype(np.uint16) << 8) | low.astype(np.uint16)


def _pypng():
    try:
        import png
    except ImportError:
        raise ImportError("16-bit PNG support needs the pypng package: pip install pypng") from None
    return png


def _read_png16_pypng(path) -> np.ndarray:
    """Any 16-bit PNG as uint16 (H, W, C) through pypng (pure Python, slower)."""
    png = _pypng()

    width, height, rows, info = png.Reader(filename=str(path)).asDirect()
    planes = info["planes"]
    data = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows])
    return data.reshape(height, width, planes)


def _read_png16(path, mode: str) -> np.ndarray:
    arr = None
    if mode in ("RGB", "RGBA"):
        arr = _read_png16_pillow(path)
    if arr is None:
        arr = _read_png16_pypng(path)
    return arr


_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _is_tiff(path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) in _TIFF_MAGIC
    except FileNotFoundError:
        raise _error(path, "broken symbolic link" if os.path.islink(path) else "no such file") from None
    except OSError as e:
        raise _error(path, f"cannot open ({e})") from e


def _check_tiff_page(path, page) -> None:
    """A TIFF page's size from its header, before tifffile allocates anything for it: within
    :func:`max_pixels`, tiles too (each is decompressed whole), and a layout that can be read."""
    _check_pixels(path, page.imagewidth, page.imagelength)
    if page.is_tiled:
        _check_pixels(path, page.tilewidth, page.tilelength * page.tiledepth, "TIFF tile")
    if page.imagedepth > 1 or page.samplesperpixel > 5:
        raise _error(path, f"unsupported TIFF layout (depth {page.imagedepth}, {page.samplesperpixel} samples "
                           f"per pixel)")


def _read_tiff(path) -> tuple[np.ndarray, int, int, bytes | None]:
    """First page of a TIFF as (H, W, C) native dtype, bit depth, orientation, ICC profile.

    Grey (black or white is zero), RGB, palette (its colour map applied, 8 bits) and
    CMYK (converted to RGB as Pillow converts CMYK JPEGs: R = (1 - C)(1 - K), no
    colour management); any other photometric interpretation is refused."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        _check_tiff_page(path, page)
        arr = page.asarray()
        photometric = int(page.photometric)
        separate_planes = int(page.planarconfig) == 2
        tag = page.tags.get(_EXIF_ORIENTATION)
        orientation = int(tag.value) if tag is not None else 1
        inkset = page.tags.get(332)  # InkSet: 1 (or absent) = CMYK
        icc = page.tags.get(_TIFF_ICC_TAG)
        icc = bytes(icc.value) if icc is not None and isinstance(icc.value, (bytes, bytearray)) else None
        colormap = page.colormap if photometric == 3 else None
        compression = int(page.compression)
    if arr.ndim == 3 and separate_planes:
        arr = np.moveaxis(arr, 0, -1)  # (C, H, W) planes -> interleaved (H, W, C)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4, 5):
        raise _error(path, f"unsupported TIFF layout {arr.shape}")
    if photometric == 3:  # palette: indices into a 16-bit colour map
        if colormap is None or arr.shape[2] != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise _error(path, "palette TIFF without a usable colour map")
        arr = (np.asarray(colormap)[:, arr[:, :, 0]].transpose(1, 2, 0) >> 8).astype(np.uint8)
    elif photometric == 5:  # separated: CMYK (+ alpha)
        if (inkset is not None and int(inkset.value) != 1) or arr.shape[2] not in (4, 5):
            raise _error(path, f"unsupported separated (ink) TIFF with {arr.shape[2]} samples; only CMYK is read")
        top = 1.0 if np.issubdtype(arr.dtype, np.floating) else float(np.iinfo(arr.dtype).max)
        cmy, k = arr[:, :, :3].astype(np.float64), arr[:, :, 3:4].astype(np.float64)
        rgb = (top - cmy) * (top - k) / top
        rgb = rgb.astype(arr.dtype) if arr.dtype.kind == "f" else np.round(rgb).astype(arr.dtype)
        arr = np.concatenate([rgb, arr[:, :, 4:]], axis=2)
    elif photometric == 0:  # white is zero
        if arr.shape[2] not in (1, 2):
            raise _error(path, f"unsupported min-is-white TIFF with {arr.shape[2]} samples")
        top = 1.0 if np.issubdtype(arr.dtype, np.floating) else np.iinfo(arr.dtype).max
        arr = np.concatenate([(top - arr[:, :, :1]).astype(arr.dtype), arr[:, :, 1:]], axis=2)
    elif photometric == 6 and compression in (6, 7):
        pass  # JPEG-compressed YCbCr: tifffile decodes it to RGB
    elif photometric not in (1, 2):
        name = getattr(tifffile.PHOTOMETRIC(photometric), "name", str(photometric))
        raise _error(path, f"unsupported TIFF photometric interpretation {name} (grey, RGB, palette or CMYK "
                           f"are read)")
    if arr.shape[2] == 5:
        raise _error(path, f"unsupported TIFF layout {arr.shape}")
    if arr.dtype == np.uint8:
        depth = 8
    elif arr.dtype == np.uint16:
        depth = 16
    elif arr.dtype in (np.float32, np.float64, np.float16):
        depth = 32
    else:
        raise _error(path, f"unsupported TIFF sample type {arr.dtype} (expected uint8, uint16 or float)")
    return arr, depth, orientation if 1 <= orientation <= 8 else 1, icc


_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def _decode(path) -> tuple[np.ndarray, int, str, int, bytes | None, bytes | None]:
    """Native pixels (H, W, C) uint8/uint16/float, bit depth, format, orientation
    (the orientation already applied to the pixels), ICC profile, raw EXIF block."""
    max_pixels()  # a malformed INIK_MAX_PIXELS raises here, not as the file's fault
    if _is_tiff(path):
        try:
            arr, depth, orientation, icc = _read_tiff(path)
        except ImageReadError:
            raise
        except Exception as e:
            raise _error(path, f"cannot decode TIFF ({type(e).__name__}: {e})") from e
        return _orient(arr, orientation), depth, "TIFF", orientation, icc, None
    with strict_pillow():
        return _decode_pillow(path)


def _decode_pillow(path) -> tuple[np.ndarray, int, str, int, bytes | None, bytes | None]:
    """:func:`_decode` of what Pillow opens (under :func:`strict_pillow`)."""
    try:
        im = _open(path)
    except ImageReadError:
        raise
    except Exception as e:
        raise _error(path, f"cannot open as an image ({e})") from e
    with im:
        fmt = im.format or "?"
        mode = im.mode
        keyed = fmt == "PNG" and "transparency" in im.info and mode not in ("P", "PA")  # a tRNS colour key
        heif_bits = _heif_bits(im) if fmt == "HEIF" else 8
        try:
            orientation = _orientation_of(im)
            icc, exif = im.info.get("icc_profile"), im.info.get("exif")
            png16 = fmt == "PNG" and _png_bit_depth(path) == 16
            if keyed and png16:  # pypng turns the key into an alpha channel
                arr, depth = _read_png16_pypng(path), 16
            elif mode in ("I;16", "I;16B", "I;16L"):
                arr, depth = np.asarray(im).astype(np.uint16)[:, :, None], 16
            elif mode == "I":  # 32-bit integer grey: accepted when it holds 16-bit codes
                arr = np.asarray(im)
                if arr.size and (arr.min() < 0 or arr.max() > 65535):
                    raise _error(path, f"32-bit integer samples outside 0..65535 (range {arr.min()}..{arr.max()})")
                arr, depth = arr.astype(np.uint16)[:, :, None], 16
            elif mode == "F":
                arr, depth = np.asarray(im).astype(np.float32)[:, :, None], 32
            elif png16:
                arr, depth = _read_png16(path, mode), 16
            elif heif_bits > 8 and (high := _read_heif_high(path, im, heif_bits)) is not None:
                arr, depth = high, 16
            else:
                if mode == "1":  # bilevel: grey
                    im = im.convert("L")
                elif keyed and mode in ("L", "RGB"):  # pixels of the key colour get alpha 0
                    im = im.convert(mode + "A")
                elif mode not in ("L", "LA", "RGB", "RGBA"):
                    has_alpha = "A" in mode or "transparency" in im.info
                    im = im.convert("RGBA" if has_alpha else "RGB")
                arr, depth = np.asarray(im), 8
                if arr.ndim == 2:
                    arr = arr[:, :, None]
        except ImageReadError:
            raise
        except Exception as e:
            raise _error(path, f"cannot decode image data ({type(e).__name__}: {e})") from e
    return _orient(arr, orientation), depth, fmt, orientation, icc, exif


def _to_float(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / np.float32(255)
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / np.float32(65535)
    return arr.astype(np.float32)


def _convert_channels(arr: np.ndarray, mode: str | None, path) -> np.ndarray:
    c = arr.shape[2]
    if mode is None:
        return arr
    if mode == "RGB":
        if c in (1, 2):
            return np.repeat(arr[:, :, :1], 3, axis=2)
        return arr[:, :, :3]
    if mode == "RGBA":
        one = np.ones(arr.shape[:2] + (1,), arr.dtype)
        if c == 1:
            return np.concatenate([np.repeat(arr, 3, axis=2), one], axis=2)
        if c == 2:
            return np.concatenate([np.repeat(arr[:, :, :1], 3, axis=2), arr[:, :, 1:]], axis=2)
        if c == 3:
            return np.concatenate([arr, one], axis=2)
        return arr
    raise ValueError(f"mode must be None, 'RGB' or 'RGBA'; got {mode!r} (reading {path})")


def read_image(path, mode: str | None = "RGB") -> tuple[np.ndarray, ImageInfo]:
    """Read an image file as float32 in [0, 1], keeping its bit depth exactly.

    Args:
        path: PNG (8/16-bit), JPEG, TIFF (8/16-bit, float) or any format Pillow
            reads. The EXIF orientation, if any, is applied; the ICC profile
            and EXIF block are returned in ``info`` (see :class:`ImageInfo`).
        mode: ``"RGB"`` (default): ``(H, W, 3)``; grey is replicated, alpha is
            dropped (not composited; ``info.has_alpha`` says it was there).
            ``"RGBA"``: ``(H, W, 4)``, alpha 1 where the file has none.
            ``None``: the file's own channels, ``(H, W, C)`` with C in 1-4
            (``info.mode`` names them).

    Returns:
        ``(image, info)``: image float32 ``(H, W, C)``, values ``code / (2**bits - 1)``
        (float TIFFs as stored); info an :class:`ImageInfo`.

    Raises:
        ImageReadError (an OSError) naming the file if it is missing, not an
        image, truncated or of an unsupported layout.
    """
    arr, depth, fmt, orientation, icc, exif = _decode(path)
    file_mode = _MODES[arr.shape[2]]
    pixels = _convert_channels(_to_float(arr), mode, path)
    if not icc_fits(icc, pixels.shape[2]):
        icc = None  # none, not a profile, or of a colour space converted from (CMYK, grey as RGB)
    info = ImageInfo(
        path=str(path),
        format=fmt,
        bit_depth=depth,
        mode=file_mode,
        has_alpha=arr.shape[2] in (2, 4),
        orientation=orientation,
        width=arr.shape[1],
        height=arr.shape[0],
        icc_profile=bytes(icc) if icc else None,
        exif=_upright_exif(exif) if exif else None,
    )
    return pixels, info


def read_image_info(path) -> tuple[int, int]:
    """``(width, height)`` of an image after EXIF orientation, reading only its
    header (a PNG is decoded: its EXIF block may follow the pixels). Raises ImageReadError
    naming the file if it cannot be opened or is larger than :func:`max_pixels`."""
    max_pixels()  # a malformed INIK_MAX_PIXELS raises here, not as the file's fault
    if _is_tiff(path):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                _check_tiff_page(path, page)
                h, w = page.imagelength, page.imagewidth
                tag = page.tags.get(_EXIF_ORIENTATION)
                orientation = int(tag.value) if tag is not None else 1
        except ImageReadError:
            raise
        except Exception as e:
            raise _error(path, f"cannot open as a TIFF ({e})") from e
    else:
        try:
            with strict_pillow(), _open(path) as im:
                (w, h), orientation = im.size, _orientation_of(im)
        except ImageReadError:
            raise
        except Exception as e:
            raise _error(path, f"cannot open as an image ({e})") from e
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def is_float_image(path) -> bool:
    """Whether a file stores floating-point samples (a float TIFF), from its header.
    Raises ImageReadError naming the file if it cannot be opened."""
    if not _is_tiff(path):
        return False
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            dtype = tif.pages[0].dtype
    except Exception as e:
        raise _error(path, f"cannot open as a TIFF ({e})") from e
    return dtype is not None and dtype.kind == "f"


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
    png = _pypng()

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
        if space != _icc_space_for(channels):
            raise ValueError(f"icc_profile describes {space} data, but the image has {channels} channel(s) "
                             f"({_MODES[channels]}): it needs a {_icc_space_for(channels)} profile (writing {path})")
        icc_profile = bytes(icc_profile)
    if exif is not None:
        if not isinstance(exif, (bytes, bytearray)):
            raise ValueError(f"exif must be bytes (an EXIF block), got {type(exif).__name__} (writing {path})")
        exif = bytes(exif_body(exif))
        if exif[:4] not in (b"II*\x00", b"MM\x00*"):
            raise ValueError(f"exif must be an EXIF block (a TIFF structure, optionally after 'Exif\\0\\0'); "
                             f"got bytes starting {exif[:8]!r} (writing {path})")
    return icc_profile or None, exif or None


def write_image(
    path,
    image,
    *,
    bit_depth: int | None = None,
    overwrite: bool = False,
    quality: int = 95,
    icc_profile: bytes | None = None,
    exif: bytes | None = None,
) -> Path:
    """Write an image atomically, in 8 or 16 bits.

    Args:
        path: destination; the format comes from the suffix: ``.png``
            (8/16-bit), ``.tif``/``.tiff`` (8/16-bit, zlib-compressed),
            ``.jpg``/``.jpeg`` (8-bit, no alpha).
        image: ``(H, W)`` or ``(H, W, C)`` with C in 1-4 (L, LA, RGB, RGBA):
            float in [0, 1] (clipped, rounded to the nearest code), or uint8 /
            uint16 written unchanged. A torch tensor ``(C, H, W)`` is accepted
            too (see :func:`tensor_to_image`).
        bit_depth: 8 or 16; default: 16 for uint16 input, else 8.
        overwrite: replace an existing file; otherwise FileExistsError.
        quality: JPEG quality (1-95).
        icc_profile: an ICC colour profile to embed (PNG, JPEG, TIFF), such as
            :attr:`ImageInfo.icc_profile`; it must describe RGB data for colour
            images, GRAY for grey ones (ValueError otherwise).
        exif: an EXIF block to embed (PNG and JPEG; TIFF output leaves it out),
            such as :attr:`ImageInfo.exif`, written as given: its orientation tag
            must fit the pixels. A JPEG's EXIF segment holds at most 64 KB; a
            longer block is left out with a warning.

    Returns:
        The path written.
    """
    path = Path(path)
    if not isinstance(image, np.ndarray):
        image = tensor_to_image(image)
    img = image[:, :, None] if image.ndim == 2 else image
    if img.ndim != 3 or img.shape[2] not in (1, 2, 3, 4):
        raise ValueError(f"image must be (H, W) or (H, W, C) with C in 1..4; got shape {tuple(image.shape)} "
                         f"(writing {path})")
    if bit_depth is None:
        bit_depth = 16 if img.dtype == np.uint16 else 8
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16; got {bit_depth} (writing {path})")
    suffix = path.suffix.lower()
    if suffix not in WRITE_EXTENSIONS:
        raise ValueError(f"{path}: unsupported suffix {path.suffix!r}; use .png, .tif, .tiff, .jpg or .jpeg")
    if suffix in (".jpg", ".jpeg"):
        if bit_depth != 8:
            raise ValueError(f"{path}: JPEG holds only 8 bits; got bit_depth={bit_depth}")
        if img.shape[2] in (2, 4):
            raise ValueError(f"{path}: JPEG cannot hold an alpha channel")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: file exists (pass overwrite=True to replace it)")
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
        pil = Image.fromarray(q[:, :, 0] if q.shape[2] == 1 else q, _MODES[q.shape[2]])
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

    write_atomically(path, buf.getbuffer())
    return path


def write_atomically(path, data) -> None:
    """Write ``data`` (bytes-like) to ``path`` so that a crash never leaves a partial
    file under that name: a temporary file in the same folder, created with the usual
    permissions (0666 less the umask, unlike mkstemp's 0600), flushed to disk, then
    renamed over ``path``; on any failure it is removed and ``path`` is untouched."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def image_to_tensor(image: np.ndarray):
    """``(H, W, C)`` float numpy -> ``(C, H, W)`` float32 torch tensor (copy)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(np.asarray(image, dtype=np.float32).transpose(2, 0, 1)))


def tensor_to_image(tensor, dtype=np.float32) -> np.ndarray:
    """``(C, H, W)`` or ``(1, C, H, W)`` torch tensor -> ``(H, W, C)`` numpy of ``dtype``
    (float32 or float64)."""
    import torch

    t = tensor.detach()
    if t.ndim == 4:
        if t.shape[0] != 1:
            raise ValueError(f"expected one image, got a batch of {t.shape[0]}")
        t = t[0]
    if t.ndim != 3:
        raise ValueError(f"expected a (C, H, W) tensor; got shape {tuple(t.shape)}")
    torch_dtype = torch.float64 if np.dtype(dtype) == np.float64 else torch.float32
    return t.to("cpu", dtype=torch_dtype).permute(1, 2, 0).contiguous().numpy()


def list_images(folder, recursive: bool = False) -> list[Path]:
    """Image files (by suffix, see IMAGE_EXTENSIONS) in a folder, sorted by path.

    Hidden files (and with ``recursive``, hidden folders) are skipped; symbolic
    links to folders are followed (each folder once). A broken symbolic link with
    an image's suffix is listed, so that reading it reports it instead of the file
    vanishing without a word. Raises NotADirectoryError naming the folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: not a directory")
    if recursive:
        found, seen = [], set()
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen:  # a link back up the tree, or two links to one folder
                dirnames[:] = []
                continue
            seen.add(real)
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            found.extend(Path(dirpath) / f for f in filenames)
    else:
        found = list(folder.iterdir())
    return sorted(p for p in found if not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
                  and (p.is_file() or (p.is_symlink() and not p.exists())))

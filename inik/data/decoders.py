"""Format-specific decoders behind :func:`inik.data.io.read_image`: each file's native pixels,
bit depth, orientation and metadata, within the limits of :mod:`.read_limits`.

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
"""

from __future__ import annotations

import os
import stat

import numpy as np
from PIL import Image

from .metadata import EXIF_ORIENTATION, orient, orientation_of
from .read_limits import ImageReadError, check_pixels, max_pixels, read_error, strict_pillow

_TIFF_ICC_TAG = 34675  # InterColorProfile

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


def open_image(path) -> Image.Image:
    """``Image.open`` of an image within :func:`max_pixels` (call it under :func:`strict_pillow`;
    a WebP's size is checked from its header first, as Pillow allocates its canvas on opening),
    with HEIC/HEIF photos read through pillow-heif (registered on first need, by content: a phone
    photo renamed .jpg is read too)."""
    with open(path, "rb") as f:
        size = _webp_size(f.read(30))
    if size is not None:
        check_pixels(path, *size)
    try:
        im = Image.open(path)
    except Exception:
        if not _is_heif(path):
            raise
        try:
            from pillow_heif import register_heif_opener
        except ImportError:
            raise read_error(path, "a HEIC/HEIF image: reading it needs the pillow-heif package "
                             "(pip install pillow-heif, or pip install 'inik[heif]')") from None
        register_heif_opener()
        im = Image.open(path)
    try:
        check_pixels(path, *im.size)
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
        raise read_error(path, "not a valid PNG (no IHDR chunk)")
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


def pypng():
    """The ``png`` module of pypng (16-bit PNG reading and writing); ImportError naming it if absent."""
    try:
        import png
    except ImportError:
        raise ImportError("16-bit PNG support needs the pypng package: pip install pypng") from None
    return png


def _read_png16_pypng(path) -> np.ndarray:
    """Any 16-bit PNG as uint16 (H, W, C) through pypng (pure Python, slower)."""
    png = pypng()

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


def is_tiff(path) -> bool:
    """Whether ``path`` starts as a TIFF does; the first look at a file to read, so it also
    refuses what is not a regular file (a named pipe would block the open)."""
    if os.path.exists(path) and not stat.S_ISREG(os.stat(path).st_mode):
        raise read_error(path, "not a regular file (a folder, pipe or device)")
    try:
        with open(path, "rb") as f:
            return f.read(4) in _TIFF_MAGIC
    except FileNotFoundError:
        raise read_error(path, "broken symbolic link" if os.path.islink(path) else "no such file") from None
    except OSError as e:
        raise read_error(path, f"cannot open ({e})") from e


def check_tiff_page(path, page) -> None:
    """A TIFF page's size from its header, before tifffile allocates anything for it: within
    :func:`max_pixels`, tiles too (each is decompressed whole), and a layout that can be read."""
    check_pixels(path, page.imagewidth, page.imagelength)
    if page.is_tiled:
        check_pixels(path, page.tilewidth, page.tilelength * page.tiledepth, "TIFF tile")
    if page.imagedepth > 1 or page.samplesperpixel > 5:
        raise read_error(path, f"unsupported TIFF layout (depth {page.imagedepth}, {page.samplesperpixel} samples "
                         f"per pixel)")


def _read_tiff(path) -> tuple[np.ndarray, int, int, bytes | None]:
    """First page of a TIFF as (H, W, C) native dtype, bit depth, orientation, ICC profile.

    Grey (black or white is zero), RGB, palette (its colour map applied, 8 bits) and
    CMYK (converted to RGB as Pillow converts CMYK JPEGs: R = (1 - C)(1 - K), no
    colour management); any other photometric interpretation is refused."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        check_tiff_page(path, page)
        arr = page.asarray()
        photometric = int(page.photometric)
        separate_planes = int(page.planarconfig) == 2
        tag = page.tags.get(EXIF_ORIENTATION)
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
        raise read_error(path, f"unsupported TIFF layout {arr.shape}")
    if photometric == 3:  # palette: indices into a 16-bit colour map
        if colormap is None or arr.shape[2] != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise read_error(path, "palette TIFF without a usable colour map")
        arr = (np.asarray(colormap)[:, arr[:, :, 0]].transpose(1, 2, 0) >> 8).astype(np.uint8)
    elif photometric == 5:  # separated: CMYK (+ alpha)
        if (inkset is not None and int(inkset.value) != 1) or arr.shape[2] not in (4, 5):
            raise read_error(path, f"unsupported separated (ink) TIFF with {arr.shape[2]} samples; only CMYK is read")
        top = 1.0 if np.issubdtype(arr.dtype, np.floating) else float(np.iinfo(arr.dtype).max)
        cmy, k = arr[:, :, :3].astype(np.float64), arr[:, :, 3:4].astype(np.float64)
        rgb = (top - cmy) * (top - k) / top
        rgb = rgb.astype(arr.dtype) if arr.dtype.kind == "f" else np.round(rgb).astype(arr.dtype)
        arr = np.concatenate([rgb, arr[:, :, 4:]], axis=2)
    elif photometric == 0:  # white is zero
        if arr.shape[2] not in (1, 2):
            raise read_error(path, f"unsupported min-is-white TIFF with {arr.shape[2]} samples")
        top = 1.0 if np.issubdtype(arr.dtype, np.floating) else np.iinfo(arr.dtype).max
        arr = np.concatenate([(top - arr[:, :, :1]).astype(arr.dtype), arr[:, :, 1:]], axis=2)
    elif photometric == 6 and compression in (6, 7):
        pass  # JPEG-compressed YCbCr: tifffile decodes it to RGB
    elif photometric not in (1, 2):
        name = getattr(tifffile.PHOTOMETRIC(photometric), "name", str(photometric))
        raise read_error(path, f"unsupported TIFF photometric interpretation {name} (grey, RGB, palette or CMYK "
                         f"are read)")
    if arr.shape[2] == 5:
        raise read_error(path, f"unsupported TIFF layout {arr.shape}")
    if arr.dtype == np.uint8:
        depth = 8
    elif arr.dtype == np.uint16:
        depth = 16
    elif arr.dtype in (np.float32, np.float64, np.float16):
        depth = 32
    else:
        raise read_error(path, f"unsupported TIFF sample type {arr.dtype} (expected uint8, uint16 or float)")
    return arr, depth, orientation if 1 <= orientation <= 8 else 1, icc


#: Pillow's mode (channel layout) of an image with 1-4 channels.
MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def decode(path) -> tuple[np.ndarray, int, str, int, bytes | None, bytes | None]:
    """Native pixels (H, W, C) uint8/uint16/float, bit depth, format, orientation
    (the orientation already applied to the pixels), ICC profile, raw EXIF block."""
    max_pixels()  # a malformed INIK_MAX_PIXELS raises here, not as the file's fault
    if is_tiff(path):
        try:
            arr, depth, orientation, icc = _read_tiff(path)
        except ImageReadError:
            raise
        except Exception as e:
            raise read_error(path, f"cannot decode TIFF ({type(e).__name__}: {e})") from e
        return orient(arr, orientation), depth, "TIFF", orientation, icc, None
    with strict_pillow():
        return _decode_pillow(path)


def _decode_pillow(path) -> tuple[np.ndarray, int, str, int, bytes | None, bytes | None]:
    """:func:`decode` of what Pillow opens (under :func:`strict_pillow`)."""
    try:
        im = open_image(path)
    except ImageReadError:
        raise
    except Exception as e:
        raise read_error(path, f"cannot open as an image ({e})") from e
    with im:
        fmt = im.format or "?"
        mode = im.mode
        keyed = fmt == "PNG" and "transparency" in im.info and mode not in ("P", "PA")  # a tRNS colour key
        heif_bits = _heif_bits(im) if fmt == "HEIF" else 8
        try:
            orientation = orientation_of(im)
            icc, exif = im.info.get("icc_profile"), im.info.get("exif")
            png16 = fmt == "PNG" and _png_bit_depth(path) == 16
            if keyed and png16:  # pypng turns the key into an alpha channel
                arr, depth = _read_png16_pypng(path), 16
            elif mode in ("I;16", "I;16B", "I;16L"):
                arr, depth = np.asarray(im).astype(np.uint16)[:, :, None], 16
            elif mode == "I":  # 32-bit integer grey: accepted when it holds 16-bit codes
                arr = np.asarray(im)
                if arr.size and (arr.min() < 0 or arr.max() > 65535):
                    raise read_error(path, f"32-bit integer samples outside 0..65535 (range {arr.min()}..{arr.max()})")
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
            raise read_error(path, f"cannot decode image data ({type(e).__name__}: {e})") from e
    return orient(arr, orientation), depth, fmt, orientation, icc, exif


"""Bit-depth-true image reading and writing: the public API (format-specific work is in
:mod:`.decoders` and :mod:`.encoders`, EXIF and ICC handling in :mod:`.metadata`).

Images are handled as float32 numpy arrays ``(H, W, C)`` in ``[0, 1]``: an
8-bit file is divided by 255, a 16-bit file by 65535, so that a 16-bit DPDD
image keeps its 16 bits. Every read also returns an :class:`ImageInfo` with the
file's bit depth, channel layout and EXIF orientation (which is applied to the
pixels), so that a result can be written back in the source's own bit depth,
and the file's colour profile (ICC) and EXIF block, so that it can be written
back with the same colours and camera metadata. How each format is decoded:
:mod:`.decoders`.

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

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .decoders import MODES, check_tiff_page, decode, is_tiff, open_image
from .encoders import encode_image
from .metadata import EXIF_ORIENTATION, icc_colour_space, icc_fits, orientation_of, upright_exif
from .metadata import EXIF_PREFIX as EXIF_PREFIX
from .metadata import exif_body as exif_body
from .read_limits import DEFAULT_MAX_PIXELS, MAX_PIXELS_ENV, ImageReadError, max_pixels, read_error
from .read_limits import strict_pillow as strict_pillow

__all__ = [
    "ImageInfo",
    "IMAGE_EXTENSIONS",
    "WRITE_EXTENSIONS",
    "ImageReadError",
    "read_image",
    "read_finite_image",
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
#: the suffixes written as JPEG (8 bits, no alpha)
JPEG_EXTENSIONS = (".jpg", ".jpeg")


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
    arr, depth, fmt, orientation, icc, exif = decode(path)
    file_mode = MODES[arr.shape[2]]
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
        exif=upright_exif(exif) if exif else None,
    )
    return pixels, info


def read_finite_image(path, mode: str | None = "RGB") -> tuple[np.ndarray, ImageInfo]:
    """:func:`read_image`, refusing NaN or Inf pixels (float TIFFs can hold them) with a
    ValueError naming the file: no consumer of pixels can restore, score or learn from them."""
    pixels, info = read_image(path, mode)
    if info.bit_depth == 32 and not np.isfinite(pixels).all():
        raise ValueError(f"{path}: holds NaN or Inf pixels")
    return pixels, info


def read_image_info(path) -> tuple[int, int]:
    """``(width, height)`` of an image after EXIF orientation, reading only its
    header (a PNG is decoded: its EXIF block may follow the pixels). Raises ImageReadError
    naming the file if it cannot be opened or is larger than :func:`max_pixels`."""
    max_pixels()  # a malformed INIK_MAX_PIXELS raises here, not as the file's fault
    if is_tiff(path):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                check_tiff_page(path, page)
                h, w = page.imagelength, page.imagewidth
                tag = page.tags.get(EXIF_ORIENTATION)
                orientation = int(tag.value) if tag is not None else 1
        except ImageReadError:
            raise
        except Exception as e:
            raise read_error(path, f"cannot open as a TIFF ({e})") from e
    else:
        try:
            with strict_pillow(), open_image(path) as im:
                (w, h), orientation = im.size, orientation_of(im)
        except ImageReadError:
            raise
        except Exception as e:
            raise read_error(path, f"cannot open as an image ({e})") from e
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def is_float_image(path) -> bool:
    """Whether a file stores floating-point samples (a float TIFF), from its header.
    Raises ImageReadError naming the file if it cannot be opened."""
    if not is_tiff(path):
        return False
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            dtype = tif.pages[0].dtype
    except Exception as e:
        raise read_error(path, f"cannot open as a TIFF ({e})") from e
    return dtype is not None and dtype.kind == "f"


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
    image = np.asarray(image)  # a plain array: subclasses (np.matrix) index otherwise
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
    if suffix in JPEG_EXTENSIONS:
        if bit_depth != 8:
            raise ValueError(f"{path}: JPEG holds only 8 bits; got bit_depth={bit_depth}")
        if img.shape[2] in (2, 4):
            raise ValueError(f"{path}: JPEG cannot hold an alpha channel")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: file exists (pass overwrite=True to replace it)")
    data = encode_image(path, img, suffix, bit_depth, quality=quality, icc_profile=icc_profile, exif=exif)
    write_atomically(path, data)
    return path


def write_atomically(path, data) -> None:
    """Write ``data`` (bytes-like) to ``path`` so that a crash never leaves a partial
    file under that name: a temporary file in the same folder, created with the usual
    permissions (0666 less the umask, unlike mkstemp's 0600), flushed to disk, then
    renamed over ``path``; on any failure it is removed and ``path`` is untouched."""
    path = Path(path)
    # short, whatever the name: a name near the 255-byte limit must still get a temporary beside it
    tmp = path.with_name(f".inik-{uuid.uuid4().hex[:12]}.tmp")
    fd = None
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            if fd is not None:  # ours: a name that existed already belongs to another writer
                os.unlink(tmp)
        except OSError:  # its folder is gone: the first error is the one to report
            pass
        if isinstance(exc, OSError) and exc.filename == os.fspath(tmp):  # name the file asked for
            raise type(exc)(exc.errno, exc.strerror, os.fspath(path)) from None
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

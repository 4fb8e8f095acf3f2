"""What every image read keeps to, and the error it raises otherwise: the pixel limit
``INIK_MAX_PIXELS`` (checked from headers, before decoding) and Pillow's strict settings."""

from __future__ import annotations

import contextlib
import threading

from PIL import Image, ImageFile

from .. import settings

#: Environment variable that sets the largest image read, in pixels (width x height).
MAX_PIXELS_ENV = "INIK_MAX_PIXELS"
# 16384 x 16384: above any camera's photo (pixel-shift composites reach ~240 MP), 3 GiB as float32 RGB.
DEFAULT_MAX_PIXELS = settings.SETTINGS[MAX_PIXELS_ENV].default


class ImageReadError(OSError):
    """An image file could not be read; the message names the file."""


def max_pixels() -> int:
    """The largest image read, in pixels: ``INIK_MAX_PIXELS``, or :data:`DEFAULT_MAX_PIXELS`
    when it is unset or 0. ValueError naming the variable if it is not a whole number."""
    return settings.get(MAX_PIXELS_ENV)


def check_pixels(path, width: int, height: int, what: str = "image") -> None:
    """Refuse a file whose header claims more than :func:`max_pixels` pixels: its size
    comes from the file, so it is checked before any pixel buffer is allocated."""
    limit = max_pixels()
    if width * height > limit:
        raise read_error(path, f"{what} of {width}x{height} pixels is larger than the limit of {limit} pixels "
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
    from its header alone, before :func:`check_pixels` can name the size and the limit.
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


def read_error(path, what: str) -> ImageReadError:
    """An :class:`ImageReadError` naming ``path``, with ``what`` on one line."""
    return ImageReadError(f"{path}: {' '.join(str(what).split())}")  # one line: decoders' messages may hold newlines

"""Image dimensions read from files are bounded before any pixel buffer is allocated:
one limit (``INIK_MAX_PIXELS``, default :data:`inik.data.io.DEFAULT_MAX_PIXELS`) for
every format and every reading path.

The hand-made files claim sizes whose pixels could not be allocated on any test
machine (tens of GiB): refused from the header, they are refused at once."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from inik.cli import main
from inik.data import io as iio
from inik.data.io import DEFAULT_MAX_PIXELS, ImageReadError, read_image, read_image_info, write_image

HUGE = 200_000  # a side: HUGE x HUGE is 40 gigapixels


def _tiff(path, width, height, tile=None, samples=1):
    """A little-endian 8-bit TIFF whose one IFD claims ``width`` x ``height`` (and
    ``tile`` = (width, length) tiles, ``samples`` samples per pixel), with 4 bytes of pixel data."""
    data_at = 8 + 2 + 12 * (10 if tile else 9) + 4  # header, IFD (10 or 9 entries), then the data
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1), (277, 3, samples)]
    if tile:
        tags += [(322, 4, tile[0]), (323, 4, tile[1]), (324, 4, data_at), (325, 4, 4)]
    else:
        tags += [(273, 4, data_at), (278, 4, height), (279, 4, 4)]
    ifd = struct.pack("<H", len(tags))
    for tag, kind, value in sorted(tags):  # kind 3: SHORT, 4: LONG
        value = struct.pack("<I", value) if kind == 4 else struct.pack("<HH", value, 0)
        ifd += struct.pack("<HHI", tag, kind, 1) + value
    path.write_bytes(b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + b"\x00" * 4)
    return path


def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(path, width, height, bits=8, colour=2):
    """A PNG whose IHDR claims ``width`` x ``height`` (colour type 2: RGB, 4: grey + alpha),
    with a few bytes of image data."""
    ihdr = struct.pack(">IIBBBBB", width, height, bits, colour, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + _chunk(b"IEND", b""))
    return path


def _jpeg(path, width, height):
    """A small real JPEG whose SOF0 segment is made to claim ``width`` x ``height``."""
    write_image(path, np.zeros((16, 16, 3), np.uint8))
    data = bytearray(path.read_bytes())
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    path.write_bytes(bytes(data))
    return path


def _refused(path, width, height, limit=DEFAULT_MAX_PIXELS):
    """read_image and read_image_info both refuse ``path`` with the one-line message."""
    for read in (read_image, read_image_info):
        with pytest.raises(ImageReadError) as info:
            read(path)
        msg = str(info.value)
        assert str(path) in msg and f"{width}x{height}" in msg and str(limit) in msg, msg
        assert "INIK_MAX_PIXELS" in msg and "\n" not in msg, msg


@pytest.mark.parametrize("kind", ["tiff", "tiff tile", "png8", "png16", "png16 grey alpha", "jpeg"])
def test_headers_claiming_huge_images_are_refused_at_once(tmp_path, kind):
    """A 139-byte TIFF claiming 100000 x 100000 asked tifffile for 9 GiB (TIFFs had no limit);
    PNGs and JPEGs met Pillow's own limit, which INIK_MAX_PIXELS replaces."""
    if kind == "tiff":
        path, (w, h) = _tiff(tmp_path / "a.tif", HUGE, HUGE), (HUGE, HUGE)
    elif kind == "tiff tile":  # a small image of one huge tile: each tile is decompressed whole
        path, (w, h) = _tiff(tmp_path / "a.tif", 64, 64, tile=(HUGE, HUGE)), (HUGE, HUGE)
    elif kind == "jpeg":
        path, (w, h) = _jpeg(tmp_path / "a.jpg", 65535, 65535), (65535, 65535)
    else:
        bits, colour = {"png8": (8, 2), "png16": (16, 2), "png16 grey alpha": (16, 4)}[kind]
        path, (w, h) = _png(tmp_path / "a.png", HUGE, HUGE, bits, colour), (HUGE, HUGE)
    _refused(path, w, h)


def test_a_tiff_claiming_thousands_of_samples_per_pixel_is_refused(tmp_path):
    """Samples multiply what a pixel costs: more than read_image takes (5) is refused from the header."""
    path = _tiff(tmp_path / "a.tif", 64, 64, samples=65535)
    for read in (read_image, read_image_info):
        with pytest.raises(ImageReadError, match="unsupported TIFF layout .*65535 samples per pixel"):
            read(path)


def test_deblur_command_refuses_a_huge_header(tmp_path, capsys):
    bad = _tiff(tmp_path / "bomb.tif", HUGE, HUGE)
    out = tmp_path / "out.tif"
    assert main(["deblur", str(bad), "-o", str(out)]) != 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "bomb.tif" in line]
    assert "Traceback" not in err and len(lines) == 1, err
    assert f"{HUGE}x{HUGE}" in lines[0] and "INIK_MAX_PIXELS" in lines[0]
    assert not out.exists()


def _small(fmt, folder, width=48, height=40):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    if fmt == "png16":
        return write_image(folder / "a.png", img.astype(np.uint16) * 257)
    if fmt == "png16 grey alpha":
        return write_image(folder / "a.png", img[:, :, :2].astype(np.uint16) * 257)
    if fmt.startswith("webp"):
        path = folder / "a.webp"
        if fmt == "webp alpha":  # an extended (VP8X) file
            Image.fromarray(np.dstack([img, img[:, :, :1]])).save(path)
        else:
            Image.fromarray(img).save(path, lossless=fmt == "webp lossless")
        return path
    if fmt == "heif":
        pillow_heif = pytest.importorskip("pillow_heif")
        pillow_heif.register_heif_opener()
        path = folder / "a.heic"
        Image.fromarray(img).save(path, format="HEIF")
        return path
    if fmt == "bmp":
        path = folder / "a.bmp"
        Image.fromarray(img).save(path)
        return path
    return write_image(folder / f"a.{fmt}", img)


@pytest.mark.parametrize("fmt", ["png", "png16", "png16 grey alpha", "jpg", "tif", "bmp", "webp", "webp lossless",
                                 "webp alpha", "heif"])
def test_the_limit_is_exact_and_set_by_the_environment(tmp_path, monkeypatch, fmt):
    path = _small(fmt, tmp_path)
    monkeypatch.setenv("INIK_MAX_PIXELS", str(48 * 40))
    assert read_image(path)[0].shape == (40, 48, 3) and read_image_info(path) == (48, 40)
    monkeypatch.setenv("INIK_MAX_PIXELS", str(48 * 40 - 1))
    _refused(path, 48, 40, limit=48 * 40 - 1)


@pytest.mark.parametrize("fmt", ["webp", "webp lossless", "webp alpha"])
def test_a_webp_is_refused_before_pillow_opens_it(tmp_path, monkeypatch, fmt):
    """Pillow allocates a WebP's canvas on opening: its size is read from the header first."""
    path = _small(fmt, tmp_path)
    monkeypatch.setenv("INIK_MAX_PIXELS", "100")

    def no_open(*args, **kwargs):
        raise AssertionError("Image.open called for a WebP over the limit")

    monkeypatch.setattr(Image, "open", no_open)
    _refused(path, 48, 40, limit=100)


def test_the_limit_replaces_pillows_own(tmp_path, monkeypatch):
    """INIK_MAX_PIXELS may allow what Pillow's decompression-bomb limit refuses (here made
    tiny, to stand for a 200-megapixel photo under Pillow's default); Pillow's setting is
    left as it was."""
    path = _small("png", tmp_path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(path)
    assert read_image(path)[0].shape == (40, 48, 3)
    assert Image.MAX_IMAGE_PIXELS == 100


def test_a_larger_limit_lets_a_larger_image_through(tmp_path, monkeypatch):
    """Beyond the default: a 20000 x 20000 TIFF header (400 megapixels) passes with
    INIK_MAX_PIXELS=500000000 (read_image_info reads only the header)."""
    path = _tiff(tmp_path / "big.tif", 20_000, 20_000)
    assert 20_000**2 > DEFAULT_MAX_PIXELS
    _refused(path, 20_000, 20_000)
    monkeypatch.setenv("INIK_MAX_PIXELS", "500000000")
    assert read_image_info(path) == (20_000, 20_000)


@pytest.mark.parametrize("value", ["lots", "-1", "1.5", "2e9"])
def test_a_malformed_limit_is_a_clear_error(tmp_path, monkeypatch, value):
    path = _small("png", tmp_path)
    monkeypatch.setenv("INIK_MAX_PIXELS", value)
    for read in (read_image, read_image_info):
        with pytest.raises(ValueError, match=r"INIK_MAX_PIXELS=.*: expected a whole number"):
            read(path)


@pytest.mark.parametrize("value", ["0", "", " "])
def test_zero_or_unset_is_the_default(monkeypatch, value):
    monkeypatch.setenv("INIK_MAX_PIXELS", value)
    assert iio.max_pixels() == DEFAULT_MAX_PIXELS
    monkeypatch.delenv("INIK_MAX_PIXELS")
    assert iio.max_pixels() == DEFAULT_MAX_PIXELS

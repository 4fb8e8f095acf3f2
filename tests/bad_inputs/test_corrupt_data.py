"""Damaged image data: bit flips, truncation and bad CRCs in every format read.

Each read of a damaged file either returns the pixels the intact file decodes to
or raises one clear one-line error naming the file: never a black or partial
image. Where the format has no checksum over its compressed data (JPEG, WebP,
HEIF), a flipped bit can decode to other pixels, legitimately; there only the
absence of any other outcome is asserted.
"""

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

import inik
from inik.cli import main
from inik.data.io import ImageReadError, read_image, read_image_info, write_image

FRACTIONS = (0.02, 0.2, 0.45, 0.7, 0.95)
BITS = (0x01, 0x10, 0x80)


def _picture(bits=8, channels=3, seed=0, side=32):
    """A smooth picture with some noise: compresses like a photo, not like noise or a flat field."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:side, 0:side] / side
    base = np.stack([x, y, (x + y) / 2, 1 - x * y][:channels], axis=2)
    img = np.clip(base + rng.normal(0, 0.05, base.shape), 0, 1)
    top = 255 if bits == 8 else 65535
    return np.round(img * top).astype(np.uint8 if bits == 8 else np.uint16)


def _png_chunks(data):
    """(type, start of data, length) of each chunk of a PNG."""
    pos, chunks = 8, []
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunks.append((kind, pos + 8, length))
        pos += 12 + length
    return chunks


def _fix_crc(data, kind):
    """The CRC of each chunk of this type made right again."""
    out = bytearray(data)
    for k, start, length in _png_chunks(out):
        if k == kind:
            crc = zlib.crc32(bytes(out[start - 4:start + length]))
            out[start + length:start + length + 4] = struct.pack(">I", crc)
    return bytes(out)


def _flip(data, start, end, fraction, bit):
    out = bytearray(data)
    out[start + int((end - start - 1) * fraction)] ^= bit
    return bytes(out)


def _payload(fmt, data, path):
    """(start, end) of the compressed image data in a file of format ``fmt``."""
    if fmt.startswith("png"):
        (start, length), = [(s, n) for k, s, n in _png_chunks(data) if k == b"IDAT"]
        return start, start + length
    if fmt == "jpeg":
        return data.index(b"\xff\xda") + 14, len(data) - 2  # after the scan header, before EOI
    if fmt.startswith("tiff"):
        import tifffile
        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            return page.dataoffsets[0], page.dataoffsets[0] + page.databytecounts[0]
    if fmt == "webp":
        return 30, len(data)  # RIFF and VP8 headers, then the bitstream
    if fmt == "heif":
        return data.index(b"mdat") + 4, len(data)  # the media data box's contents
    raise AssertionError(fmt)


def _make(fmt, folder):
    """A small valid file of ``fmt`` and the pixels it decodes to."""
    if fmt == "png8":
        path = write_image(folder / "a.png", _picture())
    elif fmt == "png16":  # RGB: Pillow's decoder, twice
        path = write_image(folder / "a.png", _picture(16))
    elif fmt == "png16la":  # grey + alpha: pypng
        path = write_image(folder / "a.png", _picture(16, channels=2))
    elif fmt == "jpeg":
        path = write_image(folder / "a.jpg", _picture())
    elif fmt == "tiff8":
        path = write_image(folder / "a.tif", _picture())
    elif fmt == "tiff16":
        path = write_image(folder / "a.tif", _picture(16))
    elif fmt == "tiffraw":  # uncompressed strips: no checksum, but a cut must show
        import tifffile
        path = folder / "a.tif"
        tifffile.imwrite(path, _picture(), photometric="rgb", rowsperstrip=8)
    elif fmt == "webp":
        path = folder / "a.webp"
        Image.fromarray(_picture()).save(path, quality=90)
    elif fmt == "heif":
        pillow_heif = pytest.importorskip("pillow_heif")
        pillow_heif.register_heif_opener()
        path = folder / "a.heic"
        Image.fromarray(_picture()).save(path, format="HEIF", quality=90)
    else:
        raise AssertionError(fmt)
    return path, read_image(path, mode=None)[0]


CHECKSUMMED = ("png8", "png16", "png16la", "tiff8", "tiff16")  # zlib's Adler-32 (and PNG's CRCs) cover the data
FORMATS = CHECKSUMMED + ("tiffraw", "jpeg", "webp", "heif")


def _outcome(path, want, exact=True):
    """Read a damaged file: "error" (after checking the error is the clear one), or "same"
    / "other" pixels; "other" fails the test when ``exact``."""
    try:
        got, _ = read_image(path, mode=None)
    except (ImageReadError, ValueError) as exc:
        msg = str(exc)
        assert str(path) in msg and "\n" not in msg, msg
        return "error"
    assert got.shape == want.shape, f"{path}: {got.shape} read, {want.shape} written"
    if np.array_equal(got, want):
        return "same"
    assert not exact, f"{path}: damaged data read as other pixels (max difference {np.abs(got - want).max()})"
    assert got.max() > 0, f"{path}: damaged data read as a black image"
    return "other"


def _variants(fmt, data, path):
    """name -> damaged bytes."""
    out = {}
    start, end = _payload(fmt, data, path)
    for f in FRACTIONS:
        for bit in BITS:
            flipped = _flip(data, start, end, f, bit)
            out[f"flip {f} {bit:#x}"] = flipped
            if fmt.startswith("png"):  # CRC made right: only the zlib stream is broken
                out[f"flip {f} {bit:#x} crc fixed"] = _fix_crc(flipped, b"IDAT")
    for f in FRACTIONS + (0.5, 0.99):
        out[f"cut {f}"] = data[:int(len(data) * f)]
    for n in (1, 2, 5):
        out[f"cut last {n}"] = data[:-n]
    if fmt.startswith("png"):
        for kind in (b"IHDR", b"IDAT", b"IEND"):
            (start, length), = [(s, n) for k, s, n in _png_chunks(data) if k == kind][:1]
            out[f"bad {kind.decode()} crc"] = _flip(data, start + length, start + length + 4, 0.0, 0x01)
    return out


@pytest.mark.parametrize("fmt", FORMATS)
def test_damaged_files_raise_or_read_true(tmp_path, fmt):
    path, want = _make(fmt, tmp_path)
    data = path.read_bytes()
    bad = path.with_name("bad" + path.suffix)
    seen = {}
    for name, damaged in _variants(fmt, data, path).items():
        bad.write_bytes(damaged)
        outcome = _outcome(bad, want, exact=fmt in CHECKSUMMED or name.startswith("cut"))
        seen.setdefault(outcome, []).append(name)
    assert "error" in seen, seen  # the damage was noticed at all


@pytest.mark.parametrize("fmt", ("png8", "png16", "png16la", "jpeg", "webp"))
def test_truncated_images_are_not_loaded_even_when_pillow_is_told_to(tmp_path, fmt, monkeypatch):
    """ImageFile.LOAD_TRUNCATED_IMAGES, set by many training scripts, makes Pillow fill a cut
    file's missing rows silently; read_image does not take it."""
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    path, want = _make(fmt, tmp_path)
    bad = path.with_name("bad" + path.suffix)
    bad.write_bytes(path.read_bytes()[:int(path.stat().st_size * 0.6)])
    assert _outcome(bad, want) == "error"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is back


def test_png_with_a_broken_image_stream_is_refused(tmp_path):
    """The reported defect: a flipped bit in a PNG's IDAT (CRC fixed or not) was read as a
    partial, mostly black image (the EXIF orientation read decoded the image and swallowed
    the decoder's error) and deblurred; the error must surface, also from read_image_info."""
    path = write_image(tmp_path / "a.png", _picture(side=64))
    data = path.read_bytes()
    (start, length), = [(s, n) for k, s, n in _png_chunks(data) if k == b"IDAT"]
    for crc_fixed in (False, True):
        bad = _flip(data, start, start + length, 0.3, 0x10)
        bad = _fix_crc(bad, b"IDAT") if crc_fixed else bad
        (tmp_path / "bad.png").write_bytes(bad)
        with pytest.raises(ImageReadError, match="bad.png"):
            read_image(tmp_path / "bad.png")
        if crc_fixed:  # read_image_info decodes a PNG to find its EXIF block
            with pytest.raises(ImageReadError, match="bad.png"):
                read_image_info(tmp_path / "bad.png")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "small.safetensors"
    inik.INIKNet(width=8).eval().save(path)
    return path


def _damaged_png(folder, name="bad.png"):
    path = write_image(folder / name, _picture())
    data = path.read_bytes()
    (start, length), = [(s, n) for k, s, n in _png_chunks(data) if k == b"IDAT"]
    path.write_bytes(_fix_crc(_flip(data, start, start + length, 0.3, 0x10), b"IDAT"))
    return path


def _one_clear_line(err, path):
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if path.name in line]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("damage", ("flip", "cut"))
def test_deblur_command_refuses_a_damaged_file(tmp_path, weights, capsys, damage):
    if damage == "flip":
        bad = _damaged_png(tmp_path)
    else:
        bad = write_image(tmp_path / "bad.jpg", _picture())
        bad.write_bytes(bad.read_bytes()[:bad.stat().st_size // 2])
    out = tmp_path / "out.png"
    rc = main(["deblur", str(bad), "-o", str(out), "--weights", str(weights)])
    assert rc != 0
    _one_clear_line(capsys.readouterr().err, bad)
    assert not out.exists()


def _pairs(folder, blurry):
    """A generic eval folder whose one blurry image is ``blurry``'s bytes."""
    for side in ("source", "target"):
        (folder / side).mkdir(parents=True)
    write_image(folder / "target" / ("img0" + blurry.suffix), _picture(seed=1))
    bad = folder / "source" / ("img0" + blurry.suffix)
    bad.write_bytes(blurry.read_bytes())
    return bad


def test_eval_command_refuses_a_damaged_png(tmp_path, weights, capsys):
    bad = _pairs(tmp_path / "data", _damaged_png(tmp_path))
    report = tmp_path / "r.json"
    rc = main(["eval", "--data", str(tmp_path / "data"), "--weights", str(weights), "--lpips", "off",
               "--out", str(report)])
    assert rc != 0
    _one_clear_line(capsys.readouterr().err, bad)
    assert not report.exists() and not report.with_suffix(".csv").exists()


def test_eval_command_refuses_a_cut_jpeg(tmp_path, weights, capsys):
    """A cut JPEG passes read_image_info's header checks; its read_image error surfaces while scoring."""
    cut = write_image(tmp_path / "cut.jpg", _picture())
    cut.write_bytes(cut.read_bytes()[:cut.stat().st_size // 2])
    bad = _pairs(tmp_path / "data", cut)
    report = tmp_path / "r.json"
    rc = main(["eval", "--data", str(tmp_path / "data"), "--weights", str(weights), "--lpips", "off",
               "--out", str(report)])
    assert rc != 0
    _one_clear_line(capsys.readouterr().err, bad)
    assert not report.exists()


def test_deblur_of_a_damaged_pil_image_names_the_file(tmp_path, monkeypatch):
    """inik.deblur(PIL image) decodes a lazily opened image strictly: a cut file is an error
    naming it, also where the caller set LOAD_TRUNCATED_IMAGES (which filled it with black)."""
    from PIL import Image, ImageFile

    import inik
    from inik.data.io import ImageReadError
    path = tmp_path / "cut.png"
    Image.fromarray((np.random.default_rng(0).uniform(0, 255, (32, 32, 3))).astype(np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    model = inik.INIKNet(width=4, scales=3, atoms=2).eval()
    for truncated_ok in (False, True):
        monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", truncated_ok)
        with pytest.raises(ImageReadError, match="cut.png: cannot decode the image"):
            inik.deblur(Image.open(path), model)
        assert ImageFile.LOAD_TRUNCATED_IMAGES is truncated_ok

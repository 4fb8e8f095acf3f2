"""Image I/O, pairing and paired-dataset augmentation (all data made here)."""

import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from inik.data import decoders, metadata
from inik.data import io as iio
from inik.data.io import ImageReadError, is_float_image, read_image, read_image_info, write_image
from inik.data.pairs import (
    CropFlipRotate,
    PairedImageDataset,
    PairingError,
    find_pairs,
    pair_folders,
    random_transform,
    resolve_layout,
    target_stem_candidates,
)


def _codes(shape, bits, seed=0):
    return np.random.default_rng(seed).integers(0, 2**bits, shape).astype(np.uint8 if bits == 8 else np.uint16)


# ---------------------------------------------------------------- image I/O


@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_round_trip_exact(tmp_path, suffix, bits, channels):
    codes = _codes((13, 17, channels), bits, seed=channels)
    path = write_image(tmp_path / f"x{suffix}", codes)
    img, info = read_image(path, mode=None)
    assert img.dtype == np.float32 and img.shape == (13, 17, channels)
    assert info.bit_depth == bits and info.mode == {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]
    assert info.has_alpha == (channels in (2, 4))
    np.testing.assert_array_equal(np.round(img.astype(np.float64) * (2**bits - 1)), codes)
    # float input quantises back to the same codes
    path2 = write_image(tmp_path / f"y{suffix}", img, bit_depth=bits)
    np.testing.assert_array_equal(read_image(path2, mode=None)[0], img)


def test_modes_rgb_rgba(tmp_path):
    grey = _codes((5, 6, 1), 16)
    path = write_image(tmp_path / "g.png", grey)
    rgb, info = read_image(path)
    assert rgb.shape == (5, 6, 3) and info.mode == "L" and info.bit_depth == 16
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
    rgba = read_image(path, mode="RGBA")[0]
    assert rgba.shape == (5, 6, 4) and (rgba[..., 3] == 1).all()
    la = _codes((5, 6, 2), 8)
    rgb = read_image(write_image(tmp_path / "la.png", la))[0]
    np.testing.assert_allclose(rgb[..., 1], la[..., 0] / 255, atol=1e-7)


def test_palette_with_transparency(tmp_path):
    im = Image.new("P", (4, 3))
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.putpixel((1, 1), 1)
    im.save(tmp_path / "p.png", transparency=0)
    img, info = read_image(tmp_path / "p.png", mode=None)
    assert info.has_alpha and info.mode == "RGBA" and info.bit_depth == 8
    assert img[1, 1].tolist() == [1, 0, 0, 1] and img[0, 0, 3] == 0


def test_16bit_grey_pgm(tmp_path):
    codes = (np.arange(20).reshape(4, 5) * 3000).astype(np.int32)
    Image.fromarray(codes, "I").save(tmp_path / "g.pgm")  # Pillow opens it as mode "I"
    img, info = read_image(tmp_path / "g.pgm", mode=None)
    assert info.bit_depth == 16 and info.mode == "L"
    np.testing.assert_array_equal(np.round(img[..., 0] * 65535), codes)


def _png16_all_filters(path, codes):
    """A 16-bit PNG whose rows use every PNG filter type (as libpng's adaptive
    filtering does), written by hand from the PNG specification."""
    h, w, c = codes.shape
    raw = codes.astype(">u2").view(np.uint8).reshape(h, w * c * 2).astype(np.int32)
    bpp, rows = 2 * c, []
    for y in range(h):
        f = y % 5
        x = raw[y]
        up = raw[y - 1] if y else np.zeros_like(x)
        left = np.concatenate([np.zeros(bpp, np.int32), x[:-bpp]])
        ul = np.concatenate([np.zeros(bpp, np.int32), up[:-bpp]])
        p = left + up - ul
        pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - ul)
        paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, ul))
        pred = [0, left, up, (left + up) // 2, paeth][f]
        rows.append(bytes([f]) + ((x - pred) % 256).astype(np.uint8).tobytes())

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, {1: 0, 2: 4, 3: 2, 4: 6}[c], 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"".join(rows)))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("channels", [3, 4])
def test_png16_pillow_route_equals_pypng(tmp_path, channels):
    codes = _codes((11, 9, channels), 16, seed=3)
    path = tmp_path / "f.png"
    _png16_all_filters(path, codes)
    fast = decoders._read_png16_pillow(path)
    assert fast is not None, "Pillow's 16-bit PNG route no longer applies"
    np.testing.assert_array_equal(fast, codes)
    np.testing.assert_array_equal(decoders._read_png16_pypng(path), codes)
    img, info = read_image(path, mode=None)
    assert info.bit_depth == 16
    np.testing.assert_array_equal(np.round(img.astype(np.float64) * 65535), codes)


def test_jpeg(tmp_path):
    smooth = np.linspace(0, 1, 32 * 24 * 3, dtype=np.float32).reshape(24, 32, 3)
    path = write_image(tmp_path / "a.jpg", smooth)
    img, info = read_image(path)
    assert info.format == "JPEG" and info.bit_depth == 8 and img.shape == (24, 32, 3)
    assert np.abs(img - smooth).max() < 0.03
    with pytest.raises(ValueError, match="a16.jpg"):
        write_image(tmp_path / "a16.jpg", smooth, bit_depth=16)
    with pytest.raises(ValueError, match="alpha"):
        write_image(tmp_path / "b.jpg", np.zeros((4, 4, 4), np.float32))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation(tmp_path, orientation):
    codes = _codes((6, 10, 3), 8, seed=orientation)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "o.png"
    Image.fromarray(codes).save(path, exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)))
    img, info = read_image(path)
    assert info.orientation == orientation
    np.testing.assert_array_equal(np.round(img * 255).astype(np.uint8), expected)
    assert read_image_info(path) == (expected.shape[1], expected.shape[0])


def test_tiff_orientation(tmp_path):
    import tifffile

    codes = _codes((6, 10, 3), 16)
    path = tmp_path / "o.tif"
    tifffile.imwrite(path, codes, photometric="rgb", extratags=[(0x0112, "H", 1, 6, True)])
    img, info = read_image(path)
    assert info.orientation == 6 and img.shape == (10, 6, 3)
    np.testing.assert_array_equal(np.round(img * 65535), np.rot90(codes, -1))


def _fake_icc(space: bytes) -> bytes:
    """The 128-byte header of an ICC profile for ``space`` data (enough for the code
    that routes profiles; never shown to a colour manager)."""
    head = bytearray(128)
    head[0:4] = (128).to_bytes(4, "big")
    head[16:20], head[20:24], head[36:40] = space, b"XYZ ", b"acsp"
    return bytes(head)


def _camera_exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F], exif[0x0110] = "Canon", "EOS R5"
    sub = exif.get_ifd(0x8769)
    sub[0x829A], sub[0x9003] = 0.004, "2026:11:26 10:00:00"  # exposure time, date taken
    return exif


def test_icc_colour_space():
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    assert iio.icc_colour_space(srgb) == "RGB"
    assert iio.icc_colour_space(_fake_icc(b"GRAY")) == "GRAY"
    assert iio.icc_colour_space(_fake_icc(b"CMYK")) == "CMYK"
    assert iio.icc_colour_space(b"x" * 200) is None and iio.icc_colour_space(None) is None


@pytest.mark.parametrize("dst,bits", [(".jpg", 8), (".png", 8), (".png", 16), (".tif", 16), (".tif", 8)])
def test_colour_profile_and_exif_carried(tmp_path, dst, bits):
    """A photo's ICC profile and camera EXIF come back in ImageInfo and are written
    with the result: orientation reset to 1 (the pixels were turned), no thumbnail,
    every other tag (sub-IFDs included) unchanged. TIFF output keeps the profile."""
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    codes = _codes((6, 10, 3), 8, seed=3)
    src = tmp_path / "photo.jpg"
    Image.fromarray(codes).save(src, quality=95, icc_profile=icc, exif=_camera_exif(6))
    img, info = read_image(src, mode=None)
    assert img.shape == (10, 6, 3) and info.orientation == 6
    assert info.icc_profile == icc and info.exif is not None
    assert "icc_profile" not in repr(info)  # kilobytes of profile stay out of the repr
    out = write_image(tmp_path / f"o{dst}", img, bit_depth=bits, icc_profile=info.icc_profile, exif=info.exif)
    with Image.open(out) as im:
        assert im.info.get("icc_profile") == icc
        exif = im.getexif()
        if dst == ".tif":
            assert 0x0112 not in exif and 0x010F not in exif  # EXIF is not written to TIFF
        else:
            assert exif[0x0112] == 1 and exif[0x010F] == "Canon" and exif[0x0110] == "EOS R5"
            assert dict(exif.get_ifd(0x8769)) == {0x829A: 0.004, 0x9003: "2026:11:26 10:00:00"}
    again, info2 = read_image(out, mode=None)
    assert again.shape == img.shape and info2.orientation == 1 and info2.icc_profile == icc
    if dst != ".jpg":
        np.testing.assert_array_equal(np.round(again * 255), np.round(img * 255))


def test_exif_thumbnail_dropped_and_upright_patch():
    """The EXIF patch works in place on both byte orders, drops IFD1 (the thumbnail),
    and gives up (None) rather than return a block that still says 'rotated'."""
    for order in ("<", ">"):
        mark = b"II" if order == "<" else b"MM"
        # IFD0 at 8: two entries (orientation SHORT 8, make ASCII 'ab\0'), then IFD1 at 38
        ifd0 = struct.pack(order + "H", 2) + struct.pack(order + "HHI", 0x0112, 3, 1) + struct.pack(order + "HH", 8, 0)
        ifd0 += struct.pack(order + "HHI", 0x010F, 2, 3) + b"ab\x00\x00" + struct.pack(order + "I", 38)
        ifd1 = struct.pack(order + "H", 1) + struct.pack(order + "HHI", 0x0103, 3, 1) + struct.pack(order + "HH", 6, 0)
        ifd1 += struct.pack(order + "I", 0)
        raw = mark + struct.pack(order + "HI", 42, 8) + ifd0 + ifd1
        for block in (raw, iio.EXIF_PREFIX + raw):
            fixed = metadata.upright_exif(block)
            assert fixed is not None and len(fixed) == len(raw)
            exif = Image.Exif()
            exif.load(fixed)
            assert exif[0x0112] == 1 and exif[0x010F] == "ab" and struct.unpack_from(order + "I", fixed, 34)[0] == 0
        # orientation stored as a LONG: not patched in place, so the block is not carried
        odd = bytearray(raw)
        struct.pack_into(order + "HI", odd, 12, 4, 1)
        struct.pack_into(order + "I", odd, 18, 8)
        assert metadata.upright_exif(bytes(odd)) is None
    assert metadata.upright_exif(b"Exif\x00\x00junk") is None and metadata.upright_exif(b"") is None


def test_colour_profile_follows_the_channels(tmp_path):
    """A grey file's GRAY profile is kept; a CMYK file's profile is not, as its pixels
    are read as RGB; write_image refuses a profile that does not fit the image."""
    import tifffile

    grey = tmp_path / "g.png"
    Image.fromarray(_codes((5, 7), 8)).save(grey, icc_profile=_fake_icc(b"GRAY"))
    img, info = read_image(grey, mode=None)
    assert info.mode == "L" and info.icc_profile == _fake_icc(b"GRAY")
    for mode in ("RGB", "RGBA"):  # grey returned as colour: a GRAY profile no longer describes it
        assert read_image(grey, mode=mode)[1].icc_profile is None
    write_image(tmp_path / "g16.png", img, bit_depth=16, icc_profile=info.icc_profile)
    with Image.open(tmp_path / "g16.png") as im:
        assert im.info["icc_profile"] == _fake_icc(b"GRAY")
    cmyk = tmp_path / "c.tif"
    tifffile.imwrite(cmyk, _codes((5, 7, 4), 8), photometric="separated", iccprofile=_fake_icc(b"CMYK"))
    img, info = read_image(cmyk, mode=None)
    assert info.mode == "RGB" and info.icc_profile is None
    with pytest.raises(ValueError, match=r"icc_profile describes GRAY data, but the image has 3 channel"):
        write_image(tmp_path / "x.png", img, icc_profile=_fake_icc(b"GRAY"))
    with pytest.raises(ValueError, match="icc_profile must be the bytes of an ICC profile"):
        write_image(tmp_path / "x.png", img, icc_profile=b"not a profile")
    with pytest.raises(ValueError, match="exif must be an EXIF block"):
        write_image(tmp_path / "x.jpg", img, exif=b"nonsense")
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "x.jpg").exists()


def test_jpeg_too_long_exif_left_out(tmp_path, caplog):
    exif = Image.Exif()
    exif[0x010E] = "x" * 70000  # ImageDescription: more than a JPEG segment holds
    with caplog.at_level("WARNING"):
        write_image(tmp_path / "x.jpg", np.zeros((4, 4, 3), np.float32), exif=exif.tobytes())
    assert "EXIF block of" in caplog.text
    with Image.open(tmp_path / "x.jpg") as im:
        assert 0x010E not in im.getexif()


def test_heic_phone_photo(tmp_path):
    """HEIC/HEIF (phone photos) through pillow-heif: pixels as its decoder gives them
    (upright: it applies the file's rotation), colour profile and EXIF kept; found by
    content, so a HEIC renamed .jpg reads too; listed by folder scans."""
    pillow_heif = pytest.importorskip("pillow_heif")
    from PIL import ImageCms

    pillow_heif.register_heif_opener()
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    src = tmp_path / "IMG_0001.HEIC"
    Image.fromarray(_codes((24, 40, 3), 8, seed=4)).save(src, quality=-1, icc_profile=icc,
                                                         exif=_camera_exif(6).tobytes())
    with Image.open(src) as im:
        want = np.asarray(im.convert("RGB"))
    assert want.shape == (40, 24, 3)  # stored turned, decoded upright
    img, info = read_image(src, mode=None)
    assert info.format == "HEIF" and info.orientation == 1 and (info.width, info.height) == (24, 40)
    np.testing.assert_array_equal(np.round(img * 255).astype(np.uint8), want)
    assert info.icc_profile == icc and info.exif is not None
    assert read_image_info(src) == (24, 40)
    renamed = tmp_path / "renamed.jpg"
    renamed.write_bytes(src.read_bytes())
    np.testing.assert_array_equal(read_image(renamed, mode=None)[0], img)
    assert src in iio.list_images(tmp_path)


@pytest.mark.parametrize("bits", [10, 12])
def test_high_bit_depth_heif_is_read_at_16_bits(tmp_path, monkeypatch, bits):
    """A 10- or 12-bit HEIF (camera .HIF, HDR phone photo) keeps its depth: read as
    16-bit codes rescaled so that the top code is white, upright as the 8-bit
    decode is, within one code of what was stored and of pillow-heif's own 8-bit
    decode."""
    pillow_heif = pytest.importorskip("pillow_heif")
    monkeypatch.setattr(pillow_heif.options, "SAVE_HDR_TO_12_BIT", bits == 12)
    top = (1 << bits) - 1
    yy, xx = np.mgrid[0:24, 0:40]
    smooth = np.stack([xx / 39, yy / 23, 0.5 + 0.4 * np.sin(xx / 4 + yy / 5)], -1)  # black to white
    codes = np.round(smooth * top).astype(np.uint16)
    heif = pillow_heif.from_bytes(mode="RGB;16", size=(40, 24), data=(codes << (16 - bits)).tobytes())
    src = tmp_path / "DSC_0001.HIF"
    heif.save(src, quality=-1, chroma=444, exif=_camera_exif(6).tobytes())
    assert pillow_heif.open_heif(src).info["bit_depth"] == bits
    img, info = read_image(src, mode=None)
    assert info.format == "HEIF" and info.bit_depth == 16 and info.orientation == 1
    assert img.shape == (40, 24, 3) and (info.width, info.height) == (24, 40)  # stored turned, read upright
    decoded = np.asarray(pillow_heif.open_heif(src, convert_hdr_to_8bit=False)) >> (16 - bits)
    np.testing.assert_array_equal(np.round(img * 65535).astype(np.uint16),
                                  np.round(decoded * (65535 / top)).astype(np.uint16))
    # within one code of what was stored (plus the 16-bit rounding); EXIF 6: turned clockwise to view
    assert np.abs(np.rot90(img, 1) * top - codes).max() <= 1.0 + 0.5 * top / 65535 + 1e-6
    with Image.open(src) as im:  # pillow-heif's 8-bit conversion, through Pillow's opener
        eight = np.asarray(im.convert("RGB")).astype(np.float64)
    assert np.abs(img * 255 - eight).max() <= 1.0


def test_avif_read_and_listed(tmp_path):
    from PIL import features

    if not features.check("avif"):
        pytest.skip("this Pillow was built without AVIF")
    codes = _codes((12, 20, 3), 8, seed=5)
    Image.fromarray(codes).save(tmp_path / "a.avif", quality=100)
    with Image.open(tmp_path / "a.avif") as im:
        want = np.asarray(im.convert("RGB"))
    img, info = read_image(tmp_path / "a.avif")
    assert info.format == "AVIF" and img.shape == (12, 20, 3)
    np.testing.assert_array_equal(np.round(img * 255).astype(np.uint8), want)
    assert iio.list_images(tmp_path) == [tmp_path / "a.avif"]


def test_heic_without_pillow_heif_says_what_to_install(tmp_path):
    """Without the optional package a HEIC file is refused by name, with what to install
    (a fresh process: Pillow keeps an opener once registered)."""
    pillow_heif = pytest.importorskip("pillow_heif")  # to make the file
    src = tmp_path / "IMG_0002.heic"
    pillow_heif.from_bytes(mode="RGB", size=(8, 8), data=bytes(8 * 8 * 3)).save(src, quality=-1)
    code = ("import sys; sys.modules['pillow_heif'] = None\n"
            "from inik.data.io import read_image, ImageReadError\n"
            f"try:\n    read_image({str(src)!r})\nexcept ImageReadError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert f"{src}: a HEIC/HEIF image: reading it needs the pillow-heif package" in out.stdout, out.stderr


def test_is_float_image(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "f.tif", np.zeros((4, 5, 3), np.float32), photometric="rgb")
    tifffile.imwrite(tmp_path / "i.tif", np.zeros((4, 5, 3), np.uint16), photometric="rgb")
    write_image(tmp_path / "p.png", np.zeros((4, 5, 3), np.float32))
    assert is_float_image(tmp_path / "f.tif")
    assert not is_float_image(tmp_path / "i.tif") and not is_float_image(tmp_path / "p.png")
    with pytest.raises(ImageReadError, match="no such file"):
        is_float_image(tmp_path / "missing.tif")


def test_write_atomic_no_overwrite(tmp_path):
    path = tmp_path / "a.png"
    write_image(path, np.zeros((4, 4, 3), np.float32))
    with pytest.raises(FileExistsError, match="a.png"):
        write_image(path, np.ones((4, 4, 3), np.float32))
    assert read_image(path)[0].max() == 0
    write_image(path, np.ones((4, 4, 3), np.float32), overwrite=True)
    assert read_image(path)[0].min() == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]  # no temp files left
    with pytest.raises(ValueError, match="b.bmp"):
        write_image(tmp_path / "b.bmp", np.zeros((4, 4, 3)))
    long = tmp_path / ("w" * 251 + ".png")  # 255 bytes, the limit: its temporary must still fit
    write_image(long, np.zeros((4, 4, 3), np.float32))
    assert read_image(long)[0].shape == (4, 4, 3) and len(list(tmp_path.iterdir())) == 2


def test_tensor_round_trip(tmp_path):
    t = torch.rand(3, 5, 7)
    path = write_image(tmp_path / "t.png", t, bit_depth=16)
    back = iio.image_to_tensor(read_image(path)[0])
    assert back.shape == (3, 5, 7) and back.dtype == torch.float32
    assert (back - t).abs().max() <= 0.5 / 65535 + 1e-7


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(ImageReadError, match="missing.png"):
        read_image(tmp_path / "missing.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(ImageReadError, match="bad.png"):
        read_image(bad)
    good = write_image(tmp_path / "t.png", _codes((40, 40, 3), 8))
    truncated = tmp_path / "trunc.png"
    truncated.write_bytes(good.read_bytes()[:-200])
    with pytest.raises(ImageReadError, match="trunc.png"):
        read_image(truncated)


# ---------------------------------------------------------------- pairing


def _save(path, h=8, w=8, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, _codes((h, w, 3), 8, seed))
    return path


def test_find_pairs_one_to_one_layouts(tmp_path):
    layouts = {"dpdd": ("test_c/source", "test_c/target"), "rtf": ("image", "GT"), "realdof": ("source", "target")}
    for layout, (b, s) in layouts.items():
        root = tmp_path / layout
        for stem in ["b", "a", "c"]:
            _save(root / b / f"{stem}.png")
            _save(root / s / f"{stem}.png")
        pairs = find_pairs(root)
        assert [p.name for p in pairs] == ["a", "b", "c"]
        assert all(p.blurry.stem == p.sharp.stem for p in pairs)
        assert find_pairs(root, layout) == pairs
    # a copy whose folders changed case (RTF's GT as gt, DPDD's source as Source) reads the same
    (tmp_path / "rtf" / "GT").rename(tmp_path / "rtf" / "gt")
    (tmp_path / "dpdd" / "test_c" / "source").rename(tmp_path / "dpdd" / "test_c" / "Source")
    for layout in ("rtf", "dpdd"):
        pairs = find_pairs(tmp_path / layout)
        assert [p.name for p in pairs] == ["a", "b", "c"] and resolve_layout(tmp_path / layout) == layout
        assert find_pairs(tmp_path / layout, layout) == pairs


def test_pairs_by_stem_not_sort_order(tmp_path):
    # blurry a.png, b.jpg; sharp a.tif, b.png: suffixes differ, stems pair
    _save(tmp_path / "source" / "a.png", seed=1)
    _save(tmp_path / "source" / "b.jpg", seed=2)
    _save(tmp_path / "target" / "b.png", seed=3)
    _save(tmp_path / "target" / "a.tif", seed=4)
    pairs = pair_folders(tmp_path / "source", tmp_path / "target")
    assert [(p.blurry.name, p.sharp.name) for p in pairs] == [("a.png", "a.tif"), ("b.jpg", "b.png")]


def test_missing_partner_named(tmp_path):
    _save(tmp_path / "source" / "a.png")
    _save(tmp_path / "source" / "only_blurry.png")
    _save(tmp_path / "target" / "a.png")
    with pytest.raises(PairingError, match="only_blurry.png"):
        find_pairs(tmp_path)
    (tmp_path / "source" / "only_blurry.png").unlink()
    _save(tmp_path / "target" / "only_sharp.png")
    with pytest.raises(PairingError, match="only_sharp.png"):
        find_pairs(tmp_path)


def test_size_mismatch_and_unreadable_named(tmp_path):
    _save(tmp_path / "source" / "a.png", 8, 8)
    _save(tmp_path / "target" / "a.png", 8, 9)
    with pytest.raises(PairingError, match=r"source/a.png.*8x8.*target/a.png.*9x8"):
        find_pairs(tmp_path)
    (tmp_path / "target" / "a.png").write_bytes(b"garbage")
    with pytest.raises(ImageReadError, match="target/a.png"):
        find_pairs(tmp_path)


def test_duplicate_stem_is_an_error(tmp_path):
    _save(tmp_path / "source" / "a.png")
    _save(tmp_path / "source" / "a.jpg")
    _save(tmp_path / "target" / "a.png")
    with pytest.raises(PairingError, match="a.jpg"):
        find_pairs(tmp_path)


def test_lfdof_many_to_one(tmp_path):
    root = tmp_path / "lfdof"
    for stem in ["0001", "0002", "0010"]:
        _save(root / "ground_truth" / f"{stem}.png")
    # scene folders whose slices are numbered like the scenes: the folder wins (0010/0001 is scene 0010's)
    for name in ["0001_1", "0001_2", "0002_3_7", "0010/5", "0010/0001", "0010/0002_1"]:
        _save(root / "input" / f"{name}.png")
    pairs = find_pairs(root)  # auto-detects lfdof
    got = {p.name: p.sharp.stem for p in pairs}
    assert got == {"0001_1": "0001", "0001_2": "0001", "0002_3_7": "0002", "0010/5": "0010", "0010/0001": "0010",
                   "0010/0002_1": "0010"}
    assert target_stem_candidates("0010/0003_1") == ["0010", "0003_1", "0003"]
    assert target_stem_candidates("a/b/c_1") == ["b", "a", "c_1", "c"]
    _save(root / "input" / "0003_1.png")
    with pytest.raises(PairingError, match=r"0003_1.png.*'0003_1', '0003'"):
        find_pairs(root, "lfdof")


def test_folder_scanning_links_hidden_folders_and_subfolders(tmp_path):
    """LFDOF scene folders that are symbolic links are searched (once, even when linked
    twice or back up the tree); hidden folders are not; a broken link with an image's
    suffix is an error naming it; a one-to-one layout with images only in subfolders
    says so."""
    root = tmp_path / "lfdof"
    for stem in ["0001", "0002"]:
        _save(root / "ground_truth" / f"{stem}.png")
    _save(root / "input" / "0001" / "1.png")
    _save(tmp_path / "elsewhere" / "0002" / "1.png")
    (root / "input" / "0002").symlink_to(tmp_path / "elsewhere" / "0002", target_is_directory=True)
    (root / "input" / "0001" / "loop").symlink_to(root / "input", target_is_directory=True)
    _save(root / "input" / ".ipynb_checkpoints" / "0001" / "1.png")
    assert {p.name: p.sharp.stem for p in find_pairs(root)} == {"0001/1": "0001", "0002/1": "0002"}
    (root / "input" / "0001" / "2.png").symlink_to(tmp_path / "missing.png")
    with pytest.raises(ImageReadError, match=r"2.png.*broken symbolic link"):
        find_pairs(root)
    flat = tmp_path / "flat"
    _save(flat / "source" / "sub" / "a.png")
    _save(flat / "target" / "a.png")
    with pytest.raises(PairingError, match="its subfolders hold 1.*only the lfdof layout searches subfolders"):
        find_pairs(flat)


def test_unknown_layout_message(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(PairingError, match="no known dataset layout"):
        find_pairs(tmp_path)


# ---------------------------------------------------------------- augmentation


def test_same_transform_on_both(tmp_path):
    # sharp = 1 - blurry pixelwise, so any transform applied to both keeps the
    # relation, while different crops/flips/turns would break it.
    codes = _codes((40, 52, 3), 8, seed=5)
    (tmp_path / "source").mkdir()
    (tmp_path / "target").mkdir()
    write_image(tmp_path / "source" / "a.png", codes)
    write_image(tmp_path / "target" / "a.png", 255 - codes)
    ds = PairedImageDataset(find_pairs(tmp_path), crop=16, seed=1)
    seen = set()
    for epoch in range(12):
        ds.set_epoch(epoch)
        b, s = ds[0]
        assert b.shape == s.shape == (3, 16, 16) and b.dtype == torch.float32
        torch.testing.assert_close(b + s, torch.ones_like(b), atol=1e-6, rtol=0)
        t = ds.transform(0, 40, 52)
        full = iio.image_to_tensor(codes / 255.0)
        torch.testing.assert_close(b, t(full), atol=1e-6, rtol=0)
        seen.add((t.hflip, t.vflip, t.rot90))
    assert len(seen) > 4  # flips and turns are actually drawn
    # deterministic for (seed, epoch, index)
    ds.set_epoch(3)
    b1, _ = ds[0]
    ds2 = PairedImageDataset(find_pairs(tmp_path), crop=16, seed=1)
    ds2.set_epoch(3)
    torch.testing.assert_close(ds2[0][0], b1, atol=0, rtol=0)


def test_transform_geometry():
    x = torch.arange(2 * 4 * 6, dtype=torch.float32).reshape(2, 4, 6)
    t = CropFlipRotate(1, 2, 3, 3, hflip=True, vflip=False, rot90=1)
    expected = np.rot90(x.numpy()[:, 1:4, 2:5][:, :, ::-1], 1, axes=(1, 2))
    np.testing.assert_array_equal(t(x).numpy(), expected)
    rng = np.random.default_rng(0)
    for _ in range(20):
        t = random_transform(rng, 4, 6, None)
        assert t.rot90 in (0, 2) and (t.height, t.width) == (4, 6)
    with pytest.raises(ValueError, match="larger"):
        random_transform(rng, 4, 6, 5)


def test_eval_dataset_full_images(tmp_path):
    write_image(_save(tmp_path / "source" / "a.png", 10, 14), _codes((10, 14, 3), 16), overwrite=True)
    _save(tmp_path / "target" / "a.png", 10, 14)
    b, s = PairedImageDataset(find_pairs(tmp_path), crop=None, augment=False)[0]
    assert b.shape == s.shape == (3, 10, 14)
    np.testing.assert_array_equal(b.numpy(), read_image(tmp_path / "source" / "a.png")[0].transpose(2, 0, 1))
    for bad in (0, 16.5, True, "8"):  # refused when the dataset is made, not at its first item
        with pytest.raises(ValueError, match="crop must be a positive integer size or None"):
            PairedImageDataset(find_pairs(tmp_path), crop=bad)


def test_tiff_photometric_interpretations(tmp_path):
    """Palette TIFFs get their colour map, CMYK ones become RGB (as Pillow converts CMYK
    JPEGs), min-is-white grey is inverted; anything else is refused by name."""
    import tifffile
    from PIL import Image

    idx = np.arange(12, dtype=np.uint8).reshape(3, 4)
    cmap = np.stack([np.arange(256) * 257, np.zeros(256), np.full(256, 65535)]).astype(np.uint16)
    tifffile.imwrite(tmp_path / "pal.tif", idx, photometric="palette", colormap=cmap)
    arr, info = read_image(tmp_path / "pal.tif", mode=None)
    assert info.mode == "RGB" and info.bit_depth == 8
    np.testing.assert_allclose(arr[..., 0], idx / 255)
    assert (arr[..., 1] == 0).all() and (arr[..., 2] == 1).all()

    cmyk = np.random.default_rng(0).integers(0, 256, (5, 6, 4), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "cmyk.tif", cmyk, photometric="separated")
    arr, info = read_image(tmp_path / "cmyk.tif", mode=None)
    assert info.mode == "RGB" and not info.has_alpha
    pillow = np.asarray(Image.fromarray(cmyk, "CMYK").convert("RGB")).astype(int)
    assert np.abs(np.round(arr * 255).astype(int) - pillow).max() <= 1

    tifffile.imwrite(tmp_path / "white.tif", np.array([[0, 65535, 1000]], np.uint16), photometric="miniswhite")
    arr, info = read_image(tmp_path / "white.tif", mode=None)
    np.testing.assert_allclose(arr[0, :, 0], [1, 0, 1 - 1000 / 65535], rtol=0, atol=1e-7)

    tifffile.imwrite(tmp_path / "lab.tif", np.zeros((3, 3, 3), np.uint8), photometric="cielab")
    with pytest.raises(ImageReadError, match="unsupported TIFF photometric interpretation CIELAB"):
        read_image(tmp_path / "lab.tif")


def test_png_colour_key_becomes_alpha(tmp_path):
    """A PNG tRNS colour key (RGB or grey, 8 or 16 bits) marks the pixels of that colour
    transparent: they are read with alpha 0, the others opaque (it used to be dropped,
    and deblur wrote them opaque); a 1-bit PNG is grey, as 2-, 4- and 8-bit ones are."""
    png = pytest.importorskip("png")
    rng = np.random.default_rng(7)
    rgb = rng.integers(1, 256, (6, 5, 3), dtype=np.uint8)
    rgb[0, 0] = rgb[3, 2] = 0
    Image.fromarray(rgb).save(tmp_path / "rgb8.png", transparency=(0, 0, 0))
    grey = rgb[:, :, 1].copy()
    Image.fromarray(grey).save(tmp_path / "grey8.png", transparency=0)
    rgb16 = rgb.astype(np.uint16) * 257
    with open(tmp_path / "rgb16.png", "wb") as f:
        png.Writer(5, 6, greyscale=False, bitdepth=16, transparent=(0, 0, 0)).write(f, rgb16.reshape(6, -1).tolist())
    with open(tmp_path / "grey16.png", "wb") as f:
        png.Writer(5, 6, greyscale=True, bitdepth=16, transparent=0).write(f, rgb16[:, :, 1].tolist())
    key = np.zeros((6, 5), bool)
    key[0, 0] = key[3, 2] = True
    for name, colour, bits in (("rgb8", rgb, 8), ("grey8", grey[:, :, None], 8),
                               ("rgb16", rgb16, 16), ("grey16", rgb16[:, :, 1:2], 16)):
        img, info = read_image(tmp_path / f"{name}.png", mode=None)
        assert info.has_alpha and info.bit_depth == bits and img.shape == (6, 5, colour.shape[2] + 1), name
        top = 255 if bits == 8 else 65535
        np.testing.assert_array_equal(np.round(img[:, :, :-1] * top), colour, err_msg=name)
        np.testing.assert_array_equal(img[:, :, -1], np.where(key, 0.0, 1.0), err_msg=name)
    Image.fromarray(grey > 100).save(tmp_path / "bw.png")
    img, info = read_image(tmp_path / "bw.png", mode=None)
    assert info.mode == "L" and img.shape == (6, 5, 1)
    np.testing.assert_array_equal(img[:, :, 0], (grey > 100).astype(np.float32))


def test_atomic_write_leaves_another_writers_temporary_alone(tmp_path, monkeypatch):
    """A temporary name that exists already is another writer's: the failed write must not
    remove it (it removed whatever stood under the name)."""
    import uuid

    from inik.data.io import write_atomically
    monkeypatch.setattr(uuid, "uuid4", lambda: uuid.UUID(int=0xABC))
    theirs = tmp_path / f".inik-{uuid.UUID(int=0xABC).hex[:12]}.tmp"
    theirs.write_bytes(b"theirs")
    with pytest.raises(FileExistsError):
        write_atomically(tmp_path / "mine.bin", b"mine")
    assert theirs.read_bytes() == b"theirs" and not (tmp_path / "mine.bin").exists()

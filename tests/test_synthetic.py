"""Synthetic defocus generator: optics, blur, occlusion, determinism (no files
needed except photos this test writes itself)."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from inik.data.io import read_image, write_image
from inik.data.pairs import find_pairs
from inik.data.synthetic import (
    DefocusSynthesizer,
    SyntheticConfig,
    SyntheticDefocusDataset,
    SyntheticDefocusStream,
    aperture_kernel,
    blur_and_composite,
    coc_radius_px,
    composite,
    export_synthetic_pairs,
    linear_to_srgb,
    select_photos,
    split_photos,
    srgb_to_linear,
)

SMALL = dict(size=48, max_radius=6.0, num_layers=4, dead_leaves_shapes=(5, 15))


def test_thin_lens_by_hand():
    # f = 50 mm, N = 2 -> aperture 25 mm; focus 2 m; pitch 0.036 mm
    # object at infinity: c = A f / (s - f) = 25 * 50 / 1950 mm; r = c / 2 / pitch
    r_inf = coc_radius_px(np.inf, 2.0, 50.0, 2.0, 0.036)
    assert r_inf == pytest.approx(25 * 50 / 1950 / 2 / 0.036)
    assert coc_radius_px(2.0, 2.0, 50.0, 2.0, 0.036) == pytest.approx(0.0)
    # 1 m: c = A f |d - s| / (d (s - f)) = 25 * 50 * 1000 / (1000 * 1950)
    assert coc_radius_px(1.0, 2.0, 50.0, 2.0, 0.036) == pytest.approx(25 * 50 * 1000 / (1000 * 1950) / 2 / 0.036)
    # radius is linear in inverse depth, and halves when the f-number doubles
    r = coc_radius_px(np.array([1.0, 4.0]), 2.0, 50.0, 4.0, 0.036)
    assert r[0] == pytest.approx(r_inf / 2) and r[1] == pytest.approx(r_inf / 4)
    with pytest.raises(ValueError, match="focal length"):
        coc_radius_px(1.0, 0.01, 50.0, 2.0, 0.036)


def test_aperture_kernels():
    assert aperture_kernel(0.3).shape == (1, 1)
    delta = aperture_kernel(0.4, size=5)
    assert delta[2, 2] == 1 and delta.sum() == 1
    for r in (1.0, 3.5, 10.0):
        k = aperture_kernel(r)
        assert k.shape == (2 * math.ceil(r) + 1,) * 2
        assert k.sum().item() == pytest.approx(1.0, abs=1e-6)
        torch.testing.assert_close(k, k.flip(0).flip(1))
        torch.testing.assert_close(k, k.t())
        # support area (sum of coverage before normalising) close to pi r^2
        area = 1.0 / k.max().item()
        assert area == pytest.approx(math.pi * r * r, rel=0.08)
    hexagon = aperture_kernel(8.0, blades=6, rotation=0.3)
    assert 1.0 / hexagon.max().item() == pytest.approx(3 * math.sqrt(3) / 2 * 64, rel=0.05)
    # a soft edge keeps the support and spreads weight inwards
    soft = aperture_kernel(6.0, softness=0.3)
    assert soft.shape == (13, 13) and soft.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert soft[6, 6] > aperture_kernel(6.0)[6, 6]
    # a 5-bladed aperture turned by pi is its point reflection
    k5 = aperture_kernel(6.0, blades=5, rotation=0.2)
    torch.testing.assert_close(aperture_kernel(6.0, blades=5, rotation=0.2 + math.pi), k5.flip(0).flip(1),
                               atol=1e-6, rtol=0)


def test_gamma_round_trip():
    x = torch.linspace(0, 1, 1001)
    torch.testing.assert_close(linear_to_srgb(srgb_to_linear(x)), x, atol=1e-6, rtol=0)
    assert srgb_to_linear(torch.tensor(0.5)).item() == pytest.approx(0.21404, abs=1e-4)


def test_fft_blur_equals_direct_convolution():
    torch.manual_seed(0)
    img = torch.rand(1, 3, 40, 40)
    r = 4.5
    out = blur_and_composite(img, torch.ones(1, 1, 40, 40), [r])
    k = aperture_kernel(r)
    direct = F.conv2d(img.reshape(3, 1, 40, 40), k[None, None], padding=k.shape[0] // 2).reshape(3, 40, 40)
    p = math.ceil(r)
    torch.testing.assert_close(out[:, p:-p, p:-p], direct[:, p:-p, p:-p], atol=1e-5, rtol=0)


def test_occlusion_composite():
    H = W = 48
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    disc = (((yy - 24) ** 2 + (xx - 24) ** 2) <= 100).float()[None]
    back_colour, front_colour = torch.tensor([1.0, 0.5, 0.2]), torch.tensor([0.0, 0.3, 0.9])
    colours = torch.stack([back_colour[:, None, None].expand(3, H, W), front_colour[:, None, None].expand(3, H, W)])
    alphas = torch.stack([torch.ones(1, H, W), disc])
    premult = colours * alphas
    # sharp foreground over blurred background: the foreground stays exactly itself
    out = blur_and_composite(premult, alphas, [5.0, 0.0])
    torch.testing.assert_close(out[:, disc[0] > 0], front_colour[:, None].expand(3, int(disc.sum())), atol=1e-5, rtol=0)
    # blurred foreground over sharp background: out = c_f * B(a) + (1 - B(a)) * c_b
    out = blur_and_composite(premult, alphas, [0.0, 5.0])
    ba = blur_and_composite(disc[None], torch.ones(1, 1, H, W), [5.0])
    expected = front_colour[:, None, None] * ba + (1 - ba) * back_colour[:, None, None]
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    # one colour everywhere stays that colour whatever the radii (no halos, no energy loss)
    same = torch.stack([back_colour[:, None, None].expand(3, H, W)] * 2) * alphas
    out = blur_and_composite(same, alphas, [3.0, 6.0], blades=5, rotation=0.4)
    torch.testing.assert_close(out, back_colour[:, None, None].expand(3, H, W), atol=1e-5, rtol=0)
    torch.testing.assert_close(composite(premult, alphas), blur_and_composite(premult, alphas, [0.0, 0.0]))


def test_deterministic_for_a_seed():
    syn = DefocusSynthesizer(None, SyntheticConfig(**SMALL))
    a, b, c = syn.sample([3, 1]), syn.sample([3, 1]), syn.sample([3, 2])
    for name in ("blurry", "sharp", "radius"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), atol=0, rtol=0)
    assert a.params == b.params
    assert not torch.equal(a.sharp, c.sharp)
    assert a.blurry.shape == a.sharp.shape == (3, 48, 48) and a.radius.shape == (1, 48, 48)
    assert a.blurry.dtype == torch.float32 and 0 <= a.blurry.min() and a.blurry.max() <= 1


def test_all_in_focus_is_identity():
    cfg = SyntheticConfig(**{**SMALL, "max_radius": 0.0}, noise_prob=0.0, quantize_bits=None)
    s = DefocusSynthesizer(None, cfg).sample(5)
    torch.testing.assert_close(s.blurry, s.sharp, atol=1e-5, rtol=0)
    assert s.radius.abs().max() == 0


def test_blur_map_consistent():
    cfg = SyntheticConfig(**SMALL, in_focus_prob=1.0, noise_prob=0.0, quantize_bits=None)
    syn = DefocusSynthesizer(None, cfg)
    reach = 2 * math.ceil(cfg.max_radius) + 1
    checked = 0
    for seed in range(40):
        s = syn.sample(seed)
        radii = np.array(s.params["radii"])
        assert (radii >= 0).all() and (radii <= cfg.max_radius + 1e-9).all()
        assert 0 <= s.radius.min() and s.radius.max() <= cfg.max_radius + 1e-5
        # f-number reported reproduces the radii through the thin-lens formula
        if np.isfinite(s.params["f_number"]):
            depths = [1 / d if d > 0 else np.inf for d in s.params["inverse_depth"]]
            p = s.params
            r = coc_radius_px(np.array(depths), p["focus_m"], p["focal_length_mm"], p["f_number"], p["pixel_pitch_mm"])
            np.testing.assert_allclose(np.minimum(r, cfg.max_radius), radii, atol=1e-6)
        # pixels whose whole neighbourhood (within the largest blur; outside the
        # crop is unknown, so counted as blurred) sees radius 0 stay sharp
        padded = F.pad(s.radius[None], (reach // 2,) * 4, value=float("inf"))
        sharp_zone = F.max_pool2d(padded, reach, stride=1)[0, 0] == 0
        if sharp_zone.sum() > 50:
            diff = (s.blurry - s.sharp).abs()[:, sharp_zone]
            assert diff.max() < 1e-5, seed
            checked += 1
        # and where everything is blurred by more than a pixel, the image changes
        if radii.min() > 2 and s.sharp.std() > 0.05:
            assert (s.blurry - s.sharp).abs().mean() > 1e-3
    assert checked >= 3


def test_noise_only_changes_blurry():
    base = dict(SMALL, max_radius=0.0, quantize_bits=None)
    clean = DefocusSynthesizer(None, SyntheticConfig(**base, noise_prob=0.0)).sample(1)
    noisy = DefocusSynthesizer(None, SyntheticConfig(**base, noise_prob=1.0)).sample(1)
    torch.testing.assert_close(clean.sharp, noisy.sharp)
    d = (noisy.blurry - clean.blurry).abs().mean().item()
    assert 1e-4 < d < 0.05
    q = DefocusSynthesizer(None, SyntheticConfig(**SMALL)).sample(1).blurry
    torch.testing.assert_close(q * 255, torch.round(q * 255), atol=1e-4, rtol=0)


def _photos(folder, n=3, size=(120, 100)):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        h, w = size
        yy, xx = np.mgrid[0:h, 0:w] / 10.0
        wave = np.sin(xx * rng.uniform(0.5, 2) + yy * rng.uniform(0.5, 2))[..., None]
        img = 0.5 + 0.4 * wave * rng.uniform(0.3, 1, 3)
        write_image(folder / f"p{i}.png", img.astype(np.float32), bit_depth=16 if i == 0 else 8)
    write_image(folder / "tiny.jpg", np.zeros((20, 20, 3), np.float32))
    return folder


def test_photo_scenes(tmp_path):
    folder = _photos(tmp_path / "photos")
    cfg = SyntheticConfig(**SMALL, noise_prob=0.0, quantize_bits=None)
    with pytest.warns(UserWarning, match="tiny.jpg"):
        syn = DefocusSynthesizer(folder, cfg)
    assert len(syn.photos) == 3
    s = syn.sample(0)
    assert s.params["content"] == "photo" and s.blurry.shape == (3, 48, 48)
    lo = cfg.canvas / 100  # smallest side 100 px limits the downscale
    assert max(cfg.photo_scale[0], lo) - 1e-9 <= s.params["photo_scale"] <= 1.0 + 1e-9
    # the sharp target is the (resampled) photo itself, untouched by layering
    assert 0 <= s.sharp.min() and s.sharp.max() <= 1
    with pytest.raises(ValueError, match=r"no usable photos in the 1 given: they need at least 64x64 px \(1 smaller, "
                                         r"e.g. .*tiny.jpg\)"):
        DefocusSynthesizer([folder / "tiny.jpg"], cfg)


def test_photo_mode_in_focus_is_identity(tmp_path):
    folder = _photos(tmp_path / "photos")
    cfg = SyntheticConfig(**{**SMALL, "max_radius": 0.0}, noise_prob=0.0, quantize_bits=None, photo_scale=(1.0, 1.0))
    with pytest.warns(UserWarning):
        s = DefocusSynthesizer(folder, cfg).sample(2)
    torch.testing.assert_close(s.blurry, s.sharp, atol=1e-5, rtol=0)


def test_photo_scenes_with_objects(tmp_path):
    folder = _photos(tmp_path / "photos")
    cfg = SyntheticConfig(**SMALL, object_prob=1.0, max_objects=2, noise_prob=0.0, quantize_bits=None)
    with pytest.warns(UserWarning):
        syn = DefocusSynthesizer(folder, cfg)
    counts = set()
    for seed in range(6):
        s = syn.sample(seed)
        n = s.params["objects"]
        counts.add(n)
        assert 1 <= n <= 2 and len(s.params["radii"]) == cfg.num_layers + n
        # objects are the nearest layers
        inv = s.params["inverse_depth"]
        assert inv == sorted(inv)
        # every photo used is recorded, with how its crop was turned and flipped
        assert len(s.params["object_photos"]) == n and all(p.startswith(str(folder)) for p in s.params["object_photos"])
        assert s.params["photo_turn"] in range(4) and isinstance(s.params["photo_flip"], bool)
    assert counts == {1, 2}
    again = syn.sample(5)
    torch.testing.assert_close(again.blurry, s.blurry, atol=0, rtol=0)


def test_split_photos(tmp_path):
    paths = [tmp_path / f"{i}.png" for i in range(20)]
    train, held = split_photos(paths, 0.25, seed=1)
    assert len(held) == 5 and len(train) == 15 and not set(train) & set(held)
    assert split_photos(paths, 0.25, seed=1) == (train, held)


def test_select_photos_is_the_training_split(tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i in range(12):
        write_image(folder / ("sub" if i % 3 else ".") / f"p{i}.png", np.full((4, 4, 3), 0.5, np.float32))
    found = sorted(folder.rglob("*.png"))
    train, held = split_photos(found, held_out=0.1, seed=0)
    assert select_photos(folder, "train") == train and select_photos(folder, "held-out") == held
    assert len(held) == 1 and select_photos(folder) == train and select_photos(folder, "all") == found
    with pytest.raises(ValueError, match="part must be one of"):
        select_photos(folder, "test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        select_photos(tmp_path / "empty")


def test_datasets_indexed_and_stream_agree():
    cfg = SyntheticConfig(**SMALL)
    ds = SyntheticDefocusDataset(None, cfg, length=4, seed=9)
    assert len(ds) == 4
    b, s = ds[2]
    assert b.shape == s.shape == (3, 48, 48)
    torch.testing.assert_close(ds[2][0], b, atol=0, rtol=0)
    stream = iter(SyntheticDefocusStream(None, cfg, seed=9))
    items = [next(stream) for _ in range(3)]
    torch.testing.assert_close(items[2][0], b, atol=0, rtol=0)
    with pytest.raises(IndexError):
        ds[4]


def test_export_synthetic_pairs(tmp_path):
    cfg = SyntheticConfig(**SMALL)
    names = export_synthetic_pairs(tmp_path / "set", 3, config=cfg, seed=4)
    assert names == ["00000", "00001", "00002"]
    pairs = find_pairs(tmp_path / "set")
    assert [p.name for p in pairs] == names
    expected = DefocusSynthesizer(None, cfg).sample([4, 1])
    blurry, info = read_image(pairs[1].blurry)
    assert info.bit_depth == 8
    np.testing.assert_allclose(blurry, expected.blurry.permute(1, 2, 0).numpy(), atol=0.5 / 255 + 1e-6)
    sharp, info = read_image(pairs[1].sharp)
    assert info.bit_depth == 16
    np.testing.assert_allclose(sharp, expected.sharp.permute(1, 2, 0).numpy(), atol=0.5 / 65535 + 1e-6)
    assert len((tmp_path / "set" / "params.jsonl").read_text().splitlines()) == 3
    with pytest.raises(FileExistsError, match="already holds a synthetic set"):
        export_synthetic_pairs(tmp_path / "set", 3, config=cfg, seed=4)


def test_export_replaces_a_whole_set_and_never_other_files(tmp_path):
    cfg = SyntheticConfig(**SMALL)
    export_synthetic_pairs(tmp_path / "set", 3, config=cfg, seed=4)
    # a smaller set replaces the larger one whole: no stale pair of the old set is left to be scored
    assert export_synthetic_pairs(tmp_path / "set", 2, config=cfg, seed=5, overwrite=True) == ["00000", "00001"]
    for sub in ("source", "target", "radius"):
        assert sorted(p.name for p in (tmp_path / "set" / sub).iterdir()) == ["00000.png", "00001.png"]
    lines = (tmp_path / "set" / "params.jsonl").read_text().splitlines()
    assert [__import__("json").loads(x)["seed"] for x in lines] == [[5, 0], [5, 1]]
    expected = DefocusSynthesizer(None, cfg).sample([5, 1])
    np.testing.assert_allclose(read_image(tmp_path / "set" / "source" / "00001.png")[0],
                               expected.blurry.permute(1, 2, 0).numpy(), atol=0.5 / 255 + 1e-6)
    # a file that is not part of a set is refused before anything is written, even with overwrite
    (tmp_path / "set" / "target" / "mine.png").write_bytes(b"x")
    before = (tmp_path / "set" / "source" / "00000.png").read_bytes()
    with pytest.raises(FileExistsError, match="mine.png: not a file of a synthetic set"):
        export_synthetic_pairs(tmp_path / "set", 2, config=cfg, seed=6, overwrite=True)
    assert (tmp_path / "set" / "source" / "00000.png").read_bytes() == before
    assert (tmp_path / "set" / "params.jsonl").exists() and (tmp_path / "set" / "target" / "mine.png").exists()
    (tmp_path / "afile").write_text("x")
    for folder, count, error in ((tmp_path / "afile", 1, FileExistsError), (tmp_path / "new", 0, ValueError),
                                 (tmp_path / "new", 1.5, TypeError)):
        with pytest.raises(error):
            export_synthetic_pairs(folder, count, config=cfg)
    assert not (tmp_path / "new").exists()


def test_synth_command_writes_the_set_export_writes(tmp_path, capsys):
    from inik.cli import main
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(1)
    for i in range(10):
        write_image(photos / f"p{i}.png", rng.uniform(0, 1, (70, 64, 3)).astype(np.float32))
    out = tmp_path / "set"
    args = ["synth", str(out), "--count", "2", "--photos", str(photos), "--size", "24", "--max-blur", "3",
            "--seed", "3"]
    assert main(args) == 0
    assert "wrote 2 pairs of 24x24 from 1 photos (held-out)" in capsys.readouterr().out
    cfg = SyntheticConfig(size=24, max_radius=3.0, photo_prob=0.8)
    export_synthetic_pairs(tmp_path / "api", 2, photos=select_photos(photos, "held-out"), config=cfg, seed=3)
    with pytest.raises(ValueError, match="count must be in \\[1, 1000000\\]"):
        export_synthetic_pairs(tmp_path / "big", 10**14, config=cfg)
    assert not (tmp_path / "big").exists()
    for sub in ("source", "target", "radius"):
        for name in ("00000.png", "00001.png"):
            assert (out / sub / name).read_bytes() == (tmp_path / "api" / sub / name).read_bytes()
    assert main(["eval", "--data", str(out), "--identity", "--lpips", "off", "--out", str(tmp_path / "r.json")]) == 0
    capsys.readouterr()
    (tmp_path / "empty").mkdir()
    for extra, message in ((["--count", "1"], "already holds a synthetic set"),
                           (["--photos", str(tmp_path / "empty")], "--photos " + str(tmp_path / "empty")),
                           (["--size", "4"], "--size must be from 8 to 4096"),
                           (["--size", "100000"], "--size must be from 8 to 4096")):
        assert main(args + extra) == 2, extra
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert main(args + ["--count", "1", "--overwrite"]) == 0
    assert sorted(p.name for p in (out / "source").iterdir()) == ["00000.png"]
    for bad in (["--count", "0"], ["--photo-prob", "1.5"], ["--max-blur", "nan"], ["--photo-split", "test"],
                ["--seed", "-1"]):
        with pytest.raises(SystemExit) as exc:
            main(args + bad)
        assert exc.value.code == 2
        assert bad[0] in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(args + ["--count", "99999999999999999", "--overwrite"])
    assert exc.value.code == 2
    assert "argument --count: expected a number >= 1 and <= 1000000, got 99999999999999999" in capsys.readouterr().err


def test_unusual_photos_and_tiny_canvases(tmp_path):
    """Float TIFF photos are clipped to [0, 1] at full precision (they wrapped around
    through uint8: 1.2 came out as 0.196), transparent pixels are composited over
    mid grey with a warning (their stored colour became scene content), and
    procedural scenes work on canvases under 16 px (they raised)."""
    import tifffile
    folder = tmp_path / "photos"
    folder.mkdir()
    value = np.array([1.2, -0.05, 0.5012345], np.float32)
    tifffile.imwrite(folder / "f.tif", np.broadcast_to(value, (64, 64, 3)).copy(), photometric="rgb")
    cfg = SyntheticConfig(size=16, max_radius=0.0, noise_prob=0.0, quantize_bits=None, photo_scale=(1.0, 1.0))
    s = DefocusSynthesizer(folder, cfg).sample(0)
    np.testing.assert_allclose(s.sharp.mean((1, 2)).numpy(), [1.0, 0.0, 0.5012345], atol=1e-4)
    rgba = np.zeros((64, 64, 4), np.float32)
    rgba[..., :3], rgba[..., 3] = 0.2, 1.0
    rgba[:, 32:, 3] = 0.0  # right half transparent (its stored colour is black)
    rgba[:, 32:, :3] = 0.0
    (folder / "f.tif").unlink()
    write_image(folder / "cut.png", rgba)
    syn = DefocusSynthesizer(folder, cfg)
    with pytest.warns(UserWarning, match="cut.png: a photo with transparent pixels"):
        pixels = syn._cache.get(folder / "cut.png")  # what every crop of the photo is cut from
    assert pixels.shape == (64, 64, 3)
    assert (pixels[:, :32] == 51).all() and (pixels[:, 32:] == 128).all()  # 0.2 opaque; mid grey, not black
    for size, radius in ((8, 0.0), (8, 2.0), (10, 1.0)):
        small = DefocusSynthesizer(None, SyntheticConfig(size=size, max_radius=radius)).sample(1)
        assert small.blurry.shape == (3, size, size) and torch.isfinite(small.blurry).all()


def test_generator_settings_are_checked():
    for bad, match in ((dict(photo_scale=(0.5, 1.5)), "photo_scale must be a range within"),
                       (dict(photo_scale=(0.0, 1.0)), "photo_scale"), (dict(noise_prob=1.2), "noise_prob must be"),
                       (dict(object_prob=-0.1), "object_prob"), (dict(max_objects=-1), "max_objects"),
                       (dict(max_radius=float("inf")), "max_radius >= 0")):
        with pytest.raises(ValueError, match=match):
            DefocusSynthesizer(None, SyntheticConfig(**{**SMALL, **bad}))


# ------------------------------------------------------------------ depth layouts


def _photo_folder(folder, n=4, size=(90, 80)):
    folder.mkdir()
    rng = np.random.default_rng(7)
    for i in range(n):
        write_image(folder / f"p{i}.png", rng.uniform(0, 1, (*size, 3)).astype(np.float32))
    return folder


def test_a_narrow_share_draws_the_largest_radius_from_the_narrow_range(tmp_path):
    """narrow_prob of the crops take their largest radius up to narrow_radius, the rest up to
    max_radius; without a narrow share the samples are those of a config without one."""
    photos = _photo_folder(tmp_path / "photos")
    base = dict(size=48, max_radius=8.0, radius_power=0.25, photo_prob=1.0, noise_prob=0.0)
    synth = DefocusSynthesizer(photos, SyntheticConfig(**base, narrow_prob=0.5, narrow_radius=2.0))
    params = [synth.sample([seed]).params for seed in range(12)]
    narrow = [p for p in params if p.get("narrow")]
    assert 0 < len(narrow) < len(params)
    assert all(p["target_radius"] <= 2.0 for p in narrow)
    assert any(p["target_radius"] > 2.0 for p in params if not p.get("narrow"))
    plain = DefocusSynthesizer(photos, SyntheticConfig(**base)).sample([5])
    same = DefocusSynthesizer(photos, SyntheticConfig(**base, narrow_prob=0.0, narrow_radius=2.0)).sample([5])
    assert torch.equal(plain.blurry, same.blurry) and "narrow" not in same.params
    for bad, message in (({"narrow_prob": 1.5}, "narrow_prob must be a probability"),
                         ({"narrow_radius": -1.0}, "narrow_radius must be >= 0")):
        with pytest.raises(ValueError, match=message):
            DefocusSynthesizer(None, SyntheticConfig(**base, **bad))


@pytest.mark.parametrize("layout", ["subject", "reverse", "slanted", "small-sharp"])
def test_layouts_draw_their_scenes(tmp_path, layout):
    """subject and reverse have a foreground object, slanted none; every layout focuses
    exactly on a visible layer (radius 0 in the map) and draws strong blur."""
    photos = _photo_folder(tmp_path / "photos")
    cfg = SyntheticConfig(size=48, max_radius=8.0, photo_prob=1.0, layouts=(layout,), noise_prob=0.0)
    synth = DefocusSynthesizer(photos, cfg)
    for seed in range(3):
        s = synth.sample([seed])
        p = s.params
        assert p["layout"] == layout and s.radius.min() == 0
        assert p["target_radius"] >= 8.0 * 0.4 ** cfg.radius_power - 1e-9
        assert (p["objects"] >= 1) if layout in ("subject", "reverse") else True
        assert p["objects"] == 0 if layout == "slanted" else True


@pytest.mark.parametrize("layout, focused", [("subject", 3), ("reverse", 1), ("small-sharp", 2)])
def test_layouts_choose_the_focused_layer(layout, focused):
    """Of the visible layers (1, 2, 3 of 0..4; index = nearer), subject focuses on the nearest,
    reverse on the farthest, small-sharp on the one that shows least."""
    synth = DefocusSynthesizer(None, SyntheticConfig(max_radius=10.0, layouts=(layout,)))
    present = np.array([False, True, True, True, False])
    visible = np.array([0.0, 0.5, 0.1, 0.4, 0.0])
    for seed in range(5):
        radii, _ = synth._camera(np.random.default_rng(seed), present, 5, {}, layout, visible)
        assert radii[focused] == 0 and (radii[present] > 0).sum() == 2, radii


def test_layouts_leave_random_sets_unchanged_and_are_checked():
    """A config with the one layout "random" draws exactly what it drew before layouts existed:
    no extra random draw (the model card's sets stay byte for byte)."""
    base = DefocusSynthesizer(None, SyntheticConfig(**SMALL)).sample([3, 1])
    same = DefocusSynthesizer(None, SyntheticConfig(**SMALL, layouts=("random",))).sample([3, 1])
    assert torch.equal(base.blurry, same.blurry) and "layout" not in base.params
    for bad in ((), ("wide",), "subject"):
        with pytest.raises(ValueError, match="layouts must be"):
            DefocusSynthesizer(None, SyntheticConfig(**SMALL, layouts=bad))


def test_synth_wide_preset_and_radius_bins(tmp_path, capsys):
    """--preset wide writes 512-px pairs with radii up to 32 px in the four layouts (flags override
    it); eval --radius-bins scores them per radius bin, pooled as RadiusBins defines."""
    import json

    from inik.cli import main
    from inik.metrics import RadiusBins
    out = tmp_path / "wide"
    assert main(["synth", str(out), "--preset", "wide", "--count", "3", "--size", "64", "--seed", "1"]) == 0
    records = [json.loads(x) for x in (out / "params.jsonl").read_text().splitlines()]
    assert {r["radius_scale"] for r in records} == {32.0}
    assert all(r["layout"] in ("subject", "reverse", "slanted", "small-sharp") for r in records)
    assert read_image(out / "source" / "00000.png")[0].shape == (64, 64, 3)
    capsys.readouterr()
    report = tmp_path / "r.json"
    assert main(["eval", "--data", str(out), "--identity", "--lpips", "off", "--radius-bins", "0,4,32",
                 "--bits", "native", "--out", str(report)]) == 0
    printed = capsys.readouterr().out
    assert "radius 0-4 px" in printed and "radius 4-32 px" in printed
    rows = json.loads(report.read_text())["radius_bins"]
    bins = RadiusBins([0, 4, 32])
    for r in records:
        blurry, sharp = (read_image(out / sub / f"{r['name']}.png")[0] for sub in ("source", "target"))
        radius = read_image(out / "radius" / f"{r['name']}.png")[0][..., 0].astype(np.float64) * 32
        bins.add(blurry, sharp, radius)
    for got, want in zip(rows, bins.result()):
        assert got["pixels"] == want["pixels"] and got["pixels"] > 0
        assert got["psnr"] == pytest.approx(want["psnr"]) and got["ssim"] == pytest.approx(want["ssim"])
    # a folder without radius maps, and bad edges, are refused by name
    (out / "params.jsonl").rename(out / "kept.jsonl")
    (out / "radius").rename(out / "kept_radius")
    assert main(["eval", "--data", str(out), "--identity", "--lpips", "off", "--radius-bins", "0,4",
                 "--out", str(tmp_path / "r2.json")]) == 2
    assert "--radius-bins" in capsys.readouterr().err and not (tmp_path / "r2.json").exists()
    for bad in ("4,2", "0", "a,b", "-1,2"):
        with pytest.raises(SystemExit):
            main(["eval", "--data", str(out), "--identity", "--radius-bins", bad, "--out", str(tmp_path / "r3.json")])
        assert "--radius-bins" in capsys.readouterr().err


def test_eval_radius_bins_with_a_bin_only_in_the_ssim_border(tmp_path, capsys):
    """A bin whose pixels all lie in SSIM's 3-px border has a PSNR and no SSIM: printed as
    n/a (it was a traceback after the report was written)."""
    import json

    from inik.cli import main
    rng = np.random.default_rng(0)
    for sub in ("source", "target", "radius"):
        (tmp_path / "set" / sub).mkdir(parents=True)
    image = rng.uniform(0, 1, (16, 16, 3)).astype(np.float32)
    write_image(tmp_path / "set" / "source" / "00000.png", image, bit_depth=8)
    write_image(tmp_path / "set" / "target" / "00000.png", image, bit_depth=16)
    radius = np.zeros((16, 16, 1), np.float32)
    radius[0] = 1.0  # 8 px (scale 8) in the first row only
    write_image(tmp_path / "set" / "radius" / "00000.png", radius, bit_depth=16)
    (tmp_path / "set" / "params.jsonl").write_text(json.dumps({"name": "00000", "radius_scale": 8.0}) + "\n")
    assert main(["eval", "--data", str(tmp_path / "set"), "--identity", "--lpips", "off", "--bits", "native",
                 "--radius-bins", "0,4,8", "--out", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "radius 4-8 px: psnr" in out and "ssim n/a" in out


def test_layout_names_are_parsed_one_way(capsys):
    """inik synth --layouts and the training config read layout names with one parser."""
    from inik.cli import main
    from inik.data.synthetic import parse_layouts
    assert parse_layouts(" subject,reverse ") == ("subject", "reverse")
    with pytest.raises(ValueError, match="a comma-separated list of random, subject, .*; got 'subject,tilted'"):
        parse_layouts("subject,tilted")
    with pytest.raises(SystemExit):
        main(["synth", "unused", "--count", "1", "--layouts", "tilted"])
    assert "--layouts: expected a comma-separated list of random" in capsys.readouterr().err


def test_synth_refuses_an_empty_out(tmp_path, monkeypatch, capsys):
    """OUT '' meant the current folder, written unseen."""
    from inik.cli import main
    monkeypatch.chdir(tmp_path)
    assert main(["synth", "", "--count", "1", "--size", "32"]) == 2
    assert "OUT '': empty" in capsys.readouterr().err and not list(tmp_path.iterdir())


def test_a_photo_holding_nan_is_refused_by_name(tmp_path, capsys):
    """A float TIFF photo with NaN pixels made pairs of garbage, written with success;
    synth and synthetic training now stop on it and name it."""
    import tifffile

    from inik.cli import main
    photos = tmp_path / "photos"
    photos.mkdir()
    bad = np.random.default_rng(0).random((96, 96, 3), dtype=np.float32)
    bad[3, 5, 1] = np.nan
    tifffile.imwrite(photos / "bad.tif", bad, photometric="rgb")
    assert main(["synth", str(tmp_path / "set"), "--photos", str(photos), "--photo-split", "all", "--count", "2",
                 "--size", "32", "--photo-prob", "1"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"inik synth: {photos / 'bad.tif'}: holds NaN or Inf pixels", err
    config = tmp_path / "config.json"
    config.write_text(json.dumps(dict(dataset="synthetic", data=str(photos), photo_prob=1.0, iters=1, crop=32, batch=1,
                                      workers=0, lpips_weight=0.0, val_images=1, amp="off")))
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "bad.tif: holds NaN or Inf pixels" in err and "Traceback" not in err, err
    assert not (tmp_path / "run" / "last.safetensors").exists()


def test_a_set_left_unfinished_is_said_and_never_scored(tmp_path, monkeypatch, capsys):
    """A failure while writing (a photo that cannot be decoded, a full disk) says the set is
    unfinished, as Ctrl-C does, and eval and training refuse the folder (they scored a mix
    of the old and new set with success); OUT inside --photos is refused (the set's own
    images were listed as photos the next time, changing the held-out split)."""
    from inik.cli import main
    from inik.data import synthetic
    out = tmp_path / "set"
    assert main(["synth", str(out), "--count", "3", "--size", "32"]) == 0
    real, calls = synthetic.DefocusSynthesizer.sample, []

    def failing(self, seed):
        calls.append(seed)
        if len(calls) == 3:
            raise OSError("photo.jpg: truncated")
        return real(self, seed)

    monkeypatch.setattr(synthetic.DefocusSynthesizer, "sample", failing)
    assert main(["synth", str(out), "--count", "3", "--size", "40", "--overwrite"]) == 2
    err = capsys.readouterr().err.splitlines()[-1]  # after the progress bar
    assert err == (f"inik synth: photo.jpg: truncated; stopped after 2 of 3 pairs: {out} holds an unfinished "
                           f"set (no params.jsonl): write it again with --overwrite"), err
    assert main(["eval", "--data", str(out), "--identity", "--lpips", "off", "--out", str(tmp_path / "r.json")]) == 2
    assert "an unfinished synthetic set (radius/ but no params.jsonl" in capsys.readouterr().err
    monkeypatch.setattr(synthetic.DefocusSynthesizer, "sample", real)
    assert main(["synth", str(out), "--count", "3", "--size", "40", "--overwrite"]) == 0
    assert main(["eval", "--data", str(out), "--identity", "--lpips", "off", "--out", str(tmp_path / "r.json")]) == 0
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.png", "b.png"):
        write_image(photos / name, np.random.default_rng(0).random((64, 64, 3)).astype(np.float32))
    capsys.readouterr()
    for inside in (photos / "evalset", photos):
        assert main(["synth", str(inside), "--photos", str(photos), "--count", "1", "--size", "32"]) == 2
        assert "inside --photos" in capsys.readouterr().err and not (photos / "evalset").exists()


def test_command_warnings_are_one_line(tmp_path, capsys):
    """A warning in a command is one line naming the command (it was Python's two-line
    warning with the source line of the call)."""
    from inik.cli import main
    photos = tmp_path / "photos"
    photos.mkdir()
    for name, side in (("a.png", 64), ("b.png", 64), ("tiny.png", 10)):
        write_image(photos / name, np.random.default_rng(0).random((side, side, 3)).astype(np.float32))
    assert main(["synth", str(tmp_path / "set"), "--photos", str(photos), "--photo-split", "all", "--count", "1",
                 "--size", "32"]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and not line.startswith("synth:")]
    assert err == [f"inik synth: warning: 1 photo(s) smaller than 60 px skipped, e.g. {photos / 'tiny.png'}"], err

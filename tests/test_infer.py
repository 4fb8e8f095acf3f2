"""inik.deblur and `inik deblur`: kinds of input, bit depth, alpha, tiling, batch errors."""

import json
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

import inik
from inik.cli import main
from inik.data.io import read_image, write_image
from inik.loading import load_model
from inik.tiling import AUTO_TILE, DEFAULT_OVERLAP, auto_tile, restore


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return inik.INIKNet(width=8).eval()


@pytest.fixture(scope="module")
def weights(tmp_path_factory, small_model):
    path = tmp_path_factory.mktemp("w") / "small.safetensors"
    small_model.save(path)
    return path


def test_numpy_kinds_round_trip(small_model):
    rng = np.random.default_rng(0)
    f = rng.random((20, 30, 3), dtype=np.float32)
    want = small_model(torch.from_numpy(f.transpose(2, 0, 1))[None]).detach().clamp(0, 1)[0]
    out = inik.deblur(f, small_model)
    assert out.dtype == np.float32 and out.shape == f.shape
    np.testing.assert_allclose(out, want.numpy().transpose(1, 2, 0), atol=1e-6)
    u8 = (f * 255).round().astype(np.uint8)
    assert inik.deblur(u8, small_model).dtype == np.uint8
    u16 = (f * 65535).round().astype(np.uint16)
    out16 = inik.deblur(u16, small_model)
    assert out16.dtype == np.uint16 and out16.shape == u16.shape


def test_grey_alpha_torch_pil(small_model):
    rng = np.random.default_rng(1)
    grey = rng.random((17, 19), dtype=np.float32)
    assert inik.deblur(grey, small_model).shape == (17, 19)
    rgba = rng.random((17, 19, 4), dtype=np.float32)
    out = inik.deblur(rgba, small_model)
    assert out.shape == (17, 19, 4)
    np.testing.assert_array_equal(out[..., 3], rgba[..., 3])  # alpha passes through untouched
    t = torch.rand(3, 16, 24)
    assert inik.deblur(t, small_model).shape == (3, 16, 24)
    pil = Image.fromarray((rng.random((12, 13, 3)) * 255).astype(np.uint8))
    out_pil = inik.deblur(pil, small_model)
    assert isinstance(out_pil, Image.Image) and out_pil.size == pil.size and out_pil.mode == "RGB"


def test_deblur_leaves_the_callers_model_where_it_is(small_model):
    """deblur(model=m, device=d) runs a copy of m on d; m itself does not move."""
    from inik.loading import on_device

    img = np.random.default_rng(3).random((16, 16, 3), dtype=np.float32)
    np.testing.assert_array_equal(inik.deblur(img, small_model, device="cpu"), inik.deblur(img, small_model))
    assert on_device(small_model, "cpu") is small_model and on_device(small_model, torch.device("cpu")) is small_model
    moved = on_device(small_model, "meta")
    assert moved is not small_model and next(moved.parameters()).device.type == "meta"
    assert all(p.device.type == "cpu" for p in small_model.parameters())


def test_half_runs_float32_where_the_cpu_only_emulates_bf16(small_model, monkeypatch, caplog):
    """--half where bfloat16 is emulated (slower than float32): float32, said in one line."""
    import inik.loading

    img = np.random.default_rng(2).random((16, 16, 3), dtype=np.float32)
    monkeypatch.setattr(inik.loading, "cpu_has_bf16", lambda: False)
    with caplog.at_level("WARNING", logger="inik"):
        out = inik.deblur(img, small_model, half=True)
    assert np.array_equal(out, inik.deblur(img, small_model))
    assert "no native bfloat16" in caplog.text and "running in float32" in caplog.text
    assert inik.loading.half_dtype("cpu") is None
    caplog.clear()
    monkeypatch.setattr(inik.loading, "cpu_has_bf16", lambda: True)
    with caplog.at_level("WARNING", logger="inik"):
        inik.deblur(img, small_model, half=True)
        inik.deblur(img, small_model)
    assert "no native bfloat16" not in caplog.text


def test_bad_inputs(small_model):
    with pytest.raises(ValueError, match="H, W >= 1"):
        inik.deblur(np.zeros((0, 5, 3), np.float32), small_model)
    with pytest.raises(TypeError, match="dtype must be uint8, uint16 or floating"):
        inik.deblur(np.zeros((5, 5, 3), np.int32), small_model)
    with pytest.raises(ValueError, match="NaN or Inf"):
        inik.deblur(np.full((5, 5, 3), np.nan, np.float32), small_model)
    with pytest.raises(TypeError, match="numpy array, torch tensor or PIL"):
        inik.deblur("photo.jpg", small_model)
    # tile and overlap are checked whatever the image size (a 4x4 image needs no tiles)
    for image in (torch.rand(1, 3, 4, 4), torch.rand(1, 3, 200, 200)):
        with pytest.raises(ValueError, match="tile must be None \\(automatic\\), 0 \\(whole image\\) or at least 384"):
            restore(small_model, image, tile=8)
        with pytest.raises(ValueError,
                           match="overlap must be in \\[0, 3/4 of tile\\], got 301 for tile 410 \\(used as 400\\)"):
            restore(small_model, image, tile=410, overlap=301)  # 3/4 of 400, 410 rounded down
        with pytest.raises(ValueError, match="overlap must be in .* got 769 for the automatic 1024-px tiles"):
            inik.deblur(image[0], small_model, overlap=769)
        with pytest.raises(ValueError, match="overlap must be None .* pixels >= 0, got -5"):
            inik.deblur(image[0], small_model, overlap=-5)
        with pytest.raises(ValueError, match="tile must be None"):
            inik.deblur(image[0], small_model, tile=5)


def test_tiles_cover_and_blend(small_model):
    """Every pixel is covered and a tile as large as the image reproduces the untiled result."""
    y = torch.rand(1, 3, 400, 430)
    full = restore(small_model, y)
    torch.testing.assert_close(restore(small_model, y, tile=432), full)
    tiled = restore(small_model, y, tile=384, overlap=16)
    assert tiled.shape == full.shape and torch.isfinite(tiled).all()


def test_tile_grid_keeps_tiles_on_the_networks_16_px_grid():
    """The network's output is invariant only to shifts by multiples of 16, so every
    tile starts on that grid: the step is rounded down to a multiple of 16 (the
    overlap widened), the tile too."""
    from inik.tiling import tile_grid, tile_starts
    assert tile_grid(384, None) == (384, 288, 96)
    assert tile_grid(1024, None) == (1024, 288, 736)
    assert tile_grid(390, None) == (384, 288, 96)
    assert tile_grid(384, 282) == (384, 288, 96)
    assert tile_grid(384, 277) == (384, 288, 96)
    assert tile_grid(384, 272) == (384, 272, 112)
    assert tile_grid(256, 176) == (256, 176, 80)
    assert tile_grid(256, 0) == (256, 0, 256)
    assert tile_grid(300, 220) == (288, 224, 64)
    for tile in range(256, 500, 7):
        for overlap in range(0, 3 * (tile - tile % 16) // 4 + 1, 5):
            t, o, step = tile_grid(tile, overlap)
            assert t % 16 == 0 and step % 16 == 0 and step >= 16 and o >= overlap and o == t - step
            for size in (t + 16, 3 * t + 48):
                assert all(s % 16 == 0 for s in tile_starts(size, t, step))


def _default_model_and_photo_like(size: int, blocks: int, seed: int):
    """The bundled model and a photo-like (1, 3, size, size) image: smooth regions,
    edges and noise (upsampled random blocks plus fine texture)."""
    model, trained = load_model()
    assert trained, "the bundled default weights are missing"
    g = torch.Generator().manual_seed(seed)
    y = torch.nn.functional.interpolate(torch.rand(1, 3, blocks, blocks, generator=g), size=(size, size),
                                        mode="bicubic", align_corners=False)
    return model, (y + 0.05 * torch.rand(1, 3, size, size, generator=g)).clamp(0, 1)


def test_tiled_equals_untiled_for_any_overlap_default_model():
    """With an overlap that does not leave a step of a multiple of 16 (286 -> step 98),
    the tiles would sit off the network's grid, far from the whole-image output
    (17 levels of 255 when this was first measured). The step is rounded to the grid
    (the overlap widened to 288), so the result is within one level, as for the
    default overlap."""
    model, y = _default_model_and_photo_like(448, blocks=14, seed=1)
    full = restore(model, y)
    for overlap in (286, 281):
        assert (restore(model, y, tile=384, overlap=overlap) - full).abs().max() < 1 / 255, overlap


def test_tiled_equals_untiled_default_model():
    """The bundled model on a 512x512 photo-like image with 384-px tiles and the
    default overlap (288) reproduces the whole-image result to under one level of
    255 (figures in benchmarks/RESULTS.md, "Tiling")."""
    model, y = _default_model_and_photo_like(512, blocks=16, seed=0)
    full = restore(model, y)
    tiled = restore(model, y, tile=384)
    assert (tiled - full).abs().max() < 1 / 255


def test_automatic_tiling_bounds_memory():
    assert auto_tile(1080, 1920) == (None, None)  # up to ~2 megapixels: the whole image
    assert auto_tile(4000, 6000) == (AUTO_TILE, DEFAULT_OVERLAP)
    assert auto_tile(4000, 6000, overlap=200) == (AUTO_TILE, 200)
    assert auto_tile(4000, 6000, tile=0) == (None, None)  # 0: always the whole image
    assert auto_tile(64, 64, tile=384, overlap=16) == (384, 16)
    for bad in (-1, 2.5, True, 5, 255, 383):
        with pytest.raises(ValueError, match="tile must be None"):
            auto_tile(64, 64, tile=bad)


def test_cli_rejects_absurd_tiles(tmp_path, weights, capsys):
    write_image(tmp_path / "p.png", np.zeros((40, 40, 3), np.uint8))
    for bad in ("8", "-5", "128", "383"):
        rc = main(["deblur", str(tmp_path / "p.png"), "-o", str(tmp_path / "q.png"), "--weights", str(weights),
                   "--tile", bad])
        assert rc == 2 and "--tile must be 0 (whole image) or at least 384" in capsys.readouterr().err
        assert not (tmp_path / "q.png").exists()
    assert main(["deblur", str(tmp_path / "p.png"), "-o", str(tmp_path / "q.png"), "--weights", str(weights),
                 "--tile", "0"]) == 0


def test_cli_batch_keeps_bit_depth_and_survives_bad_files(tmp_path, weights, capsys):
    rng = np.random.default_rng(2)
    src = tmp_path / "in"
    src.mkdir()
    write_image(src / "a.png", (rng.random((20, 24, 3)) * 65535).astype(np.uint16))
    write_image(src / "b.png", (rng.random((21, 22, 4)) * 255).astype(np.uint8))
    (src / "c.png").write_bytes(b"not an image")
    (src / "d.png").symlink_to(tmp_path / "gone.png")  # a broken link: reported, not skipped silently
    out = tmp_path / "out"
    rc = main(["deblur", str(src), "-o", str(out), "--weights", str(weights)])
    assert rc == 1  # two bad files, the rest deblurred
    err = capsys.readouterr().err
    assert "c.png" in err and "d.png: broken symbolic link" in err
    a, info_a = read_image(out / "a.png", mode=None)
    b, info_b = read_image(out / "b.png", mode=None)
    assert info_a.bit_depth == 16 and a.shape == (20, 24, 3)
    assert info_b.bit_depth == 8 and info_b.has_alpha and b.shape == (21, 22, 4)
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    # A second run refuses to overwrite; the input is never replaced.
    rc = main(["deblur", str(src / "a.png"), "-o", str(out / "a.png"), "--weights", str(weights)])
    assert rc == 2 and "exists" in capsys.readouterr().err  # its one image failed: nothing done
    rc = main(["deblur", str(src / "a.png"), "-o", str(src / "a.png"), "--weights", str(weights)])
    assert rc == 2 and "replace the input" in capsys.readouterr().err


def test_cli_without_the_extension_says_so_and_runs(tmp_path, weights, monkeypatch, capsys):
    """A failed build installs without inik._C (pip shows its warning only with -v):
    the command line says so once, and deblurs on the PyTorch paths."""
    from inik.ops import _ext

    write_image(tmp_path / "p.png", np.full((24, 24, 3), 0.5, np.float32))
    monkeypatch.delenv("INIK_NO_EXTENSION", raising=False)
    monkeypatch.setattr(_ext, "_C", None)
    assert main(["deblur", str(tmp_path / "p.png"), "-o", str(tmp_path / "q.png"), "--weights", str(weights)]) == 0
    err = capsys.readouterr().err
    assert err.count("running without the compiled kernels") == 1 and "pip install -v" in err
    assert read_image(tmp_path / "q.png")[0].shape == (24, 24, 3)
    monkeypatch.setenv("INIK_NO_EXTENSION", "1")  # left out on purpose: nothing to say
    assert main(["deblur", str(tmp_path / "p.png"), "-o", str(tmp_path / "r.png"), "--weights", str(weights)]) == 0
    assert "compiled kernels" not in capsys.readouterr().err


def test_cli_untrained_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(inik.loading, "DEFAULT_WEIGHTS", tmp_path / "none.safetensors")
    write_image(tmp_path / "p.png", np.zeros((8, 8, 3), np.uint8))
    assert main(["deblur", str(tmp_path / "p.png"), "-o", str(tmp_path / "q.png")]) == 0
    assert "UNTRAINED" in capsys.readouterr().err
    assert (tmp_path / "q.png").is_file()


def test_explain_writes_maps(tmp_path, weights, capsys):
    write_image(tmp_path / "p.png", np.random.default_rng(3).random((40, 36, 3)).astype(np.float32))
    out = tmp_path / "maps"
    assert main(["explain", str(tmp_path / "p.png"), "-o", str(out), "--weights", str(weights)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["defocus_size.png", "omega.png", "atoms_spatial.png", "atoms_fourier.png",
                            "explain.json"] + [f"mu_scale{r}.png" for r in range(8)])
    size_map, _ = read_image(out / "defocus_size.png")
    assert size_map.shape == (40, 36, 3)
    mu0, _ = read_image(out / "mu_scale0.png", mode=None)
    assert mu0.shape == (40, 36, 1)
    summary = json.loads((out / "explain.json").read_text())
    assert 1 <= summary["defocus_size"]["min"] <= summary["defocus_size"]["max"] <= 15
    assert summary["atom_sizes"] == [3, 5, 7, 9, 11, 13, 15]
    assert abs(sum(summary["mu_mean_per_scale"]) - 1) < 1e-5
    # A second run replaces nothing - not even explain.json - and writes nothing, unless --overwrite.
    notes = out / "explain.json"
    notes.write_text("my notes")
    (out / "mu_scale3.png").unlink()
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(["explain", str(tmp_path / "p.png"), "-o", str(out), "--weights", str(weights)]) == 2
    assert "file exists (and 11 more); nothing written" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before and notes.read_text() == "my notes"
    # --overwrite with a model of fewer scales: its maps replace the old ones, and the old
    # per-scale maps it has no counterpart for are removed, not left to mislead
    torch.manual_seed(0)
    few = tmp_path / "few.safetensors"
    inik.INIKNet(width=8, scales=3).save(few)
    assert main(["explain", str(tmp_path / "p.png"), "-o", str(out), "--weights", str(few), "--overwrite"]) == 0
    assert sorted(p.name for p in out.glob("mu_scale*.png")) == [f"mu_scale{r}.png" for r in range(3)]
    assert json.loads(notes.read_text())["atom_sizes"] == [3, 5]
    # an output path that is a file, and a device that is not there: clean errors
    assert main(["explain", str(tmp_path / "p.png"), "-o", str(tmp_path / "p.png"), "--weights", str(weights)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main(["explain", str(tmp_path / "p.png"), "-o", str(out), "--device", "nonsense"]) == 2
    assert "--device" in capsys.readouterr().err


def test_outputs_named_by_a_dangling_link_or_unwritable(tmp_path, weights, monkeypatch, capsys):
    """A dangling symlink as the output is an existing output (deblur ran the model, then
    failed with "File exists"); a map that cannot be written is named, not its temporary."""
    write_image(tmp_path / "p.png", np.zeros((20, 20, 3), np.float32))
    (tmp_path / "link.png").symlink_to(tmp_path / "nowhere.png")
    assert main(["deblur", str(tmp_path / "p.png"), "-o", str(tmp_path / "link.png"), "--weights", str(weights)]) == 2
    assert f"{tmp_path / 'link.png'}: exists (pass --overwrite" in capsys.readouterr().err
    import inik.data.io
    real = inik.data.io.write_image

    def refuse(path, *a, **kw):
        if "omega" in str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *a, **kw)

    monkeypatch.setattr(inik.data.io, "write_image", refuse)
    assert main(["explain", str(tmp_path / "p.png"), "-o", str(tmp_path / "maps"), "--weights", str(weights)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'maps' / 'omega.png'}: cannot write it: Permission denied" in err and ".inik-part" not in err
    assert not (tmp_path / "maps").exists()


def test_explain_overwrite_removes_only_its_own_stale_maps(tmp_path, weights):
    """--overwrite removes the per-scale maps an earlier run with more scales left
    (mu_scale8.png, ...), never the user's files that merely start like them."""
    write_image(tmp_path / "p.png", np.random.default_rng(4).random((16, 20, 3)).astype(np.float32))
    out = tmp_path / "maps"
    out.mkdir()
    mine = ["mu_scale_notes.png", "mu_scale3_old.png", "mu_scale08.png", "mu_scale.png"]
    for name in mine + ["mu_scale8.png", "mu_scale12.png"]:
        (out / name).write_bytes(b"not a map")
    assert main(["explain", str(tmp_path / "p.png"), "-o", str(out), "--weights", str(weights), "--overwrite"]) == 0
    assert sorted(p.name for p in out.glob("mu_scale*.png")) == sorted(mine + [f"mu_scale{r}.png" for r in range(8)])
    assert all((out / name).read_bytes() == b"not a map" for name in mine)
    # an input in the output folder is never removed as a stale map, nor replaced by a map
    photo = np.random.default_rng(5).random((16, 20, 3)).astype(np.float32)
    write_image(out / "mu_scale9.png", photo)
    before = (out / "mu_scale9.png").read_bytes()
    assert main(["explain", str(out / "mu_scale9.png"), "-o", str(out), "--weights", str(weights),
                 "--overwrite"]) == 0
    assert (out / "mu_scale9.png").read_bytes() == before
    write_image(out / "omega.png", photo, overwrite=True)
    before = (out / "omega.png").read_bytes()
    assert main(["explain", str(out / "omega.png"), "-o", str(out), "--weights", str(weights), "--overwrite"]) == 2
    assert (out / "omega.png").read_bytes() == before


def test_explain_in_tiles_matches_the_whole_image(tmp_path, weights, capsys):
    """--tile bounds explain's memory on large photos; the blended maps equal the
    whole-image maps (to one 8-bit code here) and the summary to 1e-3."""
    write_image(tmp_path / "p.png", np.random.default_rng(3).random((420, 404, 3)).astype(np.float32))
    runs = {}
    for tile in ("0", "384"):
        out = tmp_path / f"maps{tile}"
        assert main(["explain", str(tmp_path / "p.png"), "-o", str(out), "--weights", str(weights),
                     "--tile", tile]) == 0
        mu = np.stack([read_image(out / f"mu_scale{r}.png", mode=None)[0] for r in range(8)])
        runs[tile] = mu, json.loads((out / "explain.json").read_text())
    (mu0, s0), (mu1, s1) = runs["0"], runs["384"]
    assert mu1.shape == mu0.shape == (8, 420, 404, 1) and np.abs(mu1 - mu0).max() <= 1 / 255 + 1e-6
    for key in ("min", "max", "mean"):
        assert abs(s1["defocus_size"][key] - s0["defocus_size"][key]) < 1e-3
    assert main(["explain", str(tmp_path / "p.png"), "-o", str(tmp_path / "t"), "--tile", "8"]) == 2
    assert "--tile" in capsys.readouterr().err


def test_cli_compile_matches_eager(tmp_path, weights, monkeypatch):
    """`inik deblur --compile` runs the network under torch.compile and writes the same
    image. (The test compiles with the aot_eager backend: the same Dynamo graph of the
    network around the opaque IFM op, without Inductor's minute of C++ code generation.)"""
    import torch._dynamo

    calls = []
    real_compile = torch.compile

    def compile_for_test(model, **kwargs):
        calls.append(kwargs)
        return real_compile(model, backend="aot_eager", fullgraph=True, **kwargs)

    monkeypatch.setattr(torch, "compile", compile_for_test)
    torch._dynamo.reset()
    src = tmp_path / "p.png"
    write_image(src, (np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8))
    assert main(["deblur", str(src), "-o", str(tmp_path / "eager.png"), "--weights", str(weights)]) == 0
    assert main(["deblur", str(src), "-o", str(tmp_path / "compiled.png"), "--weights", str(weights),
                 "--compile"]) == 0
    assert calls == [{"dynamic": False}]
    eager, _ = read_image(tmp_path / "eager.png", mode=None)
    compiled, _ = read_image(tmp_path / "compiled.png", mode=None)
    assert np.abs(eager.astype(np.float64) - compiled).max() <= 1 / 255


def test_cli_refuses_colliding_outputs_before_writing(tmp_path, weights, capsys):
    """Two inputs that would be written to one file, or an output that is another
    input, stop the run before anything is written, with or without --overwrite."""
    src = tmp_path / "in"
    src.mkdir()
    write_image(src / "a.png", np.full((20, 20, 3), 40, np.uint8))
    Image.fromarray(np.full((20, 20, 3), 200, np.uint8)).save(src / "a.bmp")  # -> a.png too
    before = (src / "a.png").read_bytes()
    for extra in ([], ["--overwrite"]):
        rc = main(["deblur", str(src), "-o", str(tmp_path / "out"), "--weights", str(weights)] + extra)
        err = capsys.readouterr().err
        assert rc == 2 and "would both be written to" in err and "a.bmp" in err
        assert not (tmp_path / "out").exists()
        rc = main(["deblur", str(src / "a.bmp"), str(src / "a.png"), "-o", str(src), "--weights", str(weights)]
                  + extra)
        assert rc == 2 and "would both be written to" in capsys.readouterr().err
    (tmp_path / "d1").mkdir()
    write_image(tmp_path / "d1" / "a.png", np.zeros((20, 20, 3), np.uint8))
    rc = main(["deblur", str(src / "a.bmp"), str(tmp_path / "d1" / "a.png"), "-o", str(src), "--overwrite",
               "--weights", str(weights)])
    err = capsys.readouterr().err
    assert rc == 2 and "would both be written to" in err
    rc = main(["deblur", str(src / "a.bmp"), "-o", str(src / "a.png"), "--overwrite", "--weights", str(weights)])
    assert rc == 0  # one input, an explicit output file: replacing it is what --overwrite asks
    write_image(src / "a.png", np.full((20, 20, 3), 40, np.uint8), overwrite=True)
    assert (src / "a.png").read_bytes() == before
    # a glob matching a folder takes the folder's images, as naming the folder does
    rc = main(["deblur", str(tmp_path / "d*"), "-o", str(tmp_path / "globbed"), "--weights", str(weights)])
    assert rc == 0 and sorted(p.name for p in (tmp_path / "globbed").iterdir()) == ["a.png"]
    # the same file named twice is deblurred once
    rc = main(["deblur", str(src / "a.png"), str(src / "a.png"), "-o", str(tmp_path / "twice"),
               "--weights", str(weights)])
    assert rc == 0 and sorted(p.name for p in (tmp_path / "twice").iterdir()) == ["a.png"]


def test_cli_checks_output_device_and_inputs_up_front(tmp_path, weights, capsys):
    write_image(tmp_path / "p.png", np.zeros((20, 20, 3), np.uint8))
    write_image(tmp_path / "q.png", np.zeros((20, 20, 3), np.uint8))
    (tmp_path / "empty").mkdir()
    cases = [
        ([str(tmp_path / "p.png"), "-o", str(tmp_path / "r.xyz")], "cannot write '.xyz' images"),
        ([str(tmp_path / "p.png"), "-o", str(tmp_path / "r.bmp")], "cannot write '.bmp' images"),
        ([str(tmp_path / "p.png"), str(tmp_path / "q.png"), "-o", str(tmp_path / "r.png")],
         "2 inputs need an output folder"),
        ([str(tmp_path / "empty"), "-o", str(tmp_path / "out")], "no images found"),
        ([str(tmp_path / "emp*"), "-o", str(tmp_path / "out")],  # a glob of empty folders: exit 0, nothing done
         "emp*: no images found in the 1 folder(s) it matches"),
        ([str(tmp_path / "p.png"), "-o", str(tmp_path / "q.png" / "r.png")], "q.png is a file, not a folder"),
        ([str(tmp_path / "p.png"), "-o", str(tmp_path / "r.png"), "--overlap", "-7"],
         "--overlap must be a number of pixels >= 0, got -7"),
        ([str(tmp_path / "p.png"), "-o", str(tmp_path / "r.png"), "--overlap", "769"],
         "--overlap must be in [0, 3/4 of --tile], got 769 for the automatic 1024-px tiles"),
        ([str(tmp_path / "p.png"), "-o", str(tmp_path / "r.png"), "--tile", "410", "--overlap", "301"],
         "--overlap must be in [0, 3/4 of --tile], got 301 for --tile 410 (used as 400)"),
        ([str(tmp_path / "p.png"), "-o", str(tmp_path / "r.png"), "--device", "nonsense"],
         "--device nonsense: not a torch device"),
        ([str(tmp_path / "p.png"), "-o", ""], "-o/--output '': empty (name a file or folder"),
        ([str(tmp_path / "p.png"), "-o", str(tmp_path / "r.png"), "--device", "meta"],
         "--device meta: the meta device holds no data (use cpu or cuda)"),
        ([str(tmp_path / "p.png"), "-o", str(tmp_path / "r.png"), "--device", "cpu:5"],
         "--device cpu:5: there is one CPU device, cpu (no index)"),
        ([str(tmp_path / "p.png"), "-o", str(tmp_path / "r.png"), "--tile", "0", "--overlap", "-5"],
         "--overlap must be a number of pixels >= 0, got -5"),
    ]
    if not torch.cuda.is_available():
        cases.append(([str(tmp_path / "p.png"), "-o", str(tmp_path / "r.png"), "--device", "cuda"],
                      "--device cuda: CUDA is not available"))
    for args, message in cases:
        rc = main(["deblur"] + args + ["--weights", str(weights)])
        err = capsys.readouterr().err
        assert rc == 2 and message in err, (args, err)
        assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "p.png", "q.png"]


def test_cli_output_depth_follows_the_source(tmp_path, weights, capsys):
    import tifffile

    rng = np.random.default_rng(5)
    write_image(tmp_path / "s16.png", (rng.random((20, 20, 3)) * 65535).astype(np.uint16))
    tifffile.imwrite(tmp_path / "f.tif", rng.random((20, 20, 3), dtype=np.float32), photometric="rgb")
    write_image(tmp_path / "rgba.png", (rng.random((20, 20, 4)) * 255).astype(np.uint8))
    for src, dst, depth in (("s16.png", "a.jpeg", 8), ("s16.png", "a.JPG", 8), ("f.tif", "f.tif", 16),
                            ("f.tif", "f.png", 16), ("s16.png", "b.tiff", 16)):
        assert main(["deblur", str(tmp_path / src), "-o", str(tmp_path / "o" / dst), "--weights",
                     str(weights)]) == 0, (src, dst, capsys.readouterr().err)
        assert read_image(tmp_path / "o" / dst, mode=None)[1].bit_depth == depth, (src, dst)
    rc = main(["deblur", str(tmp_path / "rgba.png"), "-o", str(tmp_path / "o" / "x.jpg"), "--weights", str(weights)])
    assert rc == 2 and "JPEG cannot hold" in capsys.readouterr().err


def test_cli_and_api_keep_colour_profile_and_exif(tmp_path, weights, small_model):
    """A camera photo's colour profile and EXIF survive `inik deblur` (orientation
    applied and reset to 1) and come back in a PIL result's info (untouched, as its
    pixels are not turned); a CMYK profile does not follow the pixels into RGB."""
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 8, "Canon"
    rng = np.random.default_rng(7)
    photo = Image.fromarray((rng.random((20, 32, 3)) * 255).astype(np.uint8))
    photo.save(tmp_path / "p.jpg", quality=95, icc_profile=icc, exif=exif)
    for dst in ("o.jpg", "o.png", "o.tif"):
        assert main(["deblur", str(tmp_path / "p.jpg"), "-o", str(tmp_path / dst), "--weights", str(weights)]) == 0
        with Image.open(tmp_path / dst) as im:
            assert im.size == (20, 32) and im.info.get("icc_profile") == icc, dst
            if dst != "o.tif":
                assert im.getexif()[0x0112] == 1 and im.getexif()[0x010F] == "Canon", dst
    with Image.open(tmp_path / "p.jpg") as im:
        out = inik.deblur(im, small_model)
        assert out.size == im.size and out.info["icc_profile"] == icc and out.info["exif"] == im.info["exif"]
    webp = tmp_path / "p.webp"  # WebP keeps EXIF without JPEG's 'Exif' header
    photo.save(webp, lossless=True, exif=exif)
    with Image.open(webp) as im:
        out = inik.deblur(im, small_model)
    out.save(tmp_path / "w.jpg", exif=out.info["exif"])  # as the docstring says
    with Image.open(tmp_path / "w.jpg") as im:
        assert im.getexif()[0x010F] == "Canon"
    out.save(tmp_path / "w.webp", exif=out.info["exif"])
    with Image.open(tmp_path / "w.webp") as im:
        assert im.getexif()[0x010F] == "Canon"
    cmyk = photo.convert("CMYK")
    cmyk.info["icc_profile"] = b"\0" * 16 + b"CMYK" + b"\0" * 16 + b"acsp" + b"\0" * 88
    out = inik.deblur(cmyk, small_model)
    assert out.mode == "RGB" and "icc_profile" not in out.info


def test_cli_format_and_quality(tmp_path, weights, capsys):
    """--format picks the outputs' format for a folder (JPEG 8-bit from a 16-bit PNG,
    with --quality); it must agree with a single output file's suffix; alpha cannot go
    to JPEG (that file is reported, the others written)."""
    rng = np.random.default_rng(8)
    src = tmp_path / "in"
    src.mkdir()
    write_image(src / "a.png", (rng.random((24, 24, 3)) * 65535).astype(np.uint16))
    write_image(src / "b.tif", (rng.random((24, 24, 3)) * 255).astype(np.uint8))
    write_image(src / "c.png", (rng.random((24, 24, 4)) * 255).astype(np.uint8))
    rc = main(["deblur", str(src), "-o", str(tmp_path / "out"), "--weights", str(weights), "--format", "jpg",
               "--quality", "60"])
    assert rc == 1 and "JPEG cannot hold" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.jpg", "b.jpg"]
    main(["deblur", str(src / "a.png"), "-o", str(tmp_path / "q95"), "--weights", str(weights), "--format", "jpg"])
    small, best = (tmp_path / "out" / "a.jpg").stat().st_size, (tmp_path / "q95" / "a.jpg").stat().st_size
    assert small < best  # quality 60 against the default 95
    with Image.open(tmp_path / "out" / "a.jpg") as im:
        assert im.format == "JPEG" and im.mode == "RGB"
    assert main(["deblur", str(src / "b.tif"), "-o", str(tmp_path / "t"), "--weights", str(weights),
                 "--format", "png"]) == 0
    assert read_image(tmp_path / "t" / "b.png")[1].format == "PNG"
    for bad, msg in ((["-o", str(tmp_path / "x.jpg"), "--format", "png"], "--format png contradicts"),
                     (["-o", str(tmp_path / "y"), "--quality", "0"], "--quality must be in 1..95"),
                     (["-o", str(tmp_path / "y.tif"), "--quality", "80"], "no output is a JPEG (they are .tif)"),
                     (["-o", str(tmp_path / "y"), "--quality", "80"], "no output is a JPEG (they are .png)")):
        assert main(["deblur", str(src / "a.png"), "--weights", str(weights), *bad]) == 2
        assert msg in capsys.readouterr().err
    assert not (tmp_path / "x.jpg").exists() and not (tmp_path / "y").exists()
    assert main(["deblur", str(src / "a.png"), "-o", str(tmp_path / "z.jpeg"), "--weights", str(weights),
                 "--format", "jpg"]) == 0


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_api_refuses_or_converts_ambiguous_input(small_model, caplog):
    rng = np.random.default_rng(6)
    grey = rng.random((12, 10)).astype(np.float32)
    # np.matrix indexes otherwise (its [:, :, None] corrupted the heap); a mask would be ignored
    np.testing.assert_array_equal(inik.deblur(np.matrix(grey), small_model), inik.deblur(grey, small_model))
    with pytest.raises(TypeError, match="masked array's mask would be ignored"):
        inik.deblur(np.ma.masked_array(grey, grey > 0.5), small_model)
    u8 = (rng.random((3, 16, 16)) * 255).astype(np.uint8)
    with pytest.raises(TypeError, match="image tensor must be floating point in \\[0, 1\\], got torch.uint8"):
        inik.deblur(torch.from_numpy(u8), small_model)
    rgb = Image.fromarray(u8.transpose(1, 2, 0))
    want = np.asarray(inik.deblur(rgb, small_model))
    # modes that are colour in another form are converted, not deblurred as raw channels
    for mode, out_mode in (("CMYK", "RGB"), ("YCbCr", "RGB"), ("P", "RGB")):
        out = inik.deblur(rgb.convert(mode), small_model)
        assert out.mode == out_mode, mode
        ref = np.asarray(inik.deblur(rgb.convert(mode).convert("RGB"), small_model))
        np.testing.assert_array_equal(np.asarray(out), ref)
        if mode != "P":  # close to deblurring the RGB original (the conversions round; a palette quantises)
            assert np.abs(np.asarray(out).astype(int) - want).mean() < 6, mode
    assert inik.deblur(rgb.convert("1"), small_model).mode == "L"
    assert inik.deblur(rgb.convert("RGBA").convert("RGBa"), small_model).mode == "RGBA"  # alpha kept
    pa = rgb.convert("P")
    pa.info["transparency"] = 0
    assert inik.deblur(pa, small_model).mode == "RGBA"
    with pytest.raises(ValueError, match="PIL image mode 'F' is not supported"):
        inik.deblur(rgb.convert("F"), small_model)
    with caplog.at_level("WARNING", logger="inik"):
        inik.deblur(rng.random((16, 16, 3)).astype(np.float32) * 255, small_model)
    assert "outside [0, 1]" in caplog.text
    out = inik.deblur(rng.random((16, 16, 3)).astype(np.float32), small_model, tile=np.int64(0))
    assert out.shape == (16, 16, 3)
    with pytest.raises(ValueError, match="overlap must be None \\(default\\) or a number of pixels, got 2.5"):
        inik.deblur(rng.random((16, 16, 3)).astype(np.float32), small_model, tile=384, overlap=2.5)


def test_cli_info_version_and_python_m(capsys):
    """`inik info` reports what this install runs on (as text and JSON), consistent with
    the package's own answers; `inik --version` and `python -m inik` work."""
    import subprocess
    import sys

    from inik.ops import _ext, resolve_backend

    assert main(["info", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["inik"] == inik.__version__ and facts["versions"]["torch"].split("+")[0] in torch.__version__
    assert facts["extension"]["built"] == _ext.is_built() and facts["cpu"]["ifm_backend"] == resolve_backend("cpu")
    assert (facts["default_weights"] is not None) == inik.loading.DEFAULT_WEIGHTS.is_file()
    if facts["default_weights"] is not None:
        config = inik.INIKNet.read_config(inik.loading.DEFAULT_WEIGHTS)
        assert facts["default_weights"]["revision"] == config.revision
        assert facts["default_weights"]["cascade"] == config.cascade
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert text.startswith(f"inik {inik.__version__}") and f"IFM backend {resolve_backend('cpu')}" in text
    for bad in ("INIK_IFM_BACKEND=nonsense", "INIK_IFM_BACKEND=cuda", "INIK_CPU_ISA=nonsense"):
        name, value = bad.split("=")
        with pytest.MonkeyPatch.context() as mp:  # a bad setting is reported, not fatal
            mp.setenv(name, value)
            assert main(["info"]) == 0
        text = capsys.readouterr().out
        assert "error: " in text and bad in text, bad
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"inik {inik.__version__}"
    out = subprocess.run([sys.executable, "-m", "inik", "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == f"inik {inik.__version__}", out.stderr


def test_device_auto_picks_cuda_when_available(monkeypatch):
    """--device defaults to auto in deblur, explain and eval: CUDA when available, else the CPU."""
    from inik.cli import build_parser
    from inik.commands import check_device

    assert check_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert check_device("auto") == torch.device("cpu")
    parser = build_parser()
    for argv in (["deblur", "x.png", "-o", "y"], ["explain", "x.png", "-o", "y"],
                 ["eval", "--data", "d", "--out", "r"]):
        assert parser.parse_args(argv).device == "auto", argv


def test_array_and_tensor_edge_cases(small_model, tmp_path):
    """Alpha comes back exactly as it came (float64 too); big-endian arrays are read;
    bad values and shapes are refused by what they are, in the caller's terms."""
    rng = np.random.default_rng(11)
    rgba = rng.random((20, 18, 4))
    out = inik.deblur(rgba, small_model)
    assert out.dtype == np.float64 and np.array_equal(out[:, :, 3], rgba[:, :, 3])
    u16 = (rgba * 65535).astype(np.uint16)
    big = u16.astype(">u2")
    np.testing.assert_array_equal(inik.deblur(big, small_model), inik.deblur(u16, small_model))
    with pytest.raises(ValueError, match="image values reach 1e\\+300: expected floats in \\[0, 1\\]"):
        inik.deblur(np.full((5, 5, 3), 1e300), small_model)
    with pytest.raises(ValueError, match="image values reach"):
        inik.deblur(torch.full((3, 5, 5), 1e300, dtype=torch.float64), small_model)
    for shape in ((3, 5, 0), (0, 3, 5, 5), (1, 5, 5)):
        with pytest.raises(ValueError, match=re.escape(f"(B, 3, H, W) with B, H, W >= 1, got {shape}")):
            inik.deblur(torch.rand(shape), small_model)
    with pytest.raises(ValueError, match="device='gpu': not a torch device"):
        inik.deblur(rgba, small_model, device="gpu")
    with pytest.raises(ValueError, match="device='meta': the meta device holds no data"):
        inik.deblur(rgba, small_model, device="meta")
    if not torch.cuda.is_available():
        for device in ("cuda", 0, torch.device("cuda:1")):
            with pytest.raises(ValueError, match=re.escape(f"device={device!r}: CUDA is not available")):
                inik.deblur(rgba, device=device)
    with pytest.raises(ValueError, match="device=1.5: expected cpu, cuda or cuda:N"):
        inik.deblur(rgba, small_model, device=1.5)
    for model in ("w.safetensors", torch.nn.Identity()):  # Identity: a bare StopIteration
        with pytest.raises(ValueError, match=r"model: expected an INIKNet \(inik.INIKNet.load\(path\).*got "):
            inik.deblur(rgba, model)
    # values the network overflows (about 1e12): a NaN image was returned after the clipping warning
    with pytest.raises(ValueError, match=r"network's output is not finite: y's values reach 1e\+20"):
        inik.deblur(np.full((17, 23, 3), 1e20), small_model)
    from inik.tiling import restore
    overflowing = inik.INIKNet(width=8).eval()
    with torch.no_grad():
        overflowing.omega_head.bias.fill_(3e38)
    with pytest.raises(ValueError, match="restore: the network's output is not finite: the weights overflow$"):
        restore(overflowing, torch.rand(1, 3, 16, 16))
    for y in (torch.rand(3, 17, 23), torch.rand(1, 1, 17, 23), np.zeros((1, 3, 8, 8))):
        with pytest.raises(ValueError, match=r"restore: y must be a \(B, 3, H, W\) tensor"):
            restore(small_model, y, tile=384)
    with pytest.raises(ValueError, match="overlap must be None \\(default\\) or a number of pixels >= 0, got -5"):
        inik.deblur(rgba, small_model, tile=0, overlap=-5)
    # a trailing separator names a folder, even with an image suffix
    write_image(tmp_path / "p.png", rgba[:, :, :3].astype(np.float32))
    weights = tmp_path / "w.safetensors"
    small_model.save(weights)
    assert main(["deblur", str(tmp_path / "p.png"), "-o", str(tmp_path / "results.png") + "/",
                 "--weights", str(weights)]) == 0
    assert (tmp_path / "results.png" / "p.png").is_file()


def test_info_says_what_half_runs(capsys, monkeypatch):
    """inik info names bfloat16 as native, or emulated with --half running float32."""
    import inik.loading
    for native, words in ((True, "bfloat16 native"), (False, "bfloat16 emulated (--half runs float32)")):
        monkeypatch.setattr(inik.loading, "cpu_has_bf16", lambda native=native: native)
        assert main(["info"]) == 0
        assert words in capsys.readouterr().out


def test_errors_are_shown_by_their_first_line():
    """One line of any message; the type's name (or a given default) for an empty one."""
    from inik.errors import first_line
    assert first_line(RuntimeError("first\nsecond\n")) == "first"
    assert first_line(EOFError()) == "EOFError" and first_line(EOFError(), "no details") == "no details"


def test_deblur_takes_half_floats_and_graph_tensors_without_warnings(small_model):
    """float16 arrays and tensors that require grad are deblurred as any others, with no
    overflow or autograd warning from the input checks."""
    import warnings

    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out16 = inik.deblur(rng.random((20, 20, 3)).astype(np.float16), small_model)
        x = torch.rand(3, 20, 20, requires_grad=True)
        out = inik.deblur(x, small_model)
    assert out16.dtype == np.float16 and out16.shape == (20, 20, 3)
    assert out.shape == x.shape and not out.requires_grad


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_named_pipe_is_refused_not_waited_on(tmp_path, weights):
    """Opening a named pipe blocks until someone writes to it: an input that is not a
    regular file is refused before it is opened."""
    import subprocess
    import sys

    os.mkfifo(tmp_path / "pipe.png")
    code = "import sys; from inik.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, "deblur", str(tmp_path / "pipe.png"), "-o",
                           str(tmp_path / "out.png"), "--weights", str(weights)],
                          capture_output=True, text=True, timeout=300)  # a wait on the pipe fails here
    assert proc.returncode == 2, proc.stderr
    assert "pipe.png: not a regular file (a folder, pipe or device)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out.png").exists()

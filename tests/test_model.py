"""INIKNet: shapes at any size, parameter counts, ablations, interpretation, save/load, learning."""

import copy
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import inik
from inik.models.dictionary import polar_grid


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return inik.INIKNet().eval()


@pytest.mark.parametrize("size", [(1, 1), (37, 53), (64, 64), (16, 100)])
def test_any_size(model, size):
    y = torch.rand(2, 3, *size)
    with torch.no_grad():
        x = model(y)
    assert x.shape == y.shape and x.dtype == y.dtype and torch.isfinite(x).all()


def test_forward_equals_finest_level(model):
    y = torch.rand(1, 3, 64, 48)
    with torch.no_grad():
        levels = model.forward_levels(y)
        assert [tuple(l.shape[-2:]) for l in levels] == [(16, 12), (32, 24), (64, 48)]
        torch.testing.assert_close(model(y), levels[-1])


def test_padding_does_not_leak_into_crop(model):
    """A 37x53 input is padded to 48x64; the crop must be the padded run's top-left."""
    y = torch.rand(1, 3, 37, 53)
    padded, _ = inik.models.iniknet.pad_to_valid(y)
    assert padded.shape[-2:] == (48, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(y), model(padded)[..., :37, :53])


def test_parameter_counts():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert 1_950_000 <= count(inik.INIKNet()) <= 2_000_000
    # The authors' configuration (with its 240->3 mixing convolution) counts 1,976,847.
    assert count(inik.INIKNet(mixing="conv")) == 1_976_847


@pytest.mark.parametrize("kwargs", [
    dict(dictionary="per-scale-inr"), dict(dictionary="upsampled"),
    dict(recurrence="unidirectional"), dict(mixing="conv"),
    dict(width=8, scales=4, atoms=3), dict(zero_mean_atoms=True),
    dict(cascade=True), dict(cascade=True, recurrence="unidirectional"),
])
def test_variants_forward_backward(kwargs):
    m = inik.INIKNet(**kwargs)
    y = torch.rand(2, 3, 32, 48)
    levels = m.forward_levels(y)
    assert [l.shape for l in levels] == [(2, 3, 8, 12), (2, 3, 16, 24), (2, 3, 32, 48)]
    sum(l.square().mean() for l in levels).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # The dictionary receives gradient through the IFM (or the mixing conv).
    assert any(p.grad.abs().sum() > 0 for p in m.dictionary.parameters())


@pytest.mark.parametrize("kind", ["ms-inr", "per-scale-inr", "upsampled"])
def test_zero_mean_atoms_keep_flat_regions(kind):
    """Zero-mean atoms: every atom sums to 0 over its support, so a flat image comes
    back unchanged - no brightness or colour shift whatever mu and omega are - away
    from the border, where the IFM sees zeros outside the image (K // 2 = 7 pixels)."""
    torch.manual_seed(0)
    m = inik.INIKNet(width=8, dictionary=kind, zero_mean_atoms=True).eval()
    for s in range(1, m.config.scales):
        a = m.dictionary.scale_atoms(s)
        assert a.abs().amax() > 1e-3
        torch.testing.assert_close(a.sum((-2, -1)), torch.zeros(a.shape[0]), atol=1e-6, rtol=0)
    flat = torch.tensor([0.2, 0.5, 0.9]).view(1, 3, 1, 1).expand(1, 3, 40, 56).contiguous()
    with torch.no_grad():
        inner = (..., slice(7, -7), slice(7, -7))
        torch.testing.assert_close(m(flat)[inner], flat[inner], atol=1e-5, rtol=0)
        # Without the constraint the same weights shift a flat image.
        free = inik.INIKNet(width=8, dictionary=kind).eval()
        free.load_state_dict(m.state_dict())
        assert (free(flat) - flat)[inner].abs().amax() > 1e-3


def test_config_errors():
    with pytest.raises(ValueError, match="dictionary must be one of"):
        inik.INIKNet(dictionary="nope")
    with pytest.raises(ValueError, match="recurrence must be one of"):
        inik.INIKNet(recurrence="both")
    with pytest.raises(ValueError, match="scales must be"):
        inik.INIKNet(scales=1)
    with pytest.raises(ValueError, match="zero_mean_atoms must be a bool"):
        inik.INIKNet(zero_mean_atoms="yes")
    for name, bad in (("width", True), ("atoms", True), ("width", 0), ("scales", 1), ("atoms", 2.0),
                      ("width", 257), ("scales", 33), ("atoms", 65), ("scales", 100_000)):
        least = 2 if name == "scales" else 1
        with pytest.raises(ValueError, match=f"{name} must be an integer from {least} to "):
            inik.INIKNet(**{name: bad})
    assert type(inik.INIKNet(width=np.int64(8)).config.width) is int
    for config in (8, {"width": 8}):  # the options are keywords (or an INIKNetConfig)
        with pytest.raises(TypeError, match="config must be an INIKNetConfig"):
            inik.INIKNet(config)
    for backend in ("CPP", "nope", None):  # refused when the model is built, not at its first forward
        with pytest.raises(ValueError, match="ifm_backend must be 'auto' or one of"):
            inik.INIKNet(width=8, ifm_backend=backend)


@pytest.mark.parametrize("y, exc, match", [
    (torch.rand(1, 1, 8, 8), ValueError, r"shape \(B, 3, H, W\)"),
    (torch.rand(3, 8, 8), ValueError, r"shape \(B, 3, H, W\)"),
    (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), TypeError, "floating-point"),
    (torch.full((1, 3, 8, 8), float("nan")), ValueError, "NaN or Inf"),
    (torch.full((1, 3, 8, 8), float("inf")), ValueError, "NaN or Inf"),
    ([[0.0]], TypeError, "torch.Tensor"),
])
def test_bad_input(model, y, exc, match):
    with pytest.raises(exc, match=match):
        model(y)


def test_input_on_another_device_is_named(model):
    """y on another device than the weights: one line naming both (torch's own error said
    "Tensor.item() cannot be called on meta tensors")."""
    with pytest.raises(ValueError, match=r"INIKNet: y is on meta but the model is on cpu \(y.to\('cpu'\)"):
        model(torch.rand(1, 3, 8, 8, device="meta"))
    with pytest.raises(ValueError, match="y is on meta but the model is on cpu"):
        model.interpret(torch.rand(1, 3, 16, 16, device="meta"))


def test_forward_levels_needs_training_sizes(model):
    with pytest.raises(ValueError, match="multiples of 16"):
        model.forward_levels(torch.rand(1, 3, 40, 48))


def test_forward_levels_takes_any_float_dtype_as_forward_does(model):
    y = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        levels = model.forward_levels(y)
        torch.testing.assert_close(levels[-1].double(), model(y), rtol=1e-5, atol=1e-5)


def test_interpret(model):
    y = torch.rand(1, 3, 37, 53)
    out = model.interpret(y)
    assert [tuple(m.shape) for m in out.mu] == [(1, 8, 10, 14), (1, 8, 19, 27), (1, 8, 37, 53)]
    assert [tuple(o.shape) for o in out.omega] == [(1, 10, 10, 14), (1, 10, 19, 27), (1, 10, 37, 53)]
    torch.testing.assert_close(out.mu[-1].sum(1), torch.ones(1, 37, 53))
    assert [tuple(a.shape) for a in out.atoms] == [(10, k, k) for k in range(3, 16, 2)]
    with torch.no_grad():
        torch.testing.assert_close(out.outputs[-1], model(y))
    half = model.interpret(y.double())  # maps in the input's dtype, as forward returns
    assert {t.dtype for t in half.outputs + half.mu + half.omega} == {torch.float64}
    assert half.atoms[0].dtype == torch.float32


def test_built_on_the_meta_device_then_loaded():
    """torch.device('meta') construction, to_empty, load_state_dict: the same network
    (the dictionary's polar grids, constants outside the state dict, are recomputed)."""
    torch.manual_seed(0)
    ref = inik.INIKNet(width=8).eval()
    with torch.device("meta"):
        lazy = inik.INIKNet(width=8)
    assert next(lazy.parameters()).is_meta
    lazy = lazy.to_empty(device="cpu")
    lazy.load_state_dict(ref.state_dict())
    y = torch.rand(1, 3, 35, 41)
    with torch.no_grad():
        torch.testing.assert_close(lazy.eval()(y), ref(y), rtol=0, atol=0)
    with torch.device("meta"):  # loading with assign=True: the grids follow the parameters
        assigned = inik.INIKNet(width=8)
    assigned.load_state_dict(ref.state_dict(), assign=True)
    with torch.no_grad():
        torch.testing.assert_close(assigned.eval()(y), ref(y), rtol=0, atol=0)
    # a dtype change casts the float32 grids, as trained (computing them in float64
    # would move the centre tap's angle, and the network with it)
    for dtype in (torch.float64, torch.bfloat16):
        moved = copy.deepcopy(ref).to(dtype)
        for k in moved.dictionary.sizes:
            torch.testing.assert_close(getattr(moved.dictionary, f"grid{k}"), polar_grid(k).to(dtype),
                                       rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(copy.deepcopy(ref).double()(y.double()).float(), ref(y), rtol=0, atol=2e-5)


def test_dictionary_structure():
    d = inik.models.Dictionary()
    atoms = d()
    assert atoms.shape == (7, 10, 15, 15) and d.support == [3, 5, 7, 9, 11, 13, 15]
    # Scale 1 (3x3) is zero outside its centred window.
    assert atoms[0, :, :6].abs().sum() == 0 and atoms[0, :, 6:9, 6:9].abs().sum() > 0
    # One INR per atom, shared across scales: frequencies evenly spaced in [2, 12].
    torch.testing.assert_close(torch.stack([m.w for m in d.inrs]).detach(), torch.linspace(2, 12, 10))
    # Each size-k atom is Phi_n(polar grid) * 9 / k^2.
    with torch.no_grad():
        want = d.inrs[4](polar_grid(7)).view(7, 7) * 9 / 49
    torch.testing.assert_close(d.scale_atoms(3)[4], want)
    g = polar_grid(3)
    torch.testing.assert_close(g[4], torch.tensor([0.0, 1.0, 0.5]))  # centre: |p| = 0, angle 0
    torch.testing.assert_close(g[0, 0], torch.tensor(1.0))  # corner: |p| = sqrt(2)


def test_save_load_round_trip(tmp_path):
    m = inik.INIKNet(dictionary="upsampled", recurrence="unidirectional", width=8)
    path = tmp_path / "w.safetensors"
    m.save(path)
    loaded = inik.INIKNet.load(path)
    assert loaded.config == m.config
    assert inik.INIKNet.load(os.fsencode(path)).config == m.config  # bytes paths, as save takes them
    y = torch.rand(1, 3, 40, 33)
    with torch.no_grad():
        torch.testing.assert_close(loaded(y), m(y), rtol=0, atol=0)
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temp files left
    for umask, mode in ((0o022, 0o644), (0o077, 0o600)):  # permissions follow the umask, as for any file
        old = os.umask(umask)
        try:
            m.save(tmp_path / f"u{umask:o}.safetensors")
        finally:
            os.umask(old)
        assert (tmp_path / f"u{umask:o}.safetensors").stat().st_mode & 0o777 == mode
        (tmp_path / f"u{umask:o}.safetensors").unlink()
    # through a symbolic link: the file it names is updated, the link stays a link
    other = inik.INIKNet(dictionary="upsampled", recurrence="unidirectional", width=8)
    link = tmp_path / "link.safetensors"
    link.symlink_to(path)
    other.save(link)
    assert link.is_symlink() and inik.INIKNet.load(path).state_dict()["mu_head.weight"].equal(
        other.state_dict()["mu_head.weight"])
    # errors name the user's path, not a temporary file, and leave nothing behind
    with pytest.raises(FileNotFoundError, match="the folder of .*nope.*does not exist"):
        m.save(tmp_path / "nope" / "w.safetensors")
    with pytest.raises(IsADirectoryError, match="is a folder"):
        m.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.safetensors", "w.safetensors"]
    with pytest.raises(TypeError, match="unexpected keyword argument 'strict'"):
        inik.INIKNet.load(path, strict=False)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no weights file"):
        inik.INIKNet.load(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        inik.INIKNet.load(junk)
    from safetensors.torch import save_file
    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(1)}, other)
    with pytest.raises(ValueError, match="not an INIKNet weights file"):
        inik.INIKNet.load(other)
    # a config this version cannot read in full: refused by name, never loaded with defaults
    import json
    state = {k: v.contiguous() for k, v in inik.INIKNet(width=8).state_dict().items()}
    good = {"width": 8}
    for config, match in ((json.dumps({**good, "zero_mean_atom": True}), r"does not know: \['zero_mean_atom'\]"),
                          ("{not json", "malformed config"), ("[8]", "malformed config")):
        bad = tmp_path / "bad.safetensors"
        save_file(state, bad, metadata={"format": "inik.INIKNet", "config": config})
        with pytest.raises(ValueError, match=match):
            inik.INIKNet.load(bad)
    save_file(state, bad, metadata={"format": "inik.INIKNet", "config": json.dumps(good)})
    # missing options take their defaults, except the revision: such a file predates it (revision 1)
    assert inik.INIKNet.load(bad).config == inik.INIKNet(width=8, revision=1).config


def test_ifm_backend_is_a_runtime_choice():
    from ifm_checks import assert_models_agree
    assert_models_agree("reference", "unfused", size=32, rtol=1e-5, atol=1e-5)


def test_compile_model_fullgraph():
    torch.manual_seed(0)
    m = inik.INIKNet(width=8, scales=4, atoms=3).eval()
    y = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        eager = m(y)
        compiled = torch.compile(m, fullgraph=True, backend="aot_eager")(y)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


def test_overfits_one_pair():
    """The model learns to undo a blur: the loss falls 10x and ends well below the blurry input's."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    sharp = F.interpolate(torch.rand(1, 3, 8, 8, generator=g), size=(32, 32), mode="nearest")
    blurry = F.conv2d(F.pad(sharp, (2, 2, 2, 2), mode="replicate"), torch.ones(3, 1, 5, 5) / 25, groups=3)
    blurry_mse = F.mse_loss(blurry, sharp).item()
    m = inik.INIKNet()
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    first = None
    for step in range(400):  # noqa: B007 (named in the failure messages)
        loss = F.mse_loss(m.forward_levels(blurry)[-1], sharp)
        first = first if first is not None else loss.item()
        if loss.item() < first / 10 and loss.item() < blurry_mse / 4:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first / 10, (step, first, loss.item())
    assert loss.item() < blurry_mse / 4, (step, blurry_mse, loss.item())


@pytest.mark.parametrize("shape", [(2, 5, 7, 9), (1, 3, 2, 2), (1, 4, 3, 17), (1, 3, 8, 6), (1, 2, 6, 3)])
@pytest.mark.parametrize("stride", [1, 2])
def test_reflect_conv_keeps_channels_last_and_equals_torch(shape, stride):
    """The U-Net's padded convolution equals nn.Conv2d(padding_mode="reflect") forward and
    backward, and keeps a channels_last input channels_last."""
    from inik.models.unet import ReflectConv2d
    from inik.ops.conv import reflect_pad1

    torch.manual_seed(0)
    cin = shape[1]
    ours = ReflectConv2d(cin, 6, stride).double()
    ref = torch.nn.Conv2d(cin, 6, 3, stride=stride, padding=1, padding_mode="reflect", bias=False).double()
    ref.weight.data.copy_(ours.weight.data)
    for fmt in (torch.channels_last, torch.contiguous_format):
        x = torch.randn(shape, dtype=torch.float64).contiguous(memory_format=fmt).requires_grad_()
        if fmt is torch.channels_last and shape[1] > 1:
            assert reflect_pad1(x).is_contiguous(memory_format=torch.channels_last)
        got, want = ours(x), ref(x)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
        g = torch.randn_like(want)
        torch.testing.assert_close(torch.autograd.grad(got, (x, ours.weight), g),
                                   torch.autograd.grad(want, (x, ref.weight), g))
        with torch.no_grad():  # CPU inference on channels_last: zero padding + recomputed borders
            got = ours(x)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
        assert got.is_contiguous(memory_format=fmt)
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    assert torch.autograd.gradcheck(reflect_pad1, (x.requires_grad_(),))


def test_revision_2_is_the_authors_network():
    """Revision 2 (default): a ReLU after the first convolution of every U-Net stage,
    as the authors' BasicConv; the polar grid's centre exactly 0 with angle 0 at every
    size; mixing="conv" with zeros as scale 0's responses. Revision 1 (weights trained
    before 2026-12-02, the bundled ones) keeps the old network, with the same state dict."""
    from inik.models.unet import Stage
    torch.manual_seed(0)
    new, old = inik.INIKNet(width=8), inik.INIKNet(width=8, revision=1)
    assert new.config.revision == 2 and old.config.revision == 1
    old.load_state_dict(new.state_dict())  # one layout
    stages = [m for m in new.unet.modules() if isinstance(m, Stage)]
    assert len(stages) == 5 and all(s.relu for s in stages)
    assert not any(s.relu for s in old.unet.modules() if isinstance(s, Stage))
    x = torch.randn(1, 3, 16, 16)
    for s_new, s_old in zip(stages, [m for m in old.unet.modules() if isinstance(m, Stage)]):
        xin = torch.randn(1, s_new[0].in_channels, 16, 16)
        conv = F.conv2d(F.pad(xin, (1,) * 4, mode="reflect"), s_new[0].weight, stride=s_new[0].stride)
        torch.testing.assert_close(s_new(xin), s_new[2](s_new[1](F.relu(conv))), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(s_old(xin), s_old[2](s_old[1](conv)), atol=1e-6, rtol=1e-6)
    assert not torch.allclose(new.unet(x), old.unet(x))
    for k in range(3, 17, 2):
        centre = polar_grid(k).view(k, k, 3)[k // 2, k // 2]
        assert centre.tolist() == [0.0, 1.0, 0.5], k  # |p| = 0, cos 0 = 1, sin 0 = 0
        if k in (3, 5, 9):  # sizes whose linspace centre was exact: the old grid agrees
            torch.testing.assert_close(polar_grid(k), polar_grid(k, exact=False), atol=2e-7, rtol=0)
    legacy = polar_grid(7, exact=False).view(7, 7, 3)[3, 3]
    assert legacy[0] < 1e-7 and abs(legacy[1].item() - (math.cos(-3 * math.pi / 4) + 1) / 2) < 1e-6
    torch.testing.assert_close(new.dictionary.grid7, polar_grid(7))
    torch.testing.assert_close(old.dictionary.grid7, polar_grid(7, exact=False))
    y, mu, omega = torch.rand(1, 3, 8, 8), torch.rand(1, 8, 8, 8), torch.rand(1, 10, 8, 8)
    conv_new, conv_old = inik.INIKNet(width=8, mixing="conv"), inik.INIKNet(width=8, mixing="conv", revision=1)
    r_new, r_old = conv_new._weighted_responses(y, mu, omega), conv_old._weighted_responses(y, mu, omega)
    n0 = 3 * 10  # scale 0's channels (R, C, N order)
    assert r_new[:, :n0].abs().max() == 0 and r_old[:, :n0].abs().max() > 0
    with pytest.raises(ValueError, match="revision must be 1"):
        inik.INIKNet(revision=3)
    with pytest.raises(ValueError, match="revision must be 1"):
        inik.INIKNet(revision=2.0)
    assert type(inik.INIKNet(width=4, revision=np.int64(1)).config.revision) is int  # saved as JSON


def test_the_bundled_weights_are_revision_2():
    from inik.loading import DEFAULT_WEIGHTS
    assert inik.INIKNet.read_config(DEFAULT_WEIGHTS).revision == 2  # the authors' network (docs/MODEL_CARD.md)


# ------------------------------------------------------------------ cascade


def _cascade_model(recurrence="duplex", gate=(0.7, -0.4)):
    torch.manual_seed(1)
    m = inik.INIKNet(width=8, scales=4, atoms=3, recurrence=recurrence, cascade=True).eval()
    with torch.no_grad():
        m.cascade_gate.copy_(torch.tensor(gate) / inik.models.iniknet.CASCADE_GATE_SCALE)
    assert torch.allclose(m.cascade_gates(), torch.tensor(gate))
    return m


@pytest.mark.parametrize("recurrence", ["duplex", "unidirectional"])
def test_cascade_feeds_each_level_the_coarser_correction(recurrence):
    """Level l's IFM input is y_l + gate * up(x_{l-1} - y_{l-1}): checked by recomputing the
    finer levels from the coarser outputs with the network's own IFM and heads."""
    m = _cascade_model(recurrence)
    y = torch.rand(1, 3, 64, 48)
    seen = []
    restore = m._restore
    m._restore = lambda z, *a: (seen.append(z), restore(z, *a))[1]
    with torch.no_grad():
        levels = m.forward_levels(y)
    pyr = [F.interpolate(y, scale_factor=s, mode="bilinear", align_corners=False) for s in (0.25, 0.5)] + [y]
    torch.testing.assert_close(seen[0], pyr[0])
    for l in (1, 2):
        up = F.interpolate(levels[l - 1] - pyr[l - 1], size=pyr[l].shape[-2:], mode="bilinear", align_corners=False)
        torch.testing.assert_close(seen[l], pyr[l] + m.cascade_gates()[l - 1] * up)
    with torch.no_grad():  # inference runs every level's IFM and returns the finest
        torch.testing.assert_close(m(y), levels[-1])


def test_cascade_with_closed_gates_is_the_network_without_it():
    """Gates start at 0: weights of the plain network are a warm start with their own output."""
    torch.manual_seed(2)
    plain = inik.INIKNet(width=8, scales=4, atoms=3).eval()
    casc = inik.INIKNet(width=8, scales=4, atoms=3, cascade=True).eval()
    assert torch.equal(casc.cascade_gate, torch.zeros(2))
    casc.load_state_dict({**plain.state_dict(), "cascade_gate": torch.zeros(2)})
    y = torch.rand(2, 3, 37, 53)
    with torch.no_grad():
        torch.testing.assert_close(casc(y), plain(y), rtol=0, atol=0)
        casc.cascade_gate.fill_(1.0)
        assert (casc(y) - plain(y)).abs().max() > 1e-4  # the gate is wired


def test_cascade_is_saved_and_loaded(tmp_path):
    """Saved in the file's config when on; left out when off, so that a version of inik
    from before the option reads the file."""
    import json

    from safetensors import safe_open
    stored = lambda p: json.loads(safe_open(str(p), "pt").metadata()["config"])  # noqa: E731
    inik.INIKNet(width=8, scales=4, atoms=3).save(tmp_path / "plain.safetensors")
    assert "cascade" not in stored(tmp_path / "plain.safetensors")
    m = _cascade_model()
    m.save(tmp_path / "c.safetensors")
    assert stored(tmp_path / "c.safetensors")["cascade"] is True
    assert inik.INIKNet.read_config(tmp_path / "c.safetensors").cascade is True
    back = inik.INIKNet.load(tmp_path / "c.safetensors").eval()
    y = torch.rand(1, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(back(y), m(y), rtol=0, atol=0)
    plain = inik.INIKNet(width=8, scales=4, atoms=3)
    with pytest.raises(ValueError, match=r"was saved with cascade=True \(this model: False\): INIKNet.load"):
        plain.load_weights(tmp_path / "c.safetensors")
    with pytest.raises(ValueError, match="unexpected tensors cascade_gate"):
        plain.load_weights(tmp_path / "c.safetensors", check_config=False)
    with pytest.raises(ValueError, match="cascade must be a bool"):
        inik.INIKNet(cascade=1)


def test_cascade_interpret_has_every_level(tmp_path):
    m = _cascade_model()
    y = torch.rand(1, 3, 50, 70)
    it = m.interpret(y)
    assert [o.shape[-2:] for o in it.outputs] == [(13, 18), (25, 35), (50, 70)]
    with torch.no_grad():
        torch.testing.assert_close(it.outputs[-1], m(y))


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [(12, 16), (9, 7), (8, 8), (16, 33)])
def test_reflect_border_conv_in_bfloat16_is_right_and_repeatable(stride, size):
    """The inference convolution that recomputes its border strips, under bf16 autocast,
    equals the float32 reflect-padded convolution to bf16 precision, the same on every call.
    (oneDNN's AMX bf16 kernels gave one-pixel-wide stride-2 strips from uninitialised memory:
    errors of 10 to 1e38, and the default model's --half output up to 1.0 off.)"""
    from inik.ops.conv import conv3x3_reflect_borders
    torch.manual_seed(0)
    x = torch.rand(1, 4, *size).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    w = torch.randn(8, 4, 3, 3)
    ref = F.conv2d(F.pad(x.float(), (1, 1, 1, 1), mode="reflect"), w, stride=stride)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        outs = [conv3x3_reflect_borders(x, w, stride).float() for _ in range(3)]
    for out in outs:
        assert out.shape == ref.shape
        assert float((out - ref).abs().max()) <= 0.02 * float(ref.abs().max())
        assert torch.equal(out, outs[0])


def test_load_weights_refuses_another_configuration_kind_or_device(tmp_path):
    """A file's tensors load only into the model they were saved from (another option
    would compute another function, silently), as floating point, on a usable device."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    m = inik.INIKNet(width=8, scales=4, atoms=3, zero_mean_atoms=True)
    path = tmp_path / "m.safetensors"
    m.save(path)
    other = inik.INIKNet(width=8, scales=4, atoms=3)
    with pytest.raises(ValueError, match=r"saved with zero_mean_atoms=True \(this model: False\)"):
        other.load_weights(path)
    same = inik.INIKNet(width=8, scales=4, atoms=3, zero_mean_atoms=True)
    same.load_weights(path)
    for a, b in zip(same.state_dict().values(), m.state_dict().values()):
        assert torch.equal(a, b)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        ints = {k: f.get_tensor(k).to(torch.int32) if f.get_tensor(k).is_floating_point() else f.get_tensor(k)
                for k in f.keys()}
    save_file(ints, str(tmp_path / "int.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match=r"tensors of another kind \(floating point expected\): .*torch.int32"):
        inik.INIKNet.load(tmp_path / "int.safetensors")
    with pytest.raises(ValueError, match="map_location='meta': the meta device holds no data"):
        inik.INIKNet.load(path, map_location="meta")
    assert inik.INIKNet.load(path, map_location="auto").config == m.config
    # a plain state dict (no inik metadata) has no configuration to compare: its tensors load
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(tmp_path / "plain.safetensors"))
    plain = inik.INIKNet(width=8, scales=4, atoms=3, zero_mean_atoms=True)
    plain.load_weights(tmp_path / "plain.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), m.state_dict().values()))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="map_location='cuda': CUDA is not available"):
            inik.INIKNet.load(path, map_location="cuda")

"""Loss terms against hand computations, LPIPS/VGG wiring (random backbones),
missing-weights errors, and metrics against scikit-image."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from inik import losses
from inik.losses import INIKLoss, MissingWeightsError, VGG19Features, build_lpips, downsample_to, frequency_loss
from inik.metrics import LPIPSMetric, evaluate, mae, psnr, ssim


@pytest.fixture
def empty_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home" / "hub" / "checkpoints"


# ---------------------------------------------------------------- loss terms


def test_frequency_loss_matches_numpy():
    torch.manual_seed(1)
    x, y = torch.rand(2, 3, 12, 10), torch.rand(2, 3, 12, 10)
    fx, fy = np.fft.fft2(x.double().numpy()), np.fft.fft2(y.double().numpy())
    expected = np.abs((fx - fy).real).mean() + np.abs((fx - fy).imag).mean()
    assert frequency_loss(x, y).item() == pytest.approx(expected, rel=1e-5)
    assert frequency_loss(x, x).item() == 0


def test_downsampling_is_the_bilinear_pyramid():
    torch.manual_seed(2)
    y = torch.rand(1, 3, 16, 24)
    # bilinear x0.5 (align_corners=False) samples between 2x2 blocks: their mean
    torch.testing.assert_close(downsample_to(y, (8, 12)), F.avg_pool2d(y, 2))
    # x0.25 samples at 4i + 1.5: the mean of the inner 2x2 of each 4x4 block
    inner = y.unfold(2, 4, 4).unfold(3, 4, 4)[..., 1:3, 1:3].mean(dim=(-2, -1))
    torch.testing.assert_close(downsample_to(y, (4, 6)), inner)
    assert downsample_to(y, (16, 24)) is y


def test_multilevel_loss_by_hand(empty_hub):
    torch.manual_seed(3)
    target = torch.rand(2, 3, 16, 16)
    outs = [torch.rand(2, 3, 4, 4), torch.rand(2, 3, 8, 8), torch.rand(2, 3, 16, 16)]
    loss = INIKLoss(lpips_weight=0)  # missing AlexNet weights do not matter: never built
    assert loss.lpips is None and loss.vgg is None
    total, terms = loss(outs, target)
    mse = freq = 0.0
    for o in outs:
        g = F.interpolate(target, size=o.shape[-2:], mode="bilinear", align_corners=False)
        mse += ((o - g) ** 2).mean().item()
        d = np.fft.fft2(o.double().numpy()) - np.fft.fft2(g.double().numpy())
        freq += np.abs(d.real).mean() + np.abs(d.imag).mean()
    assert terms["mse"].item() == pytest.approx(mse, rel=1e-5)
    assert terms["freq"].item() == pytest.approx(freq, rel=1e-5)
    assert total.item() == pytest.approx(mse + 0.1 * freq, rel=1e-5)
    assert set(terms) == {"mse", "freq"}
    # weights are configurable; a single tensor is one level
    total, _ = INIKLoss(2.0, 0.5, 0.0)(outs[-1], target)
    want = 2 * ((outs[-1] - target) ** 2).mean().item() + 0.5 * frequency_loss(outs[-1], target).item()
    assert total.item() == pytest.approx(want, rel=1e-5)


def test_loss_gradient_flows():
    target = torch.rand(1, 3, 8, 8)
    out = torch.rand(1, 3, 8, 8, requires_grad=True)
    total, _ = INIKLoss(lpips_weight=0)([out], target)
    total.backward()
    assert out.grad is not None and out.grad.abs().sum() > 0


def test_lpips_wiring_random_backbone():
    torch.manual_seed(4)
    loss = INIKLoss(0.0, 0.0, 1.0, pretrained_backbones=False)
    assert not any(p.requires_grad for p in loss.parameters())
    target = torch.rand(2, 3, 64, 64)
    outs = [torch.rand(2, 3, 32, 32), torch.rand(2, 3, 64, 64, requires_grad=True)]
    total, terms = loss(outs, target)
    assert set(terms) == {"lpips"}
    # inputs go to lpips scaled to [-1, 1], i.e. what lpips itself does with normalize=True
    expected = sum(loss.lpips(o, downsample_to(target, o.shape[-2:]), normalize=True).mean() for o in outs)
    assert total.item() == pytest.approx(expected.item(), rel=1e-5)
    total.backward()
    assert outs[1].grad.abs().sum() > 0
    same, _ = loss([target], target)
    assert same.item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="at least 31x31.*--lpips-weight 0"):
        loss([torch.rand(1, 3, 16, 16)], torch.rand(1, 3, 16, 16))


def test_vgg_term_wiring_random_backbone():
    torch.manual_seed(5)
    feats = VGG19Features(pretrained=False)
    x = torch.rand(1, 3, 32, 32)
    taps = feats(x)
    assert [t.shape[1:] for t in taps] == [(64, 32, 32), (128, 16, 16), (256, 8, 8)]
    assert all((t < 0).any() for t in taps)  # taken before the ReLU
    loss = INIKLoss(0.0, 0.0, 0.0, 0.1, pretrained_backbones=False)
    y = torch.rand(1, 3, 32, 32)
    total, terms = loss([x], y)
    expected = sum(F.l1_loss(a, b) for a, b in zip(loss.vgg(x), loss.vgg(y)))
    assert total.item() == pytest.approx(0.1 * expected.item(), rel=1e-5)


def test_missing_weights_say_which_file_where(empty_hub, monkeypatch):
    import lpips

    def no_construct(*a, **k):
        raise AssertionError("LPIPS must not be constructed (or download) without weights")

    monkeypatch.setattr(lpips, "LPIPS", no_construct)
    with pytest.raises(MissingWeightsError) as e:
        INIKLoss()
    msg = str(e.value)
    assert str(empty_hub / "alexnet-owt-7be5be79.pth") in msg
    assert "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth" in msg
    assert "`inik train --lpips-weight 0`, `inik eval --lpips off`" in msg  # whichever command met it
    with pytest.raises(MissingWeightsError, match="vgg19-dcbb9e9d.pth"):
        VGG19Features()
    with pytest.raises(MissingWeightsError, match="alexnet"):
        LPIPSMetric()
    INIKLoss(lpips_weight=0.0)  # fine without any weights


def test_pretrained_lpips_loads_from_cache(empty_hub):
    # a stand-in weights file at the documented place is picked up, no download
    import torchvision

    empty_hub.mkdir(parents=True)
    torch.save(torchvision.models.alexnet().state_dict(), empty_hub / "alexnet-owt-7be5be79.pth")
    net = build_lpips()
    x = torch.rand(1, 3, 32, 32)
    assert net(x * 2 - 1, x * 2 - 1).item() == pytest.approx(0.0, abs=1e-7)
    assert losses.hub_weights_path("alexnet")[0] == str(empty_hub / "alexnet-owt-7be5be79.pth")


# ---------------------------------------------------------------- metrics


def _pair(shape, seed=0, noise=0.1):
    rng = np.random.default_rng(seed)
    target = rng.uniform(0, 1, shape)
    output = np.clip(target + rng.normal(0, noise, shape), 0, 1)
    return output, target


@pytest.mark.parametrize("shape", [(23, 31, 3), (40, 17, 1), (7, 7, 3)])
def test_psnr_ssim_match_skimage(shape):
    output, target = _pair(shape, seed=shape[0])
    assert abs(psnr(output, target) - peak_signal_noise_ratio(target, output, data_range=1)) < 1e-6
    ref = structural_similarity(target, output, channel_axis=-1, data_range=1)
    assert abs(ssim(output, target) - ref) < 1e-6
    assert abs(ssim(output, target, backend="torch") - ref) < 1e-6


def test_metrics_of_8_and_16_bit_images():
    rng = np.random.default_rng(7)
    for bits in (8, 16):
        maxval = 2**bits - 1
        t = rng.integers(0, maxval + 1, (20, 24, 3)) / maxval
        o = np.clip(t + rng.integers(-3, 4, t.shape) / maxval, 0, 1)
        ref = structural_similarity(t, o, channel_axis=-1, data_range=1)
        assert abs(ssim(o, t, backend="torch") - ref) < 1e-6
        assert abs(psnr(o, t) - peak_signal_noise_ratio(t, o, data_range=1)) < 1e-6


def test_output_clipped_and_tensor_inputs():
    output, target = _pair((16, 16, 3), seed=3)
    raw = output.copy()
    raw[0, 0] = [1.7, -0.4, 0.5]
    clipped = np.clip(raw, 0, 1)
    assert psnr(raw, target) == psnr(clipped, target)
    assert ssim(raw, target) == ssim(clipped, target)
    assert mae(raw, target) == pytest.approx(np.abs(clipped - target).mean())
    t_out = torch.from_numpy(clipped.transpose(2, 0, 1)).float()
    t_tgt = torch.from_numpy(target.transpose(2, 0, 1))[None]
    assert psnr(t_out, t_tgt) == pytest.approx(psnr(t_out.numpy().transpose(1, 2, 0), target), abs=1e-9)
    with pytest.raises(ValueError, match="differs"):
        psnr(output[:8], target)


def test_evaluate_with_lpips_random_backbone():
    output, target = _pair((32, 32, 3), seed=5)
    metric = LPIPSMetric(pretrained_backbone=False)
    r = evaluate(output, target, lpips=metric)
    assert set(r) == {"psnr", "ssim", "mae", "lpips"}
    assert metric(target, target) == pytest.approx(0.0, abs=1e-7)
    as_batch = lambda a: torch.from_numpy(a.transpose(2, 0, 1)).float()[None]  # noqa: E731
    net_value = metric.net(as_batch(output), as_batch(target), normalize=True)
    assert r["lpips"] == pytest.approx(net_value.item(), rel=1e-5)


def test_vgg_features_take_the_image_as_it_is():
    """The authors feed [0, 1] images to VGG-19 without ImageNet normalisation."""
    feats = VGG19Features(pretrained=False)
    x = torch.rand(1, 3, 16, 16)
    want, h = [], x
    for i, layer in enumerate(feats.features):
        h = layer(h)
        if i in (2, 7, 14):
            want.append(h)
    for a, b in zip(feats(x), want):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_radius_bins_pool_pixels_by_radius():
    """Two images: each bin's PSNR is that of the MSE over its pixels of both images; the last
    bin is closed; pixels beyond the edges are not scored; SSIM is the mean SSIM-map value of
    the bin's pixels away from the 3-px border."""
    from skimage.metrics import structural_similarity

    from inik.metrics import RadiusBins
    rng = np.random.default_rng(0)
    bins = RadiusBins([0, 2, 8])
    sse, count, smaps = np.zeros(2), np.zeros(2), [[], []]
    for _ in range(2):
        target = rng.uniform(0, 1, (20, 24, 3))
        output = np.clip(target + rng.normal(0, 0.05, target.shape), 0, 1)
        radius = rng.choice([0.0, 1.5, 2.0, 8.0, 9.0], size=(20, 24))
        bins.add(output, target, radius)
        smap = structural_similarity(target, output, channel_axis=-1, data_range=1.0, full=True)[1].mean(-1)
        for b, mask in enumerate([radius < 2, (radius >= 2) & (radius <= 8)]):
            sse[b] += ((output - target) ** 2).mean(-1)[mask].sum()
            count[b] += mask.sum()
            smaps[b].extend(smap[3:-3, 3:-3][mask[3:-3, 3:-3]])
    rows = bins.result()
    assert [r["bin"] for r in rows] == ["0-2", "2-8"]
    for b, row in enumerate(rows):
        assert row["pixels"] == count[b]
        assert row["psnr"] == pytest.approx(-10 * np.log10(sse[b] / count[b]))
        assert row["ssim"] == pytest.approx(np.mean(smaps[b]))
    empty = RadiusBins([10, 20])
    empty.add(target, target, np.zeros((20, 24)))
    assert empty.result()[0]["pixels"] == 0 and empty.result()[0]["psnr"] is None
    for bad in ([1], [2, 1], [-1, 3], [0, float("nan")]):
        with pytest.raises(ValueError, match="radius bin edges"):
            RadiusBins(bad)


def test_radius_bins_count_a_failed_image_nowhere(monkeypatch):
    """An image whose SSIM fails (e.g. out of memory) adds nothing to any bin."""
    import skimage.metrics

    from inik.metrics import RadiusBins
    bins = RadiusBins([0, 4])
    image = np.random.default_rng(1).uniform(0, 1, (16, 16, 3))

    def fail(*args, **kw):
        raise MemoryError

    monkeypatch.setattr(skimage.metrics, "structural_similarity", fail)
    with pytest.raises(MemoryError):
        bins.add(image, image, np.zeros((16, 16)))
    assert bins.result()[0]["pixels"] == 0 and bins.result()[0]["psnr"] is None

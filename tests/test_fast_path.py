"""Numerics guards of the fast path (channels_last, fastest IFM backend, IFM at the
finest level only, bf16 autocast) against the authors' way of running the model."""

import math

import pytest
import torch

import inik
from inik.data.synthetic import DefocusSynthesizer, SyntheticConfig

# On a GPU the same guards run on CUDA tensors too (fast path = the GPU's IFM backend).
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module", params=DEVICES)
def device(request):
    if request.param == "cuda":  # fp32 means fp32: no TF32 convolutions or matmuls in these guards
        conv, mm = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        yield torch.device("cuda")
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, mm
    else:
        yield torch.device("cpu")


@pytest.fixture(scope="module")
def models(device):
    torch.manual_seed(0)
    baseline = inik.INIKNet(ifm_backend="unfused").eval()
    fast = inik.INIKNet().eval()
    fast.load_state_dict(baseline.state_dict())
    return baseline.to(device), fast.to(device, memory_format=torch.channels_last)


@pytest.fixture(scope="module")
def photo(device):
    return DefocusSynthesizer(None, SyntheticConfig(size=96, max_radius=8)).sample(5).blurry[None].to(device)


def test_fast_fp32_equals_baseline(models, photo):
    baseline, fast = models
    with torch.no_grad():
        want = baseline.forward_levels(photo.contiguous())[-1]
        got = fast(photo.contiguous(memory_format=torch.channels_last))
    assert (got - want).abs().max() < 1e-5


def test_half_autocast_scores_40db_against_fp32(models, photo):
    """bf16 autocast (CPU and GPU) and fp16 autocast (GPU) against fp32."""
    _, fast = models
    x = photo.contiguous(memory_format=torch.channels_last)
    dtypes = [torch.bfloat16] + ([torch.float16] if photo.device.type == "cuda" else [])
    with torch.no_grad():
        ref = fast(x).clamp(0, 1)
        for dtype in dtypes:
            with torch.autocast(photo.device.type, dtype=dtype):
                half = fast(x).float().clamp(0, 1)
            psnr = 10 * math.log10(1 / ((half - ref) ** 2).mean().item())
            assert psnr >= 40, (dtype, psnr)


def test_training_step_fast_equals_baseline_gradients(models, photo):
    baseline, fast = models
    target = torch.rand_like(photo)
    grads = []
    for model, x in ((baseline, photo.contiguous()), (fast, photo.contiguous(memory_format=torch.channels_last))):
        model.zero_grad()
        loss = sum(torch.nn.functional.mse_loss(o, torch.nn.functional.interpolate(
            target, size=o.shape[-2:], mode="bilinear", align_corners=False)) for o in model.forward_levels(x))
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-3, atol=1e-6)


def test_channels_last_model_keeps_layout_and_autocast_dtype():
    """Every 640-px-class activation of the recurrent branches stays channels_last and,
    under autocast, bf16: a layout or dtype switch anywhere costs a full-size copy per
    layer (an NCHW zero state once made every cell convert back and forth)."""
    from inik.models.recurrent import ChannelLayerNorm, ConvLSTMCell

    torch.manual_seed(0)
    cell = ConvLSTMCell(8, 8).to(memory_format=torch.channels_last)
    norm = ChannelLayerNorm(8)
    x = torch.randn(1, 8, 12, 10).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        n = norm(x.bfloat16())
        h, c = cell(n, None)
        h2, c2 = cell(n, (h, c))
    assert n.dtype == torch.bfloat16
    for t in (n, h, c, h2, c2):
        assert t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
    # the zero state is zeros (the explicit NCHW state takes PyTorch's ops, the default
    # channels_last one the fused CPU op: they agree to float32 rounding)
    with torch.no_grad():
        ref_h, ref_c = cell(x, (torch.zeros(1, 8, 12, 10), torch.zeros(1, 8, 12, 10)))
        h, c = cell(x, None)
    torch.testing.assert_close(h, ref_h, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c, ref_c, rtol=1e-5, atol=1e-6)


def test_model_runs_channels_last_whatever_the_callers_layout(monkeypatch):
    """model(y) computes in channels_last (the layout the fast kernels take) for a plain
    NCHW y too, and hands the output back in the caller's layout, with the same numbers."""
    from inik.ops import conv

    torch.manual_seed(0)
    model = inik.INIKNet(width=16).eval()
    y = torch.rand(1, 3, 37, 45)
    seen = []
    real = conv.conv3x3_reflect
    monkeypatch.setattr(conv, "conv3x3_reflect", lambda x, *a, **k: seen.append(conv.is_channels_last(x))
                        or real(x, *a, **k))
    monkeypatch.setattr(inik.models.unet, "conv3x3_reflect", conv.conv3x3_reflect)
    with torch.no_grad():
        plain = model(y)
        assert seen and all(seen)
        cl = model(y.contiguous(memory_format=torch.channels_last))
    assert plain.is_contiguous() and cl.is_contiguous(memory_format=torch.channels_last) and not cl.is_contiguous()
    torch.testing.assert_close(plain, cl, rtol=0, atol=0)

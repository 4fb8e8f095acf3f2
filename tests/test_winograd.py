"""The Winograd F(4x4, 3x3) and F(6x6, 3x3) convolutions (inik._C, CPU) against a
float64 direct convolution: padding modes, odd sizes, channel tails, bias,
residual, ReLU, bfloat16, batches; where the model uses them; torch.compile; bad input.

Like the other extension tests, these fail when inik._C is missing unless
INIK_NO_EXTENSION=1 says it was left out on purpose.
"""


import pytest
import torch
import torch.nn.functional as F

import inik
from inik.ops import _ext, winograd

if not _ext.is_built() and _ext.left_out_on_purpose():
    pytest.skip("INIK_NO_EXTENSION=1: the extension was not built on purpose", allow_module_level=True)

CL = torch.channels_last


def direct(x, w, b=None, res=None, mode="zeros", relu=False):
    """The same convolution in float64, from the same (rounded) inputs."""
    xp = F.pad(x.double(), (1, 1, 1, 1), mode="reflect" if mode == "reflect" else "constant")
    y = F.conv2d(xp, w.double(), None if b is None else b.double())
    if res is not None:
        y = y + res.double()
    return y.clamp_min(0) if relu else y


def make(b, ci, co, h, w, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, ci, h, w, generator=gen).to(dtype).contiguous(memory_format=CL)
    weight = torch.randn(co, ci, 3, 3, generator=gen) / (3 * ci ** 0.5)
    bias = torch.randn(co, generator=gen)
    res = torch.randn(b, co, h, w, generator=gen).to(dtype).contiguous(memory_format=CL)
    return x, weight, bias, res


def tolerance(x, w, tile=4):
    """Winograd's float32 rounding, bounded by the sum of absolute products: 2e-6 of it
    for F(4x4, 3x3), 4e-6 for F(6x6, 3x3) (a direct float32 convolution errs by ~1e-7
    of it; the transforms add up to ~10x, F(6x6)'s larger ones about twice that, and
    the generic kernel, without FMA on SSE, up to ~20x)."""
    scale = 2e-6 if tile == 4 else 4e-6
    return scale * F.conv2d(F.pad(x.double().abs(), (1, 1, 1, 1)), w.double().abs()).amax().item() + 1e-6


# (B, Ci, Co, H, W): tile-aligned for F(4x4) and for F(6x6); odd sizes with partial tiles
# in both directions; more tiles per row than one work item (6 tiles: 24 and 36 columns);
# channel tails (5, 3, 20, 80 are no multiple of 16); Ci > Co and the smallest
# reflectable images
SHAPES = [(1, 16, 16, 4, 4), (1, 16, 16, 12, 6), (2, 64, 64, 13, 22), (1, 32, 80, 9, 31), (1, 5, 3, 6, 11),
          (1, 128, 20, 17, 5), (1, 64, 32, 2, 3), (3, 16, 16, 2, 2), (1, 16, 24, 15, 41)]


ISAS = _ext.cpu_isas() or ["generic"]  # the kernels this CPU can run (INIK_CPU_ISA)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("tile", winograd.TILES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", ["zeros", "reflect"])
def test_matches_direct_convolution(shape, mode, tile, isa, monkeypatch):
    """Every kernel (AVX-512: 16 lanes x 4 vectors; AVX2: 8 x 2; generic: the build's),
    both tile sizes."""
    monkeypatch.setenv("INIK_CPU_ISA", isa)
    assert winograd.isa() == isa
    x, w, b, res = make(*shape)
    for bias, residual, relu in ((None, None, False), (b, None, True), (None, res, False), (b, res, True)):
        got = winograd.conv3x3(x, w, bias, residual, padding_mode=mode, relu=relu, tile=tile)
        want = direct(x, w, bias, residual, mode, relu)
        assert got.dtype == torch.float32 and got.shape == want.shape
        assert got.is_contiguous(memory_format=CL)
        err = (got.double() - want).abs().max().item()
        assert err <= tolerance(x, w, tile), (bias is not None, residual is not None, relu, err)


@pytest.mark.parametrize("tile, factor", [(4, 20), (6, 40)])
def test_error_is_winograd_sized_not_larger(tile, factor):
    """The bound above is not loose: the measured error is within 10x-20x of a direct
    float32 convolution's for F(4x4, 3x3), twice that for F(6x6, 3x3), as their
    transforms' sizes predict, and weights 1e-3 off are caught."""
    x, w, _, _ = make(1, 64, 64, 24, 24, seed=3)
    want = direct(x, w)
    err = (winograd.conv3x3(x, w, tile=tile).double() - want).abs().max().item()
    err_direct = (F.conv2d(x, w, padding=1).double() - want).abs().max().item()
    assert err <= factor * err_direct
    wrong = winograd.conv3x3(x, w * (1 + 1e-3), tile=tile)
    assert (wrong.double() - want).abs().max().item() > tolerance(x, w, tile)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("tile", winograd.TILES)
def test_bfloat16_input_with_float32_gemm_rounds_once(isa, tile, monkeypatch):
    monkeypatch.setenv("INIK_CPU_ISA", isa)
    x, w, b, res = make(2, 32, 48, 9, 14, dtype=torch.bfloat16)
    got = winograd.conv3x3(x, w, b, res, padding_mode="reflect", relu=True, tile=tile, bf16_gemm=False)
    assert got.dtype == torch.bfloat16 and got.is_contiguous(memory_format=CL)
    want = direct(x, w, b, res, "reflect", True)
    # one rounding of the float32 result to bfloat16 (2^-9 relative) plus the float32 error
    bound = want.abs() * 2 ** -8 + tolerance(x.float(), w, tile)
    assert bool(((got.double() - want).abs() <= bound).all())


# The kernel's transforms as matrices (csrc/winograd_cpu.cpp, Tile<4> and Tile<6>): B^T,
# A^T and G, for a float64 Winograd convolution that rounds where the bfloat16 GEMM does.
BT = {4: [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
          [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
      6: [[1, 0, -5.25, 0, 5.25, 0, -1, 0], [0, 1, 1, -4.25, -4.25, 1, 1, 0], [0, -1, 1, 4.25, -4.25, -1, 1, 0],
          [0, 0.5, 0.25, -2.5, -1.25, 2, 1, 0], [0, -0.5, 0.25, 2.5, -1.25, -2, 1, 0],
          [0, 2, 4, -2.5, -5, 0.5, 1, 0], [0, -2, 4, 2.5, -5, -0.5, 1, 0], [0, -1, 0, 5.25, 0, -5.25, 0, 1]]}
AT = {4: [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]],
      6: [[1, 1, 1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0.5, -0.5, 0], [0, 1, 1, 4, 4, 0.25, 0.25, 0],
          [0, 1, -1, 8, -8, 0.125, -0.125, 0], [0, 1, 1, 16, 16, 0.0625, 0.0625, 0],
          [0, 1, -1, 32, -32, 0.03125, -0.03125, 1]]}
G = {4: [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
         [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
     6: [[1, 0, 0], [-2 / 9, -2 / 9, -2 / 9], [-2 / 9, 2 / 9, -2 / 9], [1 / 90, 1 / 45, 2 / 45],
         [1 / 90, -1 / 45, 2 / 45], [32 / 45, 16 / 45, 8 / 45], [32 / 45, -16 / 45, 8 / 45], [0, 0, 1]]}


def _padded_index(n, count, reflect):
    """The kernel's rows (or columns) -1 .. count-2 of the padded input: source index and
    whether it holds data (reflect mirrors -1 and n, then clamps: beyond that only
    outputs past the image read them, but their rounding in V still counts)."""
    q = torch.arange(-1, count - 1)
    valid = (q >= 0) & (q < n)
    if reflect:
        q = torch.where(q < 0, -q, torch.where(q >= n, 2 * n - 2 - q, q))
        valid = torch.ones_like(valid)
    return q.clamp(0, n - 1), valid


def winograd_float64(x, w, tile, mode, round_bf16=True):
    """F(tile x tile, 3x3) in float64; with round_bf16 the transformed input V and
    weights U are rounded to bfloat16 (U through float32, as the kernel stores it)."""
    m, a = tile, tile + 2
    bt, at, g = (torch.tensor(t[tile], dtype=torch.float64) for t in (BT, AT, G))
    b, _, h, wd = x.shape
    th, tw = -(-h // m), -(-wd // m)
    ri, rv = _padded_index(h, th * m + 2, mode == "reflect")
    ci, cv = _padded_index(wd, tw * m + 2, mode == "reflect")
    d = (x.double()[:, :, ri][:, :, :, ci] * (rv[:, None] & cv[None, :])).unfold(2, a, m).unfold(3, a, m)
    v = torch.einsum("ij,bctwjk,lk->bctwil", bt, d, bt)
    u = torch.einsum("ij,ocjk,lk->ocil", g, w.double(), g)
    if round_bf16:
        v, u = v.bfloat16().double(), u.float().bfloat16().double()
    y = torch.einsum("ij,botwjk,lk->botwil", at, torch.einsum("bctwil,ocil->botwil", v, u), at)
    return y.permute(0, 1, 2, 4, 3, 5).reshape(b, -1, th * m, tw * m)[:, :, :h, :wd]


@pytest.mark.parametrize("tile", winograd.TILES)
@pytest.mark.parametrize("mode", ["zeros", "reflect"])
def test_float64_winograd_is_the_convolution(tile, mode):
    """The matrices above are the kernel's transforms: unrounded, they give the convolution."""
    x, w, _, _ = make(1, 5, 3, 13, 8)
    torch.testing.assert_close(winograd_float64(x, w, tile, mode, round_bf16=False), direct(x, w, mode=mode),
                               rtol=0, atol=1e-12)


needs_bf16_gemm = pytest.mark.skipif("avx512_bf16" not in ISAS, reason="this CPU has no AVX512-BF16")


@needs_bf16_gemm
@pytest.mark.parametrize("tile", winograd.TILES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", ["zeros", "reflect"])
def test_bfloat16_gemm_rounds_its_operands_and_output_only(shape, mode, tile, monkeypatch):
    """The bfloat16 GEMM (AVX512-BF16, the default for bfloat16 input there) equals a
    float64 Winograd convolution whose V and U are rounded to bfloat16, up to the one
    rounding of the output (its products summed in float32)."""
    monkeypatch.setenv("INIK_CPU_ISA", "avx512_bf16")
    x, w, b, res = make(*shape, dtype=torch.bfloat16)
    core = winograd_float64(x, w, tile, mode)
    for bias, residual, relu in ((None, None, False), (b, res, True)):
        got = winograd.conv3x3(x, w, bias, residual, padding_mode=mode, relu=relu, tile=tile)
        want = core + (0 if bias is None else bias.double()[:, None, None])
        want = want + (0 if residual is None else residual.double())
        want = want.clamp_min(0) if relu else want
        assert got.dtype == torch.bfloat16 and got.is_contiguous(memory_format=CL)
        bound = want.abs() * 2 ** -8 + 1e-5 * want.abs().max().item()
        assert bool(((got.double() - want).abs() <= bound).all()), (bias is not None, (got.double() - want).abs().max())


@needs_bf16_gemm
@pytest.mark.parametrize("tile, rms", [(4, 0.035), (6, 0.07)])
def test_bfloat16_gemm_error_is_bounded_and_switchable(tile, rms, monkeypatch):
    """Its error on random data: a relative RMS of about 2.5% (F(4x4)) and 5% (F(6x6)),
    against 0.17% for the float32 GEMM. bf16_gemm=False gives the float32 GEMM, bit
    for bit what the avx512 kernel computes; float32 input ignores the switch."""
    x, w, _, _ = make(1, 64, 64, 24, 30, dtype=torch.bfloat16)
    want = direct(x, w)
    scale = want.pow(2).mean().sqrt().item()
    monkeypatch.setenv("INIK_CPU_ISA", "avx512_bf16")
    fast = winograd.conv3x3(x, w, tile=tile)
    exact_gemm = winograd.conv3x3(x, w, tile=tile, bf16_gemm=False)
    assert (fast.double() - want).pow(2).mean().sqrt().item() <= rms * scale
    assert (exact_gemm.double() - want).pow(2).mean().sqrt().item() <= 0.003 * scale
    assert torch.equal(winograd.conv3x3(x.float(), w, tile=tile), winograd.conv3x3(x.float(), w, tile=tile,
                                                                                      bf16_gemm=False))
    monkeypatch.setenv("INIK_CPU_ISA", "avx512")
    assert torch.equal(winograd.conv3x3(x, w, tile=tile), exact_gemm)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("chunk", [0, 1, 7])
@pytest.mark.parametrize("shape", SHAPES + [(2, 3, 5, 1, 9), (1, 17, 9, 7, 1)])
@pytest.mark.parametrize("mode", ["zeros", "reflect"])
def test_weight_gradient_op_is_the_convolutions(mode, shape, chunk, isa):
    """conv3x3_winograd_weight_grad: dL/dw of the padded convolution for a given dL/dy
    against float64 autograd, on partial tiles, channel tails, one-pixel rows and columns,
    tiles in chunks of any size (one, odd, automatic) and every kernel the CPU can run."""
    b, ci, co, h, w = shape
    if mode == "reflect" and min(h, w) < 2:
        pytest.skip("reflect padding needs H and W of at least 2")
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(b, ci, h, w, generator=gen).contiguous(memory_format=CL)
    g = torch.randn(b, co, h, w, generator=gen).contiguous(memory_format=CL)
    wd = torch.zeros(co, ci, 3, 3, dtype=torch.float64, requires_grad=True)
    (direct(x, wd, mode=mode) * g.double()).sum().backward()
    got = torch.ops.inik.conv3x3_winograd_weight_grad(x, g, mode, isa, chunk)
    assert got.shape == (co, ci, 3, 3) and got.dtype == torch.float32 and got.is_contiguous()
    # F(4x4)'s transforms round about as much as oneDNN's long float32 sums over pixels
    assert (got.double() - wd.grad).abs().max().item() <= 2e-5 * wd.grad.abs().max().item()


def test_weight_gradient_op_checks_and_opcheck():
    x, _, _, _ = make(2, 16, 24, 7, 9)
    g = torch.randn(2, 24, 7, 9).contiguous(memory_format=CL)
    op = torch.ops.inik.conv3x3_winograd_weight_grad
    torch.library.opcheck(op.default, (x, g, "reflect"))
    torch.library.opcheck(op.default, (x, g, "zeros", "", 3))
    assert op(x[:0], g[:0], "zeros").abs().max().item() == 0  # no pixels: a zero gradient
    cases = [((x.contiguous(), g, "zeros"), "x must be channels_last"),
             ((x, g.double().contiguous(memory_format=CL), "zeros"), "grad must be a float32 CPU tensor"),
             ((x, g[:1], "zeros"), "grad must be \\(2, Co, 7, 9\\)"),
             ((x, g, "circular"), "padding_mode must be 'zeros' or 'reflect'"),
             ((x[..., :1, :].contiguous(memory_format=CL), g[..., :1, :].contiguous(memory_format=CL), "reflect"),
              "reflect padding needs H and W of at least 2"),
             ((x, g, "zeros", "", -1), "chunk must be >= 0")]
    for args, message in cases:
        with pytest.raises(RuntimeError, match=message):
            op(*args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(dtype):
    """Schema, fake (meta) kernel against the real one and torch.compile's view of
    torch.ops.inik.conv3x3_winograd, with every optional argument."""
    x, w, b, res = make(1, 16, 24, 7, 9, dtype=dtype)
    for args in ((x, w, None, None, "zeros", False), (x, w, b, res, "reflect", True, 6, False),
                 (x, w, b, None, "zeros", False, 4, True)):
        torch.library.opcheck(torch.ops.inik.conv3x3_winograd.default, args)


def test_any_input_layout_and_autocast_dtype():
    x, w, _, _ = make(1, 16, 16, 7, 9)
    want = winograd.conv3x3(x, w)
    torch.testing.assert_close(winograd.conv3x3(x.contiguous(), w), want, rtol=0, atol=0)
    # a channels_last model has channels_last weights; a transposed view is no different
    torch.testing.assert_close(winograd.conv3x3(x, w.contiguous(memory_format=CL)), want, rtol=0, atol=0)
    wt = w.transpose(0, 1).contiguous().transpose(0, 1)
    torch.testing.assert_close(winograd.conv3x3(x, wt), want, rtol=0, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = winograd.conv3x3(x, w)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half, winograd.conv3x3(x.bfloat16(), w), rtol=0, atol=0)


def test_empty_batch():
    x, w, _, _ = make(1, 16, 8, 5, 5)
    assert winograd.conv3x3(x[:0], w).shape == (0, 8, 5, 5)


def test_bad_input_names_the_argument():
    x, w, b, res = make(1, 16, 16, 6, 6)
    op = torch.ops.inik.conv3x3_winograd
    with pytest.raises(RuntimeError, match="weight must be \\(Co, 16, 3, 3\\)"):
        op(x, w[:, :8], None, None, "zeros", False)
    with pytest.raises(RuntimeError, match="x must be channels_last"):
        op(x.contiguous(), w, None, None, "zeros", False)
    with pytest.raises(RuntimeError, match="x must be float32 or bfloat16"):
        op(x.double().contiguous(memory_format=CL), w, None, None, "zeros", False)
    with pytest.raises(RuntimeError, match="padding_mode must be 'zeros' or 'reflect'"):
        op(x, w, None, None, "circular", False)
    with pytest.raises(RuntimeError, match="bias must be a CPU tensor of shape \\(16\\)"):
        op(x, w, b[:3], None, "zeros", False)
    with pytest.raises(RuntimeError, match="residual must be"):
        op(x, w, None, res[..., :5], "zeros", False)
    with pytest.raises(RuntimeError, match="reflect padding needs H and W of at least 2"):
        op(x[..., :1, :], w, None, None, "reflect", False)
    with pytest.raises(RuntimeError, match="tile must be 0 \\(automatic\\), 4 or 6, got 5"):
        op(x, w, None, None, "zeros", False, 5)
    with pytest.raises(ValueError, match="tile must be 0 \\(automatic\\) or one of \\(4, 6\\), got 8"):
        winograd.conv3x3(x, w, tile=8)
    with pytest.raises(ValueError, match="padding_mode must be one of"):
        winograd.conv3x3(x, w, padding_mode="replicate")
    with pytest.raises(TypeError, match="x must be float32 or bfloat16"):
        winograd.conv3x3(x.double(), w)


def test_wrapper_names_a_tensor_of_the_wrong_rank():
    """conv3x3 lays x and residual out channels_last: a 3-D one was refused by that
    layout change ("required rank 4 tensor to use channels_last format")."""
    x, w, _, res = make(1, 16, 8, 6, 6)
    with torch.no_grad():
        with pytest.raises(ValueError, match=r"conv3x3: x must be 4-D \(B, C, H, W\), got shape \(16, 6, 6\)"):
            winograd.conv3x3(x[0], w)
        with pytest.raises(ValueError, match=r"conv3x3: residual must be 4-D \(B, C, H, W\), got shape \(8, 6, 6\)"):
            winograd.conv3x3(x, w, residual=res[0])


def test_automatic_tile_size(monkeypatch):
    """tile=0 takes F(6x6, 3x3) from 128x128 pixels up where it needs fewer multiplies,
    F(4x4, 3x3) below; INIK_WINOGRAD_TILE overrides the choice and is checked."""
    cases = {(128, 128): 6, (160, 112): 6, (5000, 4): 4, (160, 96): 4, (96, 96): 4, (500, 4): 4, (127, 130): 6}
    for (h, w), tile in cases.items():
        x, wt, _, _ = make(1, 16, 16, h, w)
        auto = winograd.conv3x3(x, wt, padding_mode="reflect")
        assert torch.equal(auto, winograd.conv3x3(x, wt, padding_mode="reflect", tile=tile)), (h, w)
        assert not torch.equal(auto, winograd.conv3x3(x, wt, padding_mode="reflect", tile=10 - tile)), (h, w)
        assert winograd.tile_for(h, w) == tile
    x, wt, _, _ = make(1, 16, 16, 20, 20)
    for tile in winograd.TILES:
        monkeypatch.setenv("INIK_WINOGRAD_TILE", str(tile))
        assert torch.equal(winograd.conv3x3(x, wt), winograd.conv3x3(x, wt, tile=tile))
        assert winograd.tile_for(20, 20) == tile
    monkeypatch.setenv("INIK_WINOGRAD_TILE", "5")
    with pytest.raises(ValueError, match="INIK_WINOGRAD_TILE=5: expected 4 or 6"):
        winograd.conv3x3(x, wt)


def test_cpu_isa_override_is_checked(monkeypatch):
    monkeypatch.setenv("INIK_CPU_ISA", "sse9")
    with pytest.raises(ValueError, match="INIK_CPU_ISA=sse9: expected avx512_bf16, avx512, avx2 or generic"):
        winograd.isa()
    if ISAS[-1] != "avx512_bf16":  # asking for more than the CPU has
        monkeypatch.setenv("INIK_CPU_ISA", "avx512_bf16")
        with pytest.raises(RuntimeError, match="supports at most"):
            winograd.isa()


def test_enabled_follows_the_environment(monkeypatch):
    monkeypatch.setenv(winograd.ENV, "1")
    assert winograd.enabled()
    monkeypatch.setenv(winograd.ENV, "0")
    assert not winograd.enabled()
    monkeypatch.setenv(winograd.ENV, "sometimes")
    with pytest.raises(ValueError, match="INIK_WINOGRAD=sometimes: expected auto"):
        winograd.enabled()


def test_eligibility(monkeypatch):
    monkeypatch.setenv(winograd.ENV, "1")
    x, w, _, _ = make(1, 16, 16, 6, 6)
    with torch.no_grad():
        assert winograd.eligible(x, w)
        assert not winograd.eligible(x.contiguous(), w)  # NCHW
        assert not winograd.eligible(x, w, stride=2)
        assert not winograd.eligible(x[:, :8], w[:, :8])  # too few channels to pay
        assert not winograd.eligible(x.double().contiguous(memory_format=CL), w)
        with torch.autocast("cpu", dtype=torch.bfloat16):  # float32 input, bf16 autocast: no silent cast
            assert not winograd.eligible(x, w)
            assert winograd.eligible(x.bfloat16(), w)
    assert not winograd.eligible(x, w)  # autograd on
    monkeypatch.setenv(winograd.ENV, "0")
    with torch.no_grad():
        assert not winograd.eligible(x, w)


def _fast_model(width=16):
    torch.manual_seed(0)
    return inik.INIKNet(width=width, scales=4, atoms=3).eval().to(memory_format=CL)


def test_model_runs_its_convolutions_as_winograd(monkeypatch):
    """With INIK_WINOGRAD=1 the channels_last CPU forward calls the op (and ResBlocks fuse
    ReLU and the residual add into it); with 0 it never does; both agree to 1e-5."""
    calls = []
    original = torch.ops.inik.conv3x3_winograd

    class Spy:
        def __call__(self, *args):
            calls.append((args[3] is not None, args[5]))
            return original(*args)

    monkeypatch.setattr(torch.ops.inik, "conv3x3_winograd", Spy())
    model = _fast_model()
    y = torch.rand(1, 3, 48, 40).contiguous(memory_format=CL)
    outs = {}
    for env in ("0", "1"):
        monkeypatch.setenv(winograd.ENV, env)
        calls.clear()
        with torch.no_grad():
            outs[env] = model(y)
        if env == "0":
            assert not calls
        else:
            assert (True, False) in calls and (False, True) in calls  # conv2 + residual, conv1 + ReLU
    assert (outs["1"] - outs["0"]).abs().max() < 1e-5


@pytest.mark.parametrize("env", ["1", "auto"])
def test_model_with_winograd_compiles_fullgraph(monkeypatch, env):
    monkeypatch.setenv(winograd.ENV, env)
    model = _fast_model(width=16)
    y = torch.rand(1, 3, 32, 32).contiguous(memory_format=CL)
    torch._dynamo.reset()
    with torch.no_grad():
        eager = model(y)
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")(y)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("weight_grad", ["winograd", "onednn", "onednn-nchw"])
@pytest.mark.parametrize("tile", winograd.TILES)
@pytest.mark.parametrize("shape", [(2, 16, 16, 9, 13), (1, 64, 32, 20, 17), (1, 32, 64, 5, 4), (1, 16, 16, 2, 3)])
def test_training_convolution_gradients_match_onednn(shape, tile, weight_grad, monkeypatch):
    """float32 CPU training: forward and input gradient by Winograd (either tile size),
    weight gradient by the Winograd weight-gradient op or by oneDNN (channels_last, or on
    NCHW copies as without AVX-512); all three against the plain path (INIK_WINOGRAD=0)."""
    from inik.models.unet import ReflectConv2d

    monkeypatch.setattr(winograd, "_nchw_weight_grad", lambda isa: weight_grad == "onednn-nchw")
    monkeypatch.setenv(winograd.WEIGHT_GRAD_ENV, weight_grad.split("-")[0])
    calls = []
    op = torch.ops.inik.conv3x3_winograd_weight_grad
    monkeypatch.setattr(torch.ops.inik, "conv3x3_winograd_weight_grad", lambda *a: calls.append(1) or op(*a),
                        raising=False)
    monkeypatch.setenv("INIK_WINOGRAD_TILE", str(tile))
    b, ci, co, h, w = shape
    torch.manual_seed(0)
    conv = ReflectConv2d(ci, co).to(memory_format=CL)
    x = torch.randn(b, ci, h, w).contiguous(memory_format=CL).requires_grad_()
    g = torch.randn(b, co, h, w)
    got = {}
    for env in ("0", "1"):
        monkeypatch.setenv(winograd.ENV, env)
        x.grad = conv.weight.grad = None
        y = conv(x)
        assert ("conv3x3_winograd" in type(y.grad_fn).__name__) == (env == "1")
        (y * g).sum().backward()
        got[env] = (y.detach(), x.grad, conv.weight.grad)
    # dx: a Winograd convolution of dy (the same bound), border rows and columns folded
    # back onto the ones they reflect (two such terms: twice the bound)
    scale = {"y": tolerance(x.detach(), conv.weight.detach(), tile),
             "dx": 2 * tolerance(g, conv.weight.detach().flip((2, 3)).transpose(0, 1), tile)}
    for name, a, b_ in zip(("y", "dx", "dw"), got["0"], got["1"]):
        atol = scale.get(name, 1e-5 * a.abs().max().item())
        assert (a - b_).abs().max().item() <= atol, name
    assert bool(calls) == (weight_grad == "winograd")


@pytest.mark.parametrize("mode", ["zeros", "reflect"])
@pytest.mark.parametrize("options", ["plain", "bias", "residual", "relu", "all"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_op_gradients_match_float64_autograd(mode, options, dtype):
    """The op's backward (every input: x, weight, bias, residual; ReLU, both paddings)
    against autograd through the float64 convolution of the same rounded inputs."""
    x, w, b, res = make(2, 16, 24, 7, 10, seed=3, dtype=dtype)
    b = b if options in ("bias", "all") else None
    res = res if options in ("residual", "all") else None
    relu = options in ("relu", "all")
    leaves = [t.detach().requires_grad_() if t is not None else None for t in (x, w, b, res)]
    g = torch.randn(2, 24, 7, 10, generator=torch.Generator().manual_seed(4))
    y = winograd.conv3x3(*leaves, padding_mode=mode, relu=relu)
    (y.float() * g).sum().backward()
    ref = [t.detach().double().requires_grad_() if t is not None else None for t in (x, w, b, res)]
    # ReLU's mask from the op's own output: where rounding flips the sign of a value near
    # 0, the two masks differ (the kink, not the backward)
    mask = (y.detach() > 0).double() if relu else 1.0
    (direct(*ref, mode=mode) * mask * g.double()).sum().backward()
    for name, got, want in zip(("x", "weight", "bias", "residual"), leaves, ref):
        if got is None:
            continue
        assert got.grad.dtype == got.dtype, name
        err = (got.grad.double() - want.grad).abs().max().item()
        scale = want.grad.abs().max().item()
        assert err <= (2 ** -7 if dtype == torch.bfloat16 else 1e-5) * scale, (name, err, scale)


def test_op_second_derivative_through_autograd():
    """A backward with create_graph=True is itself differentiable (a gradient penalty):
    d/dw of |dL/dx|^2 against float64 autograd."""
    x, w, _, _ = make(1, 16, 16, 6, 7, seed=5)
    x.requires_grad_()
    w = w.requires_grad_()
    gx, = torch.autograd.grad(winograd.conv3x3(x, w, padding_mode="reflect").square().sum(), x, create_graph=True)
    gw, = torch.autograd.grad(gx.square().sum(), w)
    xd, wd = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    gxd, = torch.autograd.grad(direct(xd, wd, mode="reflect").square().sum(), xd, create_graph=True)
    gwd, = torch.autograd.grad(gxd.square().sum(), wd)
    assert (gw.double() - gwd).abs().max().item() <= 1e-4 * gwd.abs().max().item()


def test_training_uses_winograd_only_where_it_can(monkeypatch):
    monkeypatch.setenv(winograd.ENV, "1")
    x, w, _, _ = make(1, 16, 16, 6, 6)
    w.requires_grad_()
    assert winograd.trainable(x, w)
    assert winograd.trainable(x.bfloat16(), w)  # a bf16 activation, a float32 weight
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not winograd.trainable(x, w)  # autocast would compute in bf16
        assert winograd.trainable(x.bfloat16(), w)
    assert not winograd.trainable(x.double().contiguous(memory_format=CL), w.double())
    with torch.no_grad():
        assert not winograd.trainable(x, w)  # inference: eligible() instead
    assert not winograd.trainable(x.contiguous(), w)
    monkeypatch.setenv(winograd.ENV, "0")
    assert not winograd.trainable(x, w)


def test_model_training_step_with_winograd_matches(monkeypatch):
    """A whole channels_last model's loss gradient, Winograd on and off."""
    model = _fast_model().train()
    y = torch.rand(1, 3, 32, 48).contiguous(memory_format=CL)
    grads = {}
    for env in ("0", "1"):
        monkeypatch.setenv(winograd.ENV, env)
        model.zero_grad()
        sum(o.square().mean() for o in model.forward_levels(y)).backward()
        grads[env] = torch.cat([p.grad.flatten() for p in model.parameters()])
    torch.testing.assert_close(grads["1"], grads["0"], rtol=1e-3, atol=1e-6)


def test_training_under_bf16_autocast_matches_onednn(monkeypatch):
    """Under bf16 autocast: the output and dx in x's dtype, dw in the weight's (float32),
    all within bf16 rounding of oneDNN's autocast convolution."""
    from inik.models.unet import ReflectConv2d

    torch.manual_seed(0)
    conv = ReflectConv2d(32, 32).to(memory_format=CL)
    x = torch.randn(2, 32, 11, 14).bfloat16().contiguous(memory_format=CL).requires_grad_()
    g = torch.randn(2, 32, 11, 14).bfloat16()
    got = {}
    for env in ("0", "1"):
        monkeypatch.setenv(winograd.ENV, env)
        x.grad = conv.weight.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv(x)
        assert ("conv3x3_winograd" in type(y.grad_fn).__name__) == (env == "1")
        (y.float() * g.float()).sum().backward()
        assert y.dtype == x.grad.dtype == torch.bfloat16 and conv.weight.grad.dtype == torch.float32
        if env == "1":  # training keeps the float32 GEMM
            assert torch.equal(y, winograd.conv3x3(x.detach(), conv.weight.detach(), padding_mode="reflect",
                                                   bf16_gemm=False))
        got[env] = (y.detach().float(), x.grad.float(), conv.weight.grad)
    for name, a, b_ in zip(("y", "dx", "dw"), got["0"], got["1"]):
        assert (a - b_).abs().max().item() <= 2 ** -6 * a.abs().max().item(), name

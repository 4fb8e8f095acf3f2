"""Second design of the fused Triton IFM (``backend="triton2"``); docs/ops.md.

Same operator and index tables as :mod:`inik.kernels.ifm_triton` (taps sorted
by ring, scales by support, largest first); what changes:

* **Coalesced gathers.** Tiles of ``TH x TW`` pixels read the image (and dx, and
  the stored kernels) at unclamped coordinates from zero-bordered copies with
  slack at the end, so that consecutive pixels of a tile row are consecutive
  addresses the compiler can see: one warp reads a few whole cache lines per
  tap instead of one line per pixel.
* **Packed coefficients, one dot per chunk.** ``coef[p, q*N + n] = mu[p, q] *
  omega[p, n]`` is built once per tile with no padding of N, as a piece of P0
  columns (a power of two) plus a piece of P1; a chunk of taps is one dot over
  P0 plus, only when the chunk needs more scales than P0 holds, one over P1
  (default dictionary: 64 + 16 columns for 70 coefficients; only the chunk of
  the innermost taps needs the second dot). The dots read the packed atom matrix
  straight from the atoms tensor through small index tables: nothing is packed
  per call, and nothing cached can go stale (a cache keyed on the version counter
  would miss changes made through ``.data``, as gradcheck makes them).
* **No whole-image buffers in the backward.** The atom gradient recomputes
  ``dk`` per program from the image and dy and accumulates ``coef^T @ dk`` into
  a fixed number of fp32 partials (grid axis 0), summed in a fixed order with
  one launch configuration (deterministic); the mu/omega gradient keeps ``dcoef`` in registers and folds
  it by two small dots; the image gradient gathers the kernels of a band of at
  about ``_KBUF_BYTES`` (sized to stay in an H100's L2), one batch item at a time.

Half inputs use tensor-core dots in their dtype, fp32 follows
``torch.get_float32_matmul_precision()`` (IEEE or TF32), fp64 sums without dots,
all with fp32 (fp64) accumulation, as the first design.
"""

from __future__ import annotations

import functools
from typing import Sequence

import torch
import triton
import triton.language as tl

from inik.ops.ifm import Backend

from .ifm_triton import (
    _INTERPRET,
    _cfg,
    _channel_block,
    _dk,
    _gather_image,
    _mm,
    _next_pow2,
    _off64,
    _on_device,
    _rows,
    _store_channels,
    _strides,
    _tables_cpu,
    _taps,
    _tapsums,
    _unavailable,
    _up,
    _wide,
    _zeros,
    batch_chunked,
)

# Band budget of the image gradient's stored kernels (one batch item at a time).
_KBUF_BYTES = 32 << 20
# Largest tile side of any configuration: the slack after every padded buffer.
_TILE_MAX = 64
# Tap chunks are padded to a multiple of this (the largest CH of any configuration).
_CH_MAX = 64


# ---------------------------------------------------------------- device helpers

@triton.jit
def _tile2(pid, W, row0, nrows, TH: tl.constexpr, TW: tl.constexpr):
    """Tile ``pid`` of the rows [row0, row0 + nrows): its pixels' rows and columns,
    unclamped (pixels past the region read slack memory and are never stored), and
    which of them are real."""
    n_tw = tl.cdiv(W, TW)
    p = tl.arange(0, TH * TW)
    i = row0 + (pid // n_tw) * TH + p // TW
    j = (pid % n_tw) * TW + p % TW
    return i, j, (i < row0 + nrows) & (j < W)


@triton.jit
def _coef(mu_b, om_b, colr, coln, c0, CP, i, j, valid, sm_c, sm_h, so_c, so_h,
          P: tl.constexpr, F64: tl.constexpr):
    """The two (BP, P) factors ``mu[colr[c]]`` and ``omega[coln[c]]`` of the packed
    coefficients c0 .. c0 + P - 1 (zero past CP and at pixels that are not real)."""
    return (_factor(mu_b, colr, c0, CP, i, j, valid, sm_c, sm_h, P, F64),
            _factor(om_b, coln, c0, CP, i, j, valid, so_c, so_h, P, F64))


@triton.jit
def _apiece(A, colr, coln, chalf, ctap, cring, c0, cols, N, KK, P: tl.constexpr):
    """(P, CH) packed atom matrix, rows c0 .. c0 + P - 1 (packed columns) at sorted taps
    ``cols``, gathered from the (R, N, K, K) atoms: zero outside each scale's support
    and in the padding (nothing is packed on the host, so nothing can go stale)."""
    c = c0 + tl.arange(0, P)
    row = tl.load(colr + c) * N + tl.load(coln + c)
    ok = tl.load(cring + cols)[None, :] <= tl.load(chalf + c)[:, None]
    return tl.load(A + (row * KK)[:, None] + tl.load(ctap + cols)[None, :], mask=ok, other=0.0)


@triton.jit
def _factor(base, chan, c0, CP, i, j, valid, s_c, s_h, P: tl.constexpr, F64: tl.constexpr):
    """(BP, P) ``base[chan[c]]`` at the tile's pixels for packed columns c0 .. c0 + P - 1
    (zero past CP and at pixels that are not real)."""
    c = c0 + tl.arange(0, P)
    ch = tl.load(chan + c).to(tl.int64)
    return _up(tl.load(base + (i.to(tl.int64) * s_h + j)[:, None] + (ch * s_c)[None, :],
                       mask=valid[:, None] & (c < CP)[None, :], other=0.0), F64)


@triton.jit
def _fold(dc, w, sel, c0, m, P: tl.constexpr, USE_DOT: tl.constexpr):
    """(BP, M) ``sum over packed columns c with sel[c] == m of dc[:, c] * w[:, c]`` (one-hot dot)."""
    onehot = (tl.load(sel + c0 + tl.arange(0, P))[:, None] == m[None, :]).to(dc.dtype)
    return _mm(dc * w, onehot, USE_DOT, "ieee")


# ---------------------------------------------------------------- kernels

@triton.jit
def _fwd2_kernel(img, mu, om, A, colr, coln, chalf, ctap, cring, cdu, cdv, cneed, out, kbuf,
                 C, H, W, N, KK, CP, HALF, Wp, row0, nrows, kbase, kpitch, kplane,
                 si_b, si_c, sm_b, sm_c, sm_h, so_b, so_c, so_h,
                 STORE_K: tl.constexpr, NCB: tl.constexpr, P0: tl.constexpr, P1: tl.constexpr,
                 KKP: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr, CH: tl.constexpr,
                 USE_DOT: tl.constexpr, PREC: tl.constexpr, F64: tl.constexpr, OFF64: tl.constexpr):
    """Per tap chunk ``k = coef @ A[:, chunk]`` (one dot, two where the chunk needs
    more than P0 coefficients), then each channel's taps times ``k``; with STORE_K,
    ``k`` of the band's pixels into the buffer the image gradient reads."""
    b = tl.program_id(1).to(tl.int64)
    i, j, valid = _tile2(tl.program_id(0), W, row0, nrows, TH, TW)
    c0 = tl.program_id(2) * NCB
    mu_b = mu + b * sm_b
    om_b = om + b * so_b
    img_b = img + b * si_b
    m0, w0 = _coef(mu_b, om_b, colr, coln, 0, CP, i, j, valid, sm_c, sm_h, so_c, so_h, P0, F64)
    coef0 = (m0 * w0).to(A.dtype.element_ty)
    if P1 > 0:
        m1, w1 = _coef(mu_b, om_b, colr, coln, P0, CP, i, j, valid, sm_c, sm_h, so_c, so_h, P1, F64)
        coef1 = (m1 * w1).to(A.dtype.element_ty)
    pofs = _wide((i + HALF) * Wp + j + HALF, OFF64)
    acc0 = _zeros(TH * TW, F64)
    acc1 = acc0
    acc2 = acc0
    acc3 = acc0
    for k0 in range(0, KKP, CH):
        cols = k0 + tl.arange(0, CH)
        kc = _mm(coef0, _apiece(A, colr, coln, chalf, ctap, cring, 0, cols, N, KK, P0), USE_DOT, PREC)
        if P1 > 0:
            if tl.load(cneed + k0) > P0:
                kc += _mm(coef1, _apiece(A, colr, coln, chalf, ctap, cring, P0, cols, N, KK, P1), USE_DOT, PREC)
        if STORE_K:
            kb = (kbuf + b * KKP * kplane + _wide(cols, OFF64)[None, :] * kplane
                  + _wide((i - kbase) * kpitch + j + HALF, OFF64)[:, None])
            tl.store(kb, kc.to(kbuf.dtype.element_ty), mask=valid[:, None])
        else:
            toff = _taps(cdu, cdv, cols, Wp, OFF64)
            acc0, acc1, acc2, acc3 = _tapsums(img_b, c0, C, si_c, pofs, toff, kc, acc0, acc1, acc2, acc3,
                                              NCB, F64, OFF64)
    if not STORE_K:
        HW = _wide(H, OFF64) * W
        o = out + b * C * HW
        _store_channels(o, c0, C, HW, _wide(i * W + j, OFF64), valid, acc0, acc1, acc2, acc3, NCB)


@triton.jit
def _bwd2_coef_kernel(dx, img, mu, om, A, colr, coln, chalf, ctap, cring, cdu, cdv, cneed, gmu, gom,
                      C, H, W, R, N, KK, CP, HALF, Wp,
                      sd_b, sd_c, sd_h, si_b, si_c, sm_b, sm_c, sm_h, so_b, so_c, so_h,
                      NEED_MU: tl.constexpr, NEED_OM: tl.constexpr, MP: tl.constexpr,
                      P0: tl.constexpr, P1: tl.constexpr, KKP: tl.constexpr,
                      TH: tl.constexpr, TW: tl.constexpr, CH: tl.constexpr,
                      USE_DOT: tl.constexpr, PREC: tl.constexpr, F64: tl.constexpr, OFF64: tl.constexpr):
    """mu and omega gradients of a tile: per chunk ``dcoef += dk @ A[:, chunk]^T``
    (the forward's one or two dots), then ``dmu[r] = sum dcoef * omega`` and
    ``domega[n] = sum dcoef * mu`` over the packed columns of r (of n), as dots
    with one-hot matrices (MP >= R, N columns)."""
    b = tl.program_id(1).to(tl.int64)
    i, j, valid = _tile2(tl.program_id(0), W, 0, H, TH, TW)
    mu_b = mu + b * sm_b
    om_b = om + b * so_b
    dx_b = dx + b * sd_b
    img_b = img + b * si_b
    dx_pix = i.to(tl.int64) * sd_h + j
    pofs = _wide((i + HALF) * Wp + j + HALF, OFF64)
    if F64:
        dc0 = tl.zeros((TH * TW, P0), dtype=tl.float64)
        dc1 = tl.zeros((TH * TW, P1 if P1 > 0 else 1), dtype=tl.float64)
    else:
        dc0 = tl.zeros((TH * TW, P0), dtype=tl.float32)
        dc1 = tl.zeros((TH * TW, P1 if P1 > 0 else 1), dtype=tl.float32)
    for k0 in range(0, KKP, CH):
        cols = k0 + tl.arange(0, CH)
        toff = _taps(cdu, cdv, cols, Wp, OFF64)
        dk = _dk(dx_b, img_b, C, sd_c, si_c, dx_pix, valid, pofs, toff, CH, TH * TW, F64)
        a0 = _apiece(A, colr, coln, chalf, ctap, cring, 0, cols, N, KK, P0)
        dc0 += _mm(dk.to(a0.dtype), tl.trans(a0), USE_DOT, PREC)
        if P1 > 0:
            if tl.load(cneed + k0) > P0:
                a1 = _apiece(A, colr, coln, chalf, ctap, cring, P0, cols, N, KK, P1)
                dc1 += _mm(dk.to(a1.dtype), tl.trans(a1), USE_DOT, PREC)
    m = tl.arange(0, MP)
    HW = _wide(H, OFF64) * W
    pix = _wide(i * W + j, OFF64)
    # one factor at a time (fewer live registers): dmu from omega, domega from mu
    if NEED_MU:
        dmu = _fold(dc0, _factor(om_b, coln, 0, CP, i, j, valid, so_c, so_h, P0, F64), colr, 0, m, P0,
                    USE_DOT)
        if P1 > 0:
            dmu += _fold(dc1, _factor(om_b, coln, P0, CP, i, j, valid, so_c, so_h, P1, F64), colr, P0, m,
                         P1, USE_DOT)
        tl.store(gmu + b * R * HW + (m.to(tl.int64) * HW)[None, :] + pix[:, None],
                 dmu.to(gmu.dtype.element_ty), mask=valid[:, None] & (m < R)[None, :])
    if NEED_OM:
        dom = _fold(dc0, _factor(mu_b, colr, 0, CP, i, j, valid, sm_c, sm_h, P0, F64), coln, 0, m, P0,
                    USE_DOT)
        if P1 > 0:
            dom += _fold(dc1, _factor(mu_b, colr, P0, CP, i, j, valid, sm_c, sm_h, P1, F64), coln, P0, m,
                         P1, USE_DOT)
        tl.store(gom + b * N * HW + (m.to(tl.int64) * HW)[None, :] + pix[:, None],
                 dom.to(gom.dtype.element_ty), mask=valid[:, None] & (m < N)[None, :])


@triton.jit
def _bwd2_atoms_kernel(dx, img, mu, om, colr, coln, cdu, cdv, cneed, part,
                       B, C, H, W, CP, HALF, Wp, SPLIT,
                       sd_b, sd_c, sd_h, si_b, si_c, sm_b, sm_c, sm_h, so_b, so_c, so_h,
                       P0: tl.constexpr, P1: tl.constexpr, KKP: tl.constexpr,
                       TH: tl.constexpr, TW: tl.constexpr, CH: tl.constexpr, DOT_DTYPE: tl.constexpr,
                       USE_DOT: tl.constexpr, PREC: tl.constexpr, F64: tl.constexpr, OFF64: tl.constexpr):
    """Atom gradient: program (s, chunk) sums ``coef^T @ dk`` over the tiles s, s +
    SPLIT, ... of every batch item, recomputing ``dk`` and ``coef`` (image, dy, mu
    and omega stay in L2), into partial s (summed afterwards in a fixed order)."""
    s = tl.program_id(0)
    k0 = tl.program_id(1) * CH
    cols = k0 + tl.arange(0, CH)
    toff = _taps(cdu, cdv, cols, Wp, OFF64)
    second = False
    if P1 > 0:
        second = tl.load(cneed + k0) > P0
    if F64:
        acc0 = tl.zeros((P0, CH), dtype=tl.float64)
        acc1 = tl.zeros((P1 if P1 > 0 else 1, CH), dtype=tl.float64)
    else:
        acc0 = tl.zeros((P0, CH), dtype=tl.float32)
        acc1 = tl.zeros((P1 if P1 > 0 else 1, CH), dtype=tl.float32)
    n_tiles = tl.cdiv(H, TH) * tl.cdiv(W, TW)
    for t in range(s, B * n_tiles, SPLIT):
        b = (t // n_tiles).to(tl.int64)
        i, j, valid = _tile2(t % n_tiles, W, 0, H, TH, TW)
        pofs = _wide((i + HALF) * Wp + j + HALF, OFF64)
        dk = _dk(dx + b * sd_b, img + b * si_b, C, sd_c, si_c, i.to(tl.int64) * sd_h + j, valid, pofs, toff,
                 CH, TH * TW, F64).to(DOT_DTYPE)
        m0, w0 = _coef(mu + b * sm_b, om + b * so_b, colr, coln, 0, CP, i, j, valid, sm_c, sm_h, so_c, so_h,
                       P0, F64)
        acc0 += _mm(tl.trans((m0 * w0).to(DOT_DTYPE)), dk, USE_DOT, PREC)
        if P1 > 0:
            if second:
                m1, w1 = _coef(mu + b * sm_b, om + b * so_b, colr, coln, P0, CP, i, j, valid, sm_c, sm_h, so_c,
                               so_h, P1, F64)
                acc1 += _mm(tl.trans((m1 * w1).to(DOT_DTYPE)), dk, USE_DOT, PREC)
    dst = part + s.to(tl.int64) * (P0 + P1) * KKP + cols[None, :]
    tl.store(dst + tl.arange(0, P0)[:, None] * KKP, acc0)
    if P1 > 0:
        tl.store(dst + (P0 + tl.arange(0, P1))[:, None] * KKP, acc1)


@triton.jit
def _bwd2_image_kernel(dx, kbuf, cdu, cdv, gimg,
                       C, H, W, HALF, Wp, row0, nrows, kbase, kpitch, kplane, sd_c,
                       NCB: tl.constexpr, KKP: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr,
                       CH: tl.constexpr, F64: tl.constexpr, OFF64: tl.constexpr):
    """``dimage[p] = sum_taps k[p - tap, tap] * dx[p - tap]`` for one batch item: a
    gather over the windows covering each pixel from the zero-bordered dx and the
    band's kernels (no atomics)."""
    i, j, valid = _tile2(tl.program_id(0), W, row0, nrows, TH, TW)
    c0 = tl.program_id(2) * NCB
    pofs = _wide((i + HALF) * Wp + j + HALF, OFF64)
    kofs = _wide((i - kbase) * kpitch + j + HALF, OFF64)
    acc0, acc1, acc2, acc3 = _gather_image(dx, kbuf, cdu, cdv, c0, C, sd_c, pofs, kofs, Wp, kpitch, kplane,
                                           NCB, KKP, CH, TH * TW, F64, OFF64)
    HW = _wide(H, OFF64) * W
    _store_channels(gimg, c0, C, HW, _wide(i * W + j, OFF64), valid, acc0, acc1, acc2, acc3, NCB)


# ---------------------------------------------------------------- configurations

# Until a GPU times them (benchmarks/gpu_sweep.sh): rows of 16 to 64 pixels (64- to
# 256-byte lines in fp32) and, of those, the tiles, chunks and warps that compile for sm_80 and
# sm_90 without spills in fp32, TF32 and bf16 (benchmarks/kernel_report.py).
_GPU_CONFIGS = [_cfg(4, 32, 32, 4, 2), _cfg(8, 32, 32, 8, 2), _cfg(4, 64, 32, 8, 2), _cfg(8, 16, 32, 4, 2),
                _cfg(4, 16, 16, 4, 2)]
# With IEEE fp32 dots (FMA) only this forward tile compiles without spills on sm_80 (the
# others spill up to 30 KB per thread; none on sm_90): the only one offered on sm_8x. The
# autotuner's cache is per process, not per GPU: a process that mixes sm_8x and sm_90 GPUs
# reuses the first one's choice.
_FMA_FWD_CONFIGS = _GPU_CONFIGS[-1:]
_COEF_GPU_CONFIGS = [_cfg(2, 32, 16, 4, 2), _cfg(4, 32, 16, 8, 2)]
# the atom gradient has one configuration, not autotuned: the tiles each partial sums,
# hence the bits of the result, must not depend on which configuration won a timing
_ATOMS_GPU_CONFIGS = [_cfg(2, 32, 32, 8, 2)]
_IMAGE_GPU_CONFIGS = [_cfg(8, 32, 32, 8, 2), _cfg(4, 32, 32, 4, 2), _cfg(8, 16, 32, 4, 2)]
_FIXED = {"TH": 4, "TW": 4, "CH": 16}
_FIXED_GPU_F64 = {"TH": 4, "TW": 8, "CH": 16}
# Kernel name -> configuration forced (tests, sweeps); empty: autotuner or fixed.
_FORCED: dict = {}

# every kernel with the configurations autotuning may pick (benchmarks/kernel_report.py);
# the forward's, per GPU and precision: fwd_configs
KERNELS = {"_fwd2_kernel": _GPU_CONFIGS, "_bwd2_coef_kernel": _COEF_GPU_CONFIGS,
           "_bwd2_atoms_kernel": _ATOMS_GPU_CONFIGS, "_bwd2_image_kernel": _IMAGE_GPU_CONFIGS}


def fwd_configs(arch: int, prec: str) -> list:
    """The forward's configurations autotuning may pick on sm_``arch`` (e.g. 80, 90) with
    dots of precision ``prec`` ("ieee" or "tf32"; half inputs pass "tf32")."""
    return _FMA_FWD_CONFIGS if (arch < 90 and prec == "ieee") else _GPU_CONFIGS


def _config_key(c) -> tuple:
    return tuple(sorted(c.kwargs.items())), c.num_warps, c.num_stages


def _prune_fwd(configs, named_args, **kwargs):
    """The autotuner's pruning: :func:`fwd_configs` for the inputs' GPU and the call's ``PREC``."""
    major, minor = torch.cuda.get_device_capability(named_args["img"].device)
    allowed = {_config_key(c) for c in fwd_configs(10 * major + minor, kwargs.get("PREC", named_args.get("PREC")))}
    return [c for c in configs if _config_key(c) in allowed]


def _tuned(kernel, configs, key, prune=None):
    return triton.autotune(configs=configs, key=list(key),
                           prune_configs_by={"early_config_prune": prune} if prune else None)(kernel)


if _INTERPRET:
    _TUNED = {}
else:
    _TUNED = {
        # keyed on the dots' precision too: the best tile, and the forward's choices, depend on it
        "_fwd2_kernel": _tuned(_fwd2_kernel, _GPU_CONFIGS, ("C", "CP", "STORE_K", "OFF64", "PREC"), _prune_fwd),
        "_bwd2_coef_kernel": _tuned(_bwd2_coef_kernel, _COEF_GPU_CONFIGS,
                                    ("C", "CP", "NEED_MU", "NEED_OM", "OFF64", "PREC")),
        "_bwd2_image_kernel": _tuned(_bwd2_image_kernel, _IMAGE_GPU_CONFIGS, ("C", "KKP", "OFF64")),
    }


def _launch(kernel, grid, f64, *args, **kwargs):
    """``kernel`` with a forced configuration, the fixed one (interpreter, fp64), autotuned,
    or in its one configuration of :data:`KERNELS`."""
    name = kernel.__name__
    forced = _FORCED.get(name)
    if forced is not None and kwargs["KKP"] % forced["CH"]:
        raise ValueError(f"{name}: CH={forced['CH']} does not divide the padded tap count {kwargs['KKP']}")
    if forced is not None:
        kernel[grid(forced)](*args, **kwargs, **forced)
    elif f64 or _INTERPRET:
        meta = _FIXED_GPU_F64 if (f64 and not _INTERPRET) else _FIXED
        kernel[grid(meta)](*args, **kwargs, **meta, num_warps=4)
    elif name in _TUNED:
        _TUNED[name][grid](*args, **kwargs)
    else:  # not autotuned: its one configuration
        cfg = KERNELS[name][0]
        kernel[grid(cfg.kwargs)](*args, **kwargs, **cfg.kwargs, num_warps=cfg.num_warps, num_stages=cfg.num_stages)


# ---------------------------------------------------------------- host side

def _pieces(cp: int) -> tuple[int, int]:
    """(P0, P1): the packed coefficient columns as a power of two plus a second
    power of two (or 0), both at least 16 (the smallest dot)."""
    p0 = max(16, 1 << (cp.bit_length() - 1))
    rest = cp - p0
    return p0, (0 if rest <= 0 else max(16, _next_pow2(rest)))


def _bordered(x: torch.Tensor, half: int) -> torch.Tensor:
    """Contiguous (B, C, H + 2 half, W + 2 half) copy of ``x`` with zero borders,
    viewed from a buffer with slack after it: a tile reading past the last row or
    column (pixels whose results are never stored) stays in memory."""
    B, C, H, W = x.shape
    Hp, Wp = H + 2 * half, W + 2 * half
    n = B * C * Hp * Wp
    flat = x.new_zeros(n + (_TILE_MAX + 2 * half + 1) * (Wp + _TILE_MAX + 2 * half))
    out = flat[:n].view(B, C, Hp, Wp)
    out[:, :, half:half + H, half:half + W] = x
    return out


@functools.lru_cache(maxsize=64)
def _packing_tables(k: int, support: tuple, n: int, kkp: int, device: torch.device) -> dict:
    """The first design's tap tables plus the packed columns' scale (``colr``, original
    index) and atom (``coln``), and per tap column the coefficient columns it needs
    (``cneed``: N times the scales reaching its ring); on ``device``, cached."""
    r_ = len(support)
    t = dict(_tables_cpu(k, support, _next_pow2(r_), kkp))
    p0, p1 = _pieces(r_ * n)
    c = torch.arange(p0 + p1)
    real = c < r_ * n
    t["colr"] = torch.where(real, t["order"][(c // n).clamp(max=r_ - 1)], 0).to(torch.int32)
    t["coln"] = torch.where(real, c % n, 0).to(torch.int32)
    need = t["inside"].sum(0) * n
    t["cneed"] = torch.cat([need, need.new_zeros(kkp - k * k)]).to(torch.int32)
    t["chalf"] = torch.where(real, t["hs"][(c // n).clamp(max=r_ - 1)], -1).to(torch.int32)
    t["ctap"] = torch.cat([t["tap"], t["tap"].new_zeros(kkp - k * k)]).to(torch.int32)
    return _on_device(t, device)


class _Packing:
    """Sizes and tables of the packed coefficient columns for one call."""

    def __init__(self, atoms: torch.Tensor, support: Sequence[int]):
        self.R, self.N, self.K = atoms.shape[0], atoms.shape[1], atoms.shape[-1]
        self.KK, self.half = self.K * self.K, self.K // 2
        self.CP = self.R * self.N
        self.P0, self.P1 = _pieces(self.CP)
        self.f64 = atoms.dtype == torch.float64
        self.use_dot = not self.f64
        chunk = _FIXED["CH"] if _INTERPRET else _CH_MAX
        self.KKP = -(-self.KK // chunk) * chunk
        self.MP = max(16, _next_pow2(max(self.R, self.N)))
        if atoms.dtype in (torch.float16, torch.bfloat16):
            self.prec = "tf32"  # ignored for half operands
        else:
            self.prec = "ieee" if (_INTERPRET or torch.get_float32_matmul_precision() == "highest") else "tf32"
        self.acc_dtype = torch.float64 if self.f64 else torch.float32
        t = _packing_tables(self.K, tuple(int(s) for s in support), self.N, self.KKP, atoms.device)
        self.cdu, self.cdv, self.tap, self.order, self.inside = t["cdu"], t["cdv"], t["tap"], t["order"], t["inside"]
        self.colr, self.coln, self.cneed = t["colr"], t["coln"], t["cneed"]
        self.gather = (t["colr"], t["coln"], t["chalf"], t["ctap"], t["cring"])  # the atoms' packed view

    def consts(self) -> dict:
        return dict(P0=self.P0, P1=self.P1, KKP=self.KKP, USE_DOT=self.use_dot, PREC=self.prec, F64=self.f64)

    def atoms_grad(self, summed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(P0 + P1, KKP) sums in the packed layout -> (R, N, K, K)."""
        g_sorted = torch.where(self.inside[:, None, :], summed[:self.CP, :self.KK].reshape(self.R, self.N, self.KK), 0)
        g = torch.zeros((self.R, self.N, self.KK), dtype=summed.dtype, device=summed.device)
        g[self.order[:, None, None], torch.arange(self.N, device=g.device)[None, :, None],
          self.tap[None, None, :]] = g_sorted
        return g.reshape(self.R, self.N, self.K, self.K).to(dtype)


def _tile_grid(rows: int, W: int, *more: int):
    def grid(meta):
        return (triton.cdiv(rows, meta["TH"]) * triton.cdiv(W, meta["TW"]), *more)
    return grid


def ifm_triton2(image, mu, omega, atoms, support: Sequence[int]):
    """Fused forward: (B, C, H, W) output of the inputs' dtype."""
    mu, omega = _rows(mu, omega)
    pk, A = _Packing(atoms, support), atoms.contiguous()
    B, C, H, W = image.shape
    img = _bordered(image, pk.half)
    out = torch.empty((B, C, H, W), dtype=image.dtype, device=image.device)
    ncb = _channel_block(C)
    _launch(_fwd2_kernel, _tile_grid(H, W, B, triton.cdiv(C, ncb)), pk.f64,
            img, mu, omega, A, *pk.gather, pk.cdu, pk.cdv, pk.cneed, out, out,
            C, H, W, pk.N, pk.KK, pk.CP, pk.half, img.shape[3], 0, H, 0, 0, 0,
            img.stride(0), img.stride(1), *_strides(mu), *_strides(omega),
            STORE_K=False, NCB=ncb, OFF64=_off64(img.numel() + img[0].numel(), mu.numel(), omega.numel()),
            **pk.consts())
    return out


def _atoms_split(tiles: int, chunks: int, device: torch.device) -> int:
    """Partials of the atom gradient: enough programs to fill the GPU, a fixed number
    for a given shape and GPU (the sum's order, hence its bits, do not vary)."""
    if _INTERPRET or device.type != "cuda":
        return min(tiles, 2)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(tiles, (4 * sms) // max(1, chunks)))


def _coef_grads(grad, img, mu, omega, pk, A, needs):
    B, C, H, W = grad.shape
    g_mu = torch.empty(mu.shape, dtype=mu.dtype, device=mu.device) if needs[1] else mu
    g_om = torch.empty(omega.shape, dtype=omega.dtype, device=omega.device) if needs[2] else omega
    _launch(_bwd2_coef_kernel, _tile_grid(H, W, B), pk.f64,
            grad, img, mu, omega, A, *pk.gather, pk.cdu, pk.cdv, pk.cneed, g_mu, g_om,
            C, H, W, pk.R, pk.N, pk.KK, pk.CP, pk.half, img.shape[3],
            *_strides(grad), img.stride(0), img.stride(1), *_strides(mu), *_strides(omega),
            NEED_MU=bool(needs[1]), NEED_OM=bool(needs[2]), MP=pk.MP,
            OFF64=_off64(img.numel() + img[0].numel(), grad.numel(), mu.numel(), omega.numel()), **pk.consts())
    return (g_mu if needs[1] else None), (g_om if needs[2] else None)


def _atoms_grad(grad, img, mu, omega, pk, atoms):
    B, C, H, W = grad.shape
    cfg = _ATOMS_GPU_CONFIGS[0].kwargs
    split = _atoms_split(B * triton.cdiv(H * W, cfg["TH"] * cfg["TW"]), pk.KKP // 16, grad.device)
    part = torch.empty((split, pk.P0 + pk.P1, pk.KKP), dtype=pk.acc_dtype, device=grad.device)
    dot_dtype = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16,
                 torch.float32: tl.float32, torch.float64: tl.float64}[atoms.dtype]

    def grid(meta):
        return (split, pk.KKP // meta["CH"])

    _launch(_bwd2_atoms_kernel, grid, pk.f64,
            grad, img, mu, omega, pk.colr, pk.coln, pk.cdu, pk.cdv, pk.cneed, part,
            B, C, H, W, pk.CP, pk.half, img.shape[3], split,
            *_strides(grad), img.stride(0), img.stride(1), *_strides(mu), *_strides(omega),
            DOT_DTYPE=dot_dtype, OFF64=_off64(img.numel() + img[0].numel(), grad.numel(), mu.numel(),
                                              omega.numel()), **pk.consts())
    return pk.atoms_grad(part.sum(0), atoms.dtype)


def _image_grad(grad, img, mu, omega, pk, A):
    """The image gradient, one batch item and one band of rows at a time: the band's
    kernels plus a K//2 halo into a zero-bordered buffer of about ``_KBUF_BYTES`` (a
    band holds at least K rows) (``_fwd2_kernel(STORE_K)``), then the gather against
    the zero-bordered dx."""
    B, C, H, W = grad.shape
    h = pk.half
    dxp = _bordered(grad, h)
    g_image = torch.empty((B, C, H, W), dtype=grad.dtype, device=grad.device)
    kpitch = W + 2 * h
    row_bytes = pk.KKP * kpitch * (8 if pk.f64 else 4)
    band = min(H, max(pk.K, _KBUF_BYTES // row_bytes - 2 * h))
    kn = pk.KKP * (band + 2 * h) * kpitch
    # zeroed once: the halo columns are never written; the rows outside the image are
    # zeroed before each band that has them (a NaN kept there from the band before would
    # reach real pixels through 0 * NaN); the slack takes the reads of tiles past the band
    kflat = torch.zeros(kn + (_TILE_MAX + 2 * h + 1) * (kpitch + _TILE_MAX), dtype=pk.acc_dtype,
                        device=grad.device)
    rows = kflat[:kn].view(pk.KKP, band + 2 * h, kpitch)
    ncb = _channel_block(C)
    off64 = _off64(dxp.numel() + dxp[0].numel(), kflat.numel(), g_image.numel(), img.numel() + img[0].numel())
    for b in range(B):
        for r0 in range(0, H, band):
            r1 = min(H, r0 + band)
            k0, k1 = max(0, r0 - h), min(H, r1 + h)
            rows[:, :k0 - (r0 - h)].zero_()  # buffer row t holds image row r0 - h + t
            rows[:, k1 - (r0 - h):].zero_()
            _launch(_fwd2_kernel, _tile_grid(k1 - k0, W, 1, 1), pk.f64,
                    img[b:b + 1], mu[b:b + 1], omega[b:b + 1], A, *pk.gather, pk.cdu, pk.cdv, pk.cneed,
                    g_image, kflat, C, H, W, pk.N, pk.KK, pk.CP, h, img.shape[3], k0, k1 - k0,
                    r0 - h, kpitch, (band + 2 * h) * kpitch, img.stride(0), img.stride(1),
                    *_strides(mu), *_strides(omega), STORE_K=True, NCB=ncb, OFF64=off64, **pk.consts())
            _launch(_bwd2_image_kernel, _tile_grid(r1 - r0, W, 1, triton.cdiv(C, ncb)), pk.f64,
                    dxp[b], kflat, pk.cdu, pk.cdv, g_image[b], C, H, W, h, dxp.shape[3], r0, r1 - r0,
                    r0 - h, kpitch, (band + 2 * h) * kpitch, dxp.stride(1),
                    NCB=ncb, KKP=pk.KKP, F64=pk.f64, OFF64=off64)
    return g_image


def ifm_triton2_backward(grad, image, mu, omega, atoms, support: Sequence[int], needs):
    """Gradients for (image, mu, omega, atoms); an unneeded one is None."""
    grad, mu, omega = _rows(grad, mu, omega)
    pk, A = _Packing(atoms, support), atoms.contiguous()
    img = _bordered(image, pk.half)
    g_mu = g_omega = g_atoms = g_image = None
    if needs[1] or needs[2]:
        g_mu, g_omega = _coef_grads(grad, img, mu, omega, pk, A, needs)
    if needs[3]:
        g_atoms = _atoms_grad(grad, img, mu, omega, pk, atoms)
    if needs[0]:
        g_image = _image_grad(grad, img, mu, omega, pk, A)
    return g_image, g_mu, g_omega, g_atoms


def triton2_backend() -> Backend:
    """The second-design Triton backend of :func:`inik.ops.ifm` (ImportError when triton is missing)."""
    return Backend("triton2", *batch_chunked(ifm_triton2, ifm_triton2_backward), _unavailable)

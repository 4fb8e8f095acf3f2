"""Fused Triton forward and backward of the IFM (``backend="triton"``).

    x[b,c,i,j] = <k[b,i,j], patch_{K x K}(image[b,c]) at (i,j)>,
    k[b,i,j]   = sum_{r,n} mu[b,r,i,j] * omega[b,n,i,j] * atoms[r,n]   (support-masked)

(docs/ARCHITECTURE.md section 2). Nothing of size (R*N, H, W) ever reaches global memory.

Data layout the kernels share (:class:`_Plan`; index tables cached by :func:`_tables`):

* the K*K kernel taps ("columns") are sorted by ring - the Chebyshev distance
  ``max(|u-K//2|, |v-K//2|)`` from the centre - and padded to a multiple of the
  largest column chunk; ``cdu``/``cdv``/``cring`` give each column's offset and ring;
* the scales are sorted by support size, largest first (``perm``), and atoms are
  padded to ``NP`` atoms per scale, so the synthesis matrix is
  ``A[q, n, col]`` of shape (RP, NP, KKP), zero outside each scale's support;
* a chunk of columns whose innermost ring is ``t`` only needs the scales with
  ``support // 2 >= t`` - a prefix of the sorted scales - so the forward skips
  the zeros of small scales. Default dictionary (R=7 supports 3..15, N=10,
  K=15): 6,800 useful synthesis multiply-adds per pixel against 15,750 dense;
  padded to NP=16 atoms and 32-64 tap chunks the dots issue 12,800-14,300.

Kernels (one program per pixel tile ``TH x TW`` of one image unless noted):

* ``_fwd_kernel``: per column chunk, ``k_chunk = sum_q (mu_q * omega) @ A[q, :, chunk]``
  (``tl.dot``), then the chunk's K x K patch taps of each of its channels times
  ``k_chunk``; with ``STORE_K`` it writes ``k`` for a band of rows instead (used
  by the image gradient). Its ``DENSE`` variant builds every scale's
  coefficients once per tile, (pixels, RP * NP), and issues one dot per chunk
  over all scales (the zeros of ``A`` outside each support do the skipping):
  fewer, larger dots for more multiply-adds. Compiled for sm_90 here it spills
  16 KB per thread with IEEE fp32 dots and little or nothing with TF32 and
  half dots (8 warps); it is tested but not in the autotuned lists until a GPU
  has timed it (``benchmarks/sweep_triton.py --only fwd,fwd-dense``).
* ``_bwd_coef_kernel``: per chunk ``dk = sum_c dx[c] * patch[c]``; per scale
  reaching the chunk ``dcoef_q = dk @ A[q, :, chunk]^T``, folded at once into
  ``dmu[:, q] = <dcoef_q, omega>`` and ``domega += mu_q * dcoef_q``; with
  ``STORE_DK`` it also writes ``dk`` for a band of rows.
* ``_bwd_atoms_kernel``: the atom gradient of a band as a GEMM over its pixels,
  grid (column blocks, splits): ``coef^T @ dk`` with ``coef = mu (x) omega``
  recomputed and ``dk`` read from the band buffer; one fp32 partial per program,
  summed with torch afterwards (deterministic, no atomics).
* ``_bwd_image_kernel``: ``dimage[p] = sum_taps k[p - tap, tap] * dx[p - tap]``, a
  gather over the windows covering each pixel, reading ``k`` that
  ``_fwd_kernel(STORE_K)`` wrote for a band of rows plus its K//2 halo.

Band buffers (``k`` with its halo, ``dk``) stay under ``_KBUF_BYTES`` each.
Gathers read zero-padded contiguous copies of the image and of dx made by the
wrapper (a few MB), at pixel coordinates clamped into the band, so they need no
bounds masks; offsets inside a batch item are 32-bit unless some buffer passes
2**31 elements (``OFF64``). A program applies its kernels to up to four
channels (``NCB``, unrolled: all of an RGB image); more channels are split over
a third grid axis in the forward and the image gradient (the forward then
re-synthesises ``k`` per block) and looped over for ``dk``.

mu and omega are read in place through their batch, channel and row strides
when their columns are contiguous (channel slices such as ``mu[:, 1:]``,
expanded batches); other layouts are copied to contiguous first. Outputs and
gradients are written contiguous. Half inputs (fp16/bf16) use tensor-core dots
in their own dtype with fp32 accumulation; fp32 inputs follow
``torch.get_float32_matmul_precision()`` ("highest": IEEE fp32, else TF32); fp64
(gradcheck, interpreter) multiplies and sums without ``tl.dot``.
"""

from __future__ import annotations

import functools
import os
import re
import threading
from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from inik.ops.ifm import Backend

# Triton decides at decoration (import) time whether kernels are interpreted.
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")
# Upper bound on the per-band buffer of synthesised kernels the image gradient reads.
_KBUF_BYTES = 128 << 20
# Column chunks are padded to a multiple of this (the largest chunk of any config).
_CH_MAX = 64


# ---------------------------------------------------------------- device helpers

@triton.jit
def _mm(a, b, USE_DOT: tl.constexpr, PREC: tl.constexpr):
    """a (M, K) @ b (K, N) with fp32 (fp64 without USE_DOT) accumulation."""
    if USE_DOT:
        return tl.dot(a, b, input_precision=PREC)
    else:
        return tl.sum(a[:, :, None] * b[None, :, :], axis=1)


@triton.jit
def _tile(pid, W, row0, nrows, TH: tl.constexpr, TW: tl.constexpr):
    """Tile ``pid`` of the rows [row0, row0 + nrows): its pixels' rows and columns,
    which are real pixels, and the same coordinates clamped into the region (the
    clamped ones address real memory, so gathers need no mask; results of
    pixels outside the region are never stored)."""
    n_tw = tl.cdiv(W, TW)
    ti = pid // n_tw
    tj = pid % n_tw
    p = tl.arange(0, TH * TW)
    i = row0 + ti * TH + p // TW
    j = tj * TW + p % TW
    valid = (i < row0 + nrows) & (j < W)
    return i, j, valid, tl.minimum(i, row0 + nrows - 1), tl.minimum(j, W - 1)


@triton.jit
def _up(x, F64: tl.constexpr):
    if F64:
        return x.to(tl.float64)
    else:
        return x.to(tl.float32)


@triton.jit
def _wide(x, OFF64: tl.constexpr):
    """Offsets in int64 when some tensor's elements exceed the int32 range."""
    if OFF64:
        return x.to(tl.int64)
    else:
        return x


@triton.jit
def _taps(cdu, cdv, cols, pitch, OFF64: tl.constexpr):
    """(CH,) offsets ``du * pitch + dv`` of a column chunk's taps in a plane of row pitch ``pitch``."""
    return _wide(tl.load(cdu + cols), OFF64) * pitch + _wide(tl.load(cdv + cols), OFF64)


@triton.jit
def _tapsum(base, c, C, s_c, pofs, toff, w, F64: tl.constexpr, OFF64: tl.constexpr):
    """(BP,) ``sum_t w[p, t] * base[c * s_c + pofs[p] + toff[t]]``: one channel of a
    zero-padded plane gathered at every pixel's taps, no mask (a channel ``c >= C``
    reads channel C - 1; its result is not stored)."""
    cl = _wide(tl.minimum(c, C - 1), OFF64)
    v = _up(tl.load(base + cl * s_c + pofs[:, None] + toff[None, :]), F64)
    return tl.sum(v * w, axis=1)


@triton.jit
def _tapsums(base, c0, C, s_c, pofs, toff, w, acc0, acc1, acc2, acc3, NCB: tl.constexpr, F64: tl.constexpr,
             OFF64: tl.constexpr):
    """The NCB unrolled channel accumulators of one program, channels c0 .., each plus its
    :func:`_tapsum` with weights ``w``."""
    acc0 += _tapsum(base, c0, C, s_c, pofs, toff, w, F64, OFF64)
    if NCB > 1:
        acc1 += _tapsum(base, c0 + 1, C, s_c, pofs, toff, w, F64, OFF64)
    if NCB > 2:
        acc2 += _tapsum(base, c0 + 2, C, s_c, pofs, toff, w, F64, OFF64)
    if NCB > 3:
        acc3 += _tapsum(base, c0 + 3, C, s_c, pofs, toff, w, F64, OFF64)
    return acc0, acc1, acc2, acc3


@triton.jit
def _planes(base, ch, nch, i, j, valid, s_c, s_h, F64: tl.constexpr):
    """(BP, len(ch)) values ``base[ch, i, j]`` of channels ``ch < nch``."""
    off = (ch.to(tl.int64) * s_c)[None, :] + (i.to(tl.int64) * s_h + j)[:, None]
    return _up(tl.load(base + off, mask=valid[:, None] & (ch < nch)[None, :], other=0.0), F64)


@triton.jit
def _store_channel(base, c, C, HW, pix, valid, acc):
    tl.store(base + c.to(tl.int64) * HW + pix, acc.to(base.dtype.element_ty), mask=valid & (c < C))


@triton.jit
def _store_channels(base, c0, C, HW, pix, valid, acc0, acc1, acc2, acc3, NCB: tl.constexpr):
    """The NCB unrolled channel accumulators of one program, channels c0 ..; those >= C are dropped."""
    _store_channel(base, c0, C, HW, pix, valid, acc0)
    if NCB > 1:
        _store_channel(base, c0 + 1, C, HW, pix, valid, acc1)
    if NCB > 2:
        _store_channel(base, c0 + 2, C, HW, pix, valid, acc2)
    if NCB > 3:
        _store_channel(base, c0 + 3, C, HW, pix, valid, acc3)



@triton.jit
def _zeros(BP: tl.constexpr, F64: tl.constexpr):
    """(BP,) accumulator of zeros, fp64 or fp32."""
    if F64:
        z = tl.zeros((BP,), dtype=tl.float64)
    else:
        z = tl.zeros((BP,), dtype=tl.float32)
    return z


@triton.jit
def _dk(dx_b, img_b, C, sd_c, si_c, dx_pix, valid, pofs, toff, CH: tl.constexpr, BP: tl.constexpr,
        F64: tl.constexpr):
    """(BP, CH) ``dk[p, t] = sum_c dx[c, p] * image[c, p + tap t]`` from the zero-padded
    image (zero at pixels that are not real; channel planes by pointer steps, so no
    integer overflow)."""
    if F64:
        dk = tl.zeros((BP, CH), dtype=tl.float64)
    else:
        dk = tl.zeros((BP, CH), dtype=tl.float32)
    dx_c = dx_b
    img_c = img_b
    for _ in range(0, C):
        dxc = _up(tl.load(dx_c + dx_pix, mask=valid, other=0.0), F64)
        dk += _up(tl.load(img_c + pofs[:, None] + toff[None, :]), F64) * dxc[:, None]
        dx_c += sd_c
        img_c += si_c
    return dk


@triton.jit
def _gather_image(dx, kbuf, cdu, cdv, c0, C, sd_c, pofs, kofs, Wp, kpitch, kplane,
                  NCB: tl.constexpr, KKP: tl.constexpr, CH: tl.constexpr, BP: tl.constexpr,
                  F64: tl.constexpr, OFF64: tl.constexpr):
    """The image gradient's NCB channel accumulators at pixels ``pofs`` (in the zero-padded
    dx) / ``kofs`` (in the band buffer): ``sum_taps k[p - tap, tap] * dx[p - tap]``."""
    acc0 = _zeros(BP, F64)
    acc1 = acc0
    acc2 = acc0
    acc3 = acc0
    for k0 in range(0, KKP, CH):
        cols = k0 + tl.arange(0, CH)
        # pixel q = p - tap uses tap `col` of its kernel on p
        toff = -_taps(cdu, cdv, cols, Wp, OFF64)
        ktoff = _wide(cols, OFF64) * kplane - _taps(cdu, cdv, cols, kpitch, OFF64)
        kq = _up(tl.load(kbuf + kofs[:, None] + ktoff[None, :]), F64)
        acc0, acc1, acc2, acc3 = _tapsums(dx, c0, C, sd_c, pofs, toff, kq, acc0, acc1, acc2, acc3,
                                          NCB, F64, OFF64)
    return acc0, acc1, acc2, acc3


# ---------------------------------------------------------------- kernels
# mu and omega are read through (batch, channel, row) strides with unit column
# stride; the image (forward) and dx (image gradient) are zero-padded copies made
# by the wrapper, so gathers need no bounds checks; outputs and gradients are
# written contiguous.

@triton.jit
def _fwd_kernel(img, mu, om, A, perm, hs, cdu, cdv, cring, out, kbuf,
                C, H, W, R, N, KK, HALF, Wp, row0, nrows, kbase, kpitch, kplane,
                si_b, si_c, sm_b, sm_c, sm_h, so_b, so_c, so_h,
                STORE_K: tl.constexpr, NCB: tl.constexpr, RP: tl.constexpr, NP: tl.constexpr,
                KKP: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr, CH: tl.constexpr,
                USE_DOT: tl.constexpr, PREC: tl.constexpr, F64: tl.constexpr, OFF64: tl.constexpr,
                DENSE: tl.constexpr = False):
    b = tl.program_id(1).to(tl.int64)
    i, j, valid, ic, jc = _tile(tl.program_id(0), W, row0, nrows, TH, TW)
    c0 = tl.program_id(2) * NCB  # this program's channels: c0 .. c0 + NCB - 1
    nn = tl.arange(0, NP)
    mu_b = mu + b * sm_b
    img_b = img + b * si_b
    mu_pix = i.to(tl.int64) * sm_h + j
    om_t = _planes(om + b * so_b, nn, N, i, j, valid, so_c, so_h, F64)
    halves = tl.load(hs + tl.arange(0, RP))
    pofs = _wide((ic + HALF) * Wp + jc + HALF, OFF64)
    acc0 = _zeros(TH * TW, F64)
    acc1 = acc0
    acc2 = acc0
    acc3 = acc0
    if DENSE:
        # every scale's coefficients side by side, (pixels, RP * NP), built once per tile
        qq = tl.arange(0, RP)
        rr = tl.load(perm + qq).to(tl.int64)
        mu_all = _up(tl.load(mu_b + rr[None, :] * sm_c + mu_pix[:, None],
                             mask=valid[:, None] & (qq < R)[None, :], other=0.0), F64)
        coef_all = tl.reshape(mu_all[:, :, None] * om_t[:, None, :], (TH * TW, RP * NP))
        coef_all = coef_all.to(A.dtype.element_ty)
        qn = tl.arange(0, RP * NP)
    for k0 in range(0, KKP, CH):
        cols = k0 + tl.arange(0, CH)
        if DENSE:
            # one dot over all scales; the zeros of A outside each support do the masking
            kc = _mm(coef_all, tl.load(A + qn[:, None] * KKP + cols[None, :]), USE_DOT, PREC)
        else:
            # scales whose support reaches the chunk's innermost ring: a prefix of the sorted scales
            nq = tl.sum((halves >= tl.load(cring + k0)).to(tl.int32), axis=0)
            if F64:
                kc = tl.zeros((TH * TW, CH), dtype=tl.float64)
            else:
                kc = tl.zeros((TH * TW, CH), dtype=tl.float32)
            for q in range(0, nq):
                r = tl.load(perm + q).to(tl.int64)
                mu_q = _up(tl.load(mu_b + r * sm_c + mu_pix, mask=valid, other=0.0), F64)
                a = tl.load(A + (q * NP + nn)[:, None] * KKP + cols[None, :])
                coef = (mu_q[:, None] * om_t).to(a.dtype)
                kc += _mm(coef, a, USE_DOT, PREC)
        if STORE_K:
            # k of this band's pixels into the halo-padded buffer the image gradient reads
            kb = (kbuf + b * KKP * kplane + _wide(cols, OFF64)[None, :] * kplane
                  + _wide((i - kbase) * kpitch + j + HALF, OFF64)[:, None])
            tl.store(kb, kc.to(kbuf.dtype.element_ty), mask=valid[:, None] & (cols < KK)[None, :])
        else:
            # padded columns (cols >= KK) have zero weights and read the centre tap
            toff = _taps(cdu, cdv, cols, Wp, OFF64)
            acc0, acc1, acc2, acc3 = _tapsums(img_b, c0, C, si_c, pofs, toff, kc, acc0, acc1, acc2, acc3,
                                              NCB, F64, OFF64)
    if not STORE_K:
        HW = H * W
        o = out + b * C * HW
        pix = _wide(i * W + j, OFF64)
        _store_channels(o, c0, C, HW, pix, valid, acc0, acc1, acc2, acc3, NCB)


@triton.jit
def _bwd_coef_kernel(dx, img, mu, om, A, perm, hs, cdu, cdv, cring, gmu, gom, dkb,
                     C, H, W, R, N, KK, HALF, Wp, row0, nrows,
                     sd_b, sd_c, sd_h, si_b, si_c, sm_b, sm_c, sm_h, so_b, so_c, so_h,
                     NEED_MU: tl.constexpr, NEED_OM: tl.constexpr, STORE_DK: tl.constexpr,
                     RP: tl.constexpr, NP: tl.constexpr, KKP: tl.constexpr,
                     TH: tl.constexpr, TW: tl.constexpr, CH: tl.constexpr,
                     USE_DOT: tl.constexpr, PREC: tl.constexpr, F64: tl.constexpr, OFF64: tl.constexpr):
    """Per column chunk ``dk = sum_c dx[c] * patch[c]``; per scale q reaching the chunk
    ``dcoef_q = dk @ A[q, :, chunk]^T`` (the forward's support skipping), folded at
    once into ``dmu[:, q] += <dcoef_q, omega>`` and ``domega += mu_q * dcoef_q`` (no
    (BP, R*N) accumulator); with STORE_DK, ``dk`` of the band's pixels into ``dkb``
    (B, KKP, nrows * W) for the atom gradient."""
    b = tl.program_id(1).to(tl.int64)
    i, j, valid, ic, jc = _tile(tl.program_id(0), W, row0, nrows, TH, TW)
    nn = tl.arange(0, NP)
    qq = tl.arange(0, RP)
    pofs = _wide((ic + HALF) * Wp + jc + HALF, OFF64)
    dx_b = dx + b * sd_b
    img_b = img + b * si_b
    dx_pix = i.to(tl.int64) * sd_h + j
    NEED_COEF: tl.constexpr = NEED_MU or NEED_OM
    r = tl.load(perm + qq)
    qmask = qq < R
    if NEED_COEF:
        om_t = _planes(om + b * so_b, nn, N, i, j, valid, so_c, so_h, F64)
        mu_t = tl.where(qmask[None, :], _planes(mu + b * sm_b, r, R, i, j, valid, sm_c, sm_h, F64), 0.0)
        halves = tl.load(hs + qq)
    if F64:
        dmu = tl.zeros((TH * TW, RP), dtype=tl.float64)
        dom = tl.zeros((TH * TW, NP), dtype=tl.float64)
    else:
        dmu = tl.zeros((TH * TW, RP), dtype=tl.float32)
        dom = tl.zeros((TH * TW, NP), dtype=tl.float32)
    for k0 in range(0, KKP, CH):
        cols = k0 + tl.arange(0, CH)
        toff = _taps(cdu, cdv, cols, Wp, OFF64)
        dk = _dk(dx_b, img_b, C, sd_c, si_c, dx_pix, valid, pofs, toff, CH, TH * TW, F64)
        if STORE_DK:
            band = nrows * W
            dst = (dkb + b * KKP * band + _wide(cols, OFF64)[None, :] * band
                   + _wide((i - row0) * W + j, OFF64)[:, None])
            tl.store(dst, dk, mask=valid[:, None])
        if NEED_COEF:
            nq = tl.sum((halves >= tl.load(cring + k0)).to(tl.int32), axis=0)
            for q in range(0, nq):
                at = tl.load(A + (q * NP + nn)[None, :] * KKP + cols[:, None])  # (CH, NP) = A[q, :, chunk]^T
                dcq = _mm(dk.to(at.dtype), at, USE_DOT, PREC)  # (BP, NP)
                sel = qq[None, :] == q
                if NEED_MU:
                    dmu += tl.where(sel, tl.sum(dcq * om_t, axis=1)[:, None], 0.0)
                if NEED_OM:
                    dom += tl.sum(tl.where(sel, mu_t, 0.0), axis=1)[:, None] * dcq
    if NEED_COEF:
        HW = H * W
        pix = i * W + j
        if NEED_MU:
            tl.store(gmu + b * R * HW + (r.to(tl.int64) * HW)[None, :] + pix[:, None],
                     dmu.to(gmu.dtype.element_ty), mask=valid[:, None] & qmask[None, :])
        if NEED_OM:
            tl.store(gom + b * N * HW + (nn.to(tl.int64) * HW)[None, :] + pix[:, None],
                     dom.to(gom.dtype.element_ty), mask=valid[:, None] & (nn < N)[None, :])


@triton.jit
def _bwd_atoms_kernel(dkb, mu, om, perm, part, B, W, R, N, row0, band, SPLIT,
                      sm_b, sm_c, sm_h, so_b, so_c, so_h,
                      RP: tl.constexpr, NP: tl.constexpr, KKP: tl.constexpr, BK: tl.constexpr,
                      CHN: tl.constexpr, DOT_DTYPE: tl.constexpr, USE_DOT: tl.constexpr,
                      PREC: tl.constexpr, F64: tl.constexpr, OFF64: tl.constexpr):
    """Atom gradient of one band as a GEMM over its pixels: program (column block,
    split) sums ``coef^T @ dk`` over blocks of BK pixels, ``coef = mu (x) omega``
    recomputed from mu and omega, ``dk`` read from ``dkb``; one fp32 partial per
    program (summed afterwards: deterministic, no atomics)."""
    cols = tl.program_id(0) * CHN + tl.arange(0, CHN)
    split = tl.program_id(1)
    qq = tl.arange(0, RP)
    nn = tl.arange(0, NP)
    r = tl.load(perm + qq).to(tl.int64)
    total = B * band
    if F64:
        acc = tl.zeros((RP * NP, CHN), dtype=tl.float64)
    else:
        acc = tl.zeros((RP * NP, CHN), dtype=tl.float32)
    for t0 in range(split * BK, total, SPLIT * BK):
        t = t0 + tl.arange(0, BK)
        ok = t < total
        b = (t // band).to(tl.int64)
        px = t % band
        i = (row0 + px // W).to(tl.int64)
        j = px % W
        mu_t = _up(tl.load(mu + (b * sm_b + i * sm_h + j)[None, :] + r[:, None] * sm_c,
                           mask=ok[None, :] & (qq < R)[:, None], other=0.0), F64)  # (RP, BK)
        om_t = _up(tl.load(om + (b * so_b + i * so_h + j)[None, :] + nn.to(tl.int64)[:, None] * so_c,
                           mask=ok[None, :] & (nn < N)[:, None], other=0.0), F64)  # (NP, BK)
        coef_t = (mu_t[:, None, :] * om_t[None, :, :]).reshape(RP * NP, BK)
        dk = tl.load(dkb + (b * KKP)[:, None] * band + _wide(cols, OFF64)[None, :] * band
                     + _wide(px, OFF64)[:, None], mask=ok[:, None], other=0.0)  # (BK, CHN)
        acc += _mm(coef_t.to(DOT_DTYPE), dk.to(DOT_DTYPE), USE_DOT, PREC)
    rows = tl.arange(0, RP * NP)
    dst = part + split.to(tl.int64) * RP * NP * KKP + rows[:, None] * KKP + cols[None, :]
    tl.store(dst, acc)


@triton.jit
def _bwd_image_kernel(dx, kbuf, cdu, cdv, gimg,
                      C, H, W, HALF, Wp, row0, nrows, kbase, kpitch, kplane, sd_b, sd_c,
                      NCB: tl.constexpr, KKP: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr,
                      CH: tl.constexpr, F64: tl.constexpr, OFF64: tl.constexpr):
    """``dimage[p] = sum_taps k[p - tap, tap] * dx[p - tap]``: a gather over the windows
    covering each pixel, from the zero-padded dx and the kernels ``k`` that
    ``_fwd_kernel(STORE_K)`` wrote into the halo-padded band buffer (no atomics)."""
    b = tl.program_id(1).to(tl.int64)
    i, j, valid, ic, jc = _tile(tl.program_id(0), W, row0, nrows, TH, TW)
    c0 = tl.program_id(2) * NCB
    dx_b = dx + b * sd_b
    kb_b = kbuf + b * KKP * kplane
    pofs = _wide((ic + HALF) * Wp + jc + HALF, OFF64)
    kofs = _wide((ic - kbase) * kpitch + jc + HALF, OFF64)
    acc0, acc1, acc2, acc3 = _gather_image(dx_b, kb_b, cdu, cdv, c0, C, sd_c, pofs, kofs, Wp, kpitch, kplane,
                                           NCB, KKP, CH, TH * TW, F64, OFF64)
    HW = H * W
    o = gimg + b * C * HW
    pix = _wide(i * W + j, OFF64)
    _store_channels(o, c0, C, HW, pix, valid, acc0, acc1, acc2, acc3, NCB)


# ---------------------------------------------------------------- configurations

def _cfg(th, tw, ch, warps, stages, maxnreg=None):
    return triton.Config({"TH": th, "TW": tw, "CH": ch}, num_warps=warps, num_stages=stages, maxnreg=maxnreg)


# Hopper and Ampere: the fastest configurations of benchmarks/sweep_triton.py on an
# H200 (640x640 fp32, IEEE and TF32 dots; figures in benchmarks/HISTORY.md).
# Chunks of 32 taps beat 16 (fewer, larger dots); tiles of fewer than 128 pixels
# made the old masked gathers several times slower; register caps (maxnreg) gained
# next to nothing. The autotuner keys on the dictionary shape, channel count and variant.
_GPU_CONFIGS = [
    _cfg(8, 16, 32, 4, 2), _cfg(16, 16, 32, 8, 2), _cfg(4, 32, 32, 8, 2), _cfg(8, 16, 32, 8, 2),
    _cfg(8, 8, 32, 4, 2),
]
_COEF_GPU_CONFIGS = [
    _cfg(8, 16, 32, 4, 2), _cfg(8, 8, 32, 4, 2), _cfg(16, 16, 32, 8, 2), _cfg(4, 32, 16, 4, 2),
]
_IMAGE_GPU_CONFIGS = [
    _cfg(16, 16, 32, 8, 2), _cfg(8, 16, 32, 4, 2), _cfg(8, 16, 16, 4, 2), _cfg(16, 16, 16, 8, 2, 128),
]
# One fixed configuration under the interpreter (and for fp64 on a GPU, where
# the broadcast-multiply path needs small tiles).
_FIXED = {"TH": 4, "TW": 4, "CH": 16}
_FIXED_GPU_F64 = {"TH": 4, "TW": 8, "CH": 16}
# The atom-gradient GEMM (fixed: its grid and partials are sized before the launch):
# blocks of BK pixels, CHN columns per program.
_ATOMS_GPU = {"BK": 64, "CHN": 64, "num_warps": 8}  # tensor-core dots (TF32, fp16, bf16)
_ATOMS_GPU_IEEE = {"BK": 64, "CHN": 64, "num_warps": 4}  # IEEE fp32: 4 warps beat 8 (HISTORY.md)
_ATOMS_FIXED = {"BK": 16, "CHN": 16, "num_warps": 4}


def _tuned(kernel, configs, key):
    return triton.autotune(configs=configs, key=list(key))(kernel)


if _INTERPRET:
    _fwd_tuned = _bwd_coef_tuned = _bwd_image_tuned = None
else:
    _fwd_tuned = _tuned(_fwd_kernel, _GPU_CONFIGS, ("C", "R", "N", "KK", "STORE_K", "OFF64"))
    _bwd_coef_tuned = _tuned(_bwd_coef_kernel, _COEF_GPU_CONFIGS,
                             ("C", "R", "N", "KK", "NEED_MU", "NEED_OM", "STORE_DK", "OFF64"))
    _bwd_image_tuned = _tuned(_bwd_image_kernel, _IMAGE_GPU_CONFIGS, ("C", "KKP", "OFF64"))


# Launch configurations forced per kernel name (benchmarks/sweep_triton.py times
# each kernel over many); empty: the autotuner (GPU) or the fixed ones decide.
_FORCED: dict = {}


def _launch(kernel, tuned, grid, f64, *args, **kwargs):
    """Run ``kernel`` with the fixed configuration (interpreter, fp64), a forced one,
    or its autotuned twin."""
    forced = _FORCED.get(kernel.__name__)
    if forced is not None:
        kernel[grid(forced)](*args, **kwargs, **forced)
    elif tuned is None or f64:
        meta = _FIXED_GPU_F64 if (f64 and not _INTERPRET) else _FIXED
        kernel[grid(meta)](*args, **kwargs, **meta, num_warps=4)
    else:
        tuned[grid](*args, **kwargs)


# ---------------------------------------------------------------- host side

def _next_pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


def _channel_block(c: int) -> int:
    """Channels one program applies its kernels to (all of an RGB image); more
    channels are split over programs, the last block re-reading its last channel."""
    return min(c, 4)


_INT32_MAX = 2**31 - 1


def _off64(*element_counts: int) -> bool:
    """Whether in-kernel offsets need 64 bits (some buffer's elements past the int32 range)."""
    return max(element_counts) >= _INT32_MAX


def _padded(x: torch.Tensor, half: int) -> torch.Tensor:
    """Contiguous copy of (B, C, H, W) ``x`` with ``half`` zero rows and columns on every
    side: the gathers then read real memory at every tap of every pixel, unmasked."""
    B, C, H, W = x.shape
    out = x.new_zeros((B, C, H + 2 * half, W + 2 * half))
    out[:, :, half:half + H, half:half + W] = x
    return out


@functools.lru_cache(maxsize=64)
def _tables_cpu(k: int, support: tuple, rp: int, kkp: int):
    """Index tables of one (K, support) layout; see the module docstring."""
    kk, r_ = k * k, len(support)
    half = k // 2
    taps = sorted(((max(abs(u - half), abs(v - half)), u, v) for u in range(k) for v in range(k)))
    pad = kkp - kk
    order = sorted(range(r_), key=lambda r: -support[r])
    halves = [support[r] // 2 for r in order]
    i32 = dict(dtype=torch.int32)
    return dict(
        cring=torch.tensor([t[0] for t in taps] + [k] * pad, **i32),
        cdu=torch.tensor([t[1] - half for t in taps] + [0] * pad, **i32),
        cdv=torch.tensor([t[2] - half for t in taps] + [0] * pad, **i32),
        perm=torch.tensor(order + [0] * (rp - r_), **i32),
        hs=torch.tensor(halves + [-1] * (rp - r_), **i32),
        # flat tap index u*K+v of each column, scale order, support mask (sorted scale, column)
        tap=torch.tensor([t[1] * k + t[2] for t in taps], dtype=torch.long),
        order=torch.tensor(order, dtype=torch.long),
        inside=torch.tensor([[t[0] <= h for t in taps] for h in halves]),
    )


@functools.lru_cache(maxsize=64)
def _tables(k: int, support: tuple, rp: int, kkp: int, device: torch.device):
    """:func:`_tables_cpu` on ``device``, cached. On a GPU they are copied from a
    helper thread: torch.compile's CUDA graphs ("reduce-overhead") send every
    allocation of the calling thread to the graph's private pool while they warm
    up and record, and these long-lived tensors must not stay behind in it (the
    graph tree rejects that: "tensors in the cudagraph pool not tracked as outputs")."""
    return _on_device(_tables_cpu(k, support, rp, kkp), device)


def _on_device(tables: dict, device: torch.device) -> dict:
    """The CPU tensors ``tables`` copied to ``device`` (from a helper thread on a GPU:
    see :func:`_tables`); cache the result."""
    if device.type != "cuda":
        return {name: t.to(device) for name, t in tables.items()}
    out, errors = {}, []

    def copy():
        try:
            with torch.cuda.device(device):
                out.update({name: t.to(device) for name, t in tables.items()})
                torch.cuda.current_stream(device).synchronize()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(e)

    worker = threading.Thread(target=copy, name="inik-ifm-tables")
    worker.start()
    worker.join()
    if errors:
        raise errors[0]
    return out


class _Plan:
    """Tables and the padded synthesis matrix for one call."""

    def __init__(self, atoms: torch.Tensor, support: Sequence[int]):
        self.R, self.N, self.K = atoms.shape[0], atoms.shape[1], atoms.shape[-1]
        self.KK = self.K * self.K
        self.half = self.K // 2
        self.f64 = atoms.dtype == torch.float64
        self.use_dot = not self.f64
        self.RP = _next_pow2(self.R)
        self.NP = max(_next_pow2(self.N), 16 if self.use_dot else 1)
        ch_max = _FIXED["CH"] if _INTERPRET else _CH_MAX
        self.KKP = -(-self.KK // ch_max) * ch_max
        self.dot_dtype = atoms.dtype
        if atoms.dtype in (torch.float16, torch.bfloat16):
            self.prec = "tf32"  # ignored for half operands; the default every fp16 matmul uses
        else:
            self.prec = "ieee" if (_INTERPRET or torch.get_float32_matmul_precision() == "highest") else "tf32"
        self.acc_dtype = torch.float64 if self.f64 else torch.float32
        self.acc_bytes = 8 if self.f64 else 4
        t = _tables(self.K, tuple(int(s) for s in support), self.RP, self.KKP, atoms.device)
        self.cring, self.cdu, self.cdv, self.perm, self.hs = t["cring"], t["cdu"], t["cdv"], t["perm"], t["hs"]
        self.tap, self.order, self.inside = t["tap"], t["order"], t["inside"]

        a = atoms.to(self.acc_dtype).reshape(self.R, self.N, self.KK)[self.order][:, :, self.tap]
        A = torch.zeros((self.RP, self.NP, self.KKP), dtype=self.dot_dtype, device=atoms.device)
        A[:self.R, :self.N, :self.KK] = torch.where(self.inside[:, None, :], a, 0)  # not a product: NaN * 0
        self.A = A

    def consts(self) -> dict:
        return dict(RP=self.RP, NP=self.NP, KKP=self.KKP, USE_DOT=self.use_dot, PREC=self.prec, F64=self.f64)

    def atoms_grad(self, summed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(RP, NP, KKP) sorted-layout sums -> (R, N, K, K), zero outside each support."""
        g_sorted = torch.where(self.inside[:, None, :], summed[:self.R, :self.N, :self.KK], 0)
        g = torch.zeros((self.R, self.N, self.KK), dtype=summed.dtype, device=summed.device)
        g[self.order[:, None, None], torch.arange(self.N, device=g.device)[None, :, None],
          self.tap[None, None, :]] = g_sorted
        return g.reshape(self.R, self.N, self.K, self.K).to(dtype)


def _rows(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """The tensors as the kernels read them: any batch, channel and row strides,
    unit column stride (a copy only for other layouts, e.g. channels_last)."""
    return [t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous() for t in tensors]


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


def _tile_grid(rows: int, W: int, *more: int):
    def grid(meta):
        return (triton.cdiv(rows, meta["TH"]) * triton.cdiv(W, meta["TW"]), *more)
    return grid


def ifm_triton(image, mu, omega, atoms, support: Sequence[int]):
    """Fused forward: (B, C, H, W) output of the inputs' dtype."""
    mu, omega = _rows(mu, omega)
    plan = _Plan(atoms, support)
    B, C, H, W = image.shape
    img = _padded(image, plan.half)
    out = torch.empty((B, C, H, W), dtype=image.dtype, device=image.device)
    ncb = _channel_block(C)
    _launch(_fwd_kernel, _fwd_tuned, _tile_grid(H, W, B, triton.cdiv(C, ncb)), plan.f64,
            img, mu, omega, plan.A, plan.perm, plan.hs, plan.cdu, plan.cdv, plan.cring, out, out,
            C, H, W, plan.R, plan.N, plan.KK, plan.half, img.shape[3], 0, H, 0, 0, 0,
            img.stride(0), img.stride(1), *_strides(mu), *_strides(omega),
            STORE_K=False, NCB=ncb, OFF64=_off64(img[0].numel()), **plan.consts())
    return out


def _atoms_split(n_blocks: int, n_col_blocks: int, device: torch.device) -> int:
    """How many programs share the pixel reduction of one column block."""
    if _INTERPRET or device.type != "cuda":
        return min(n_blocks, 2)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(n_blocks, (4 * sms) // max(1, n_col_blocks)))


def _coef_and_atoms(grad, img, mu, omega, plan: _Plan, needs, g_mu, g_omega):
    """mu/omega gradients (into ``g_mu``/``g_omega``) and the atom-gradient sums
    (RP, NP, KKP) or None. With the atom gradient, ``dk`` goes through a buffer of
    at most ``_KBUF_BYTES`` per band of rows, reduced by the GEMM after each band."""
    B, C, H, W = grad.shape
    need_mu, need_om, need_at = bool(needs[1]), bool(needs[2]), bool(needs[3])
    rows = H
    if need_at:
        rows = max(1, min(H, _KBUF_BYTES // (B * plan.KKP * W * plan.acc_bytes)))
        dkb = torch.empty((B, plan.KKP, rows * W), dtype=plan.acc_dtype, device=grad.device)
    else:
        dkb = grad  # not written
    gemm = (_FORCED.get("_bwd_atoms_kernel") or (_ATOMS_FIXED if (_INTERPRET or plan.f64) else
            _ATOMS_GPU_IEEE if (plan.dot_dtype == torch.float32 and plan.prec == "ieee") else _ATOMS_GPU))
    dot_dtype = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16,
                 torch.float32: tl.float32, torch.float64: tl.float64}[plan.dot_dtype]
    off64 = _off64(img[0].numel(), plan.KKP * rows * W, H * W)
    summed = None
    for r0 in range(0, H, rows):
        nr = min(rows, H - r0)
        _launch(_bwd_coef_kernel, _bwd_coef_tuned, _tile_grid(nr, W, B), plan.f64,
                grad, img, mu, omega, plan.A, plan.perm, plan.hs, plan.cdu, plan.cdv, plan.cring,
                g_mu, g_omega, dkb,
                C, H, W, plan.R, plan.N, plan.KK, plan.half, img.shape[3], r0, nr,
                *_strides(grad), img.stride(0), img.stride(1), *_strides(mu), *_strides(omega),
                NEED_MU=need_mu, NEED_OM=need_om, STORE_DK=need_at, OFF64=off64, **plan.consts())
        if not need_at:
            continue
        n_cb = plan.KKP // gemm["CHN"]
        split = _atoms_split(triton.cdiv(B * nr * W, gemm["BK"]), n_cb, grad.device)
        part = torch.empty((split, plan.RP * plan.NP, plan.KKP), dtype=plan.acc_dtype, device=grad.device)
        _bwd_atoms_kernel[(n_cb, split)](
            dkb, mu, omega, plan.perm, part, B, W, plan.R, plan.N, r0, nr * W, split,
            *_strides(mu), *_strides(omega), DOT_DTYPE=dot_dtype, OFF64=off64, **gemm, **plan.consts())
        summed = part.sum(0) if summed is None else summed + part.sum(0)
    return None if summed is None else summed.view(plan.RP, plan.NP, plan.KKP)


def _image_grad(grad, img, mu, omega, plan: _Plan):
    """The image gradient, band by band: ``_fwd_kernel(STORE_K)`` writes the band's
    kernels plus a K//2 halo into a zero-bordered buffer of at most ``_KBUF_BYTES``,
    ``_bwd_image_kernel`` gathers them against the zero-padded dx."""
    B, C, H, W = grad.shape
    h = plan.half
    dxp = _padded(grad, h)
    g_image = torch.empty((B, C, H, W), dtype=grad.dtype, device=grad.device)
    kpitch = W + 2 * h
    band = max(plan.K, _KBUF_BYTES // (B * plan.KKP * kpitch * plan.acc_bytes) - 2 * h)
    band = min(band, H)
    # zeroed once: the halo columns are never written; the rows below the image are
    # zeroed before the last band (a NaN kept there from the band before would reach
    # real pixels through 0 * NaN)
    kbuf = torch.zeros((B, plan.KKP, band + 2 * h, kpitch), dtype=plan.acc_dtype, device=grad.device)
    kplane = (band + 2 * h) * kpitch
    off64 = _off64(dxp[0].numel(), plan.KKP * kplane, H * W)
    ncb = _channel_block(C)
    for r0 in range(0, H, band):
        r1 = min(H, r0 + band)
        k0, k1 = max(0, r0 - h), min(H, r1 + h)
        kbuf[:, :, k1 - (r0 - h):].zero_()  # buffer row t holds image row r0 - h + t
        _launch(_fwd_kernel, _fwd_tuned, _tile_grid(k1 - k0, W, B), plan.f64,
                img, mu, omega, plan.A, plan.perm, plan.hs, plan.cdu, plan.cdv, plan.cring,
                g_image, kbuf, C, H, W, plan.R, plan.N, plan.KK, h, img.shape[3], k0, k1 - k0,
                r0 - h, kpitch, kplane, img.stride(0), img.stride(1), *_strides(mu), *_strides(omega),
                STORE_K=True, NCB=ncb, OFF64=off64, **plan.consts())
        _launch(_bwd_image_kernel, _bwd_image_tuned, _tile_grid(r1 - r0, W, B, triton.cdiv(C, ncb)), plan.f64,
                dxp, kbuf, plan.cdu, plan.cdv, g_image, C, H, W, h, dxp.shape[3], r0, r1 - r0,
                r0 - h, kpitch, kplane, dxp.stride(0), dxp.stride(1),
                NCB=ncb, KKP=plan.KKP, F64=plan.f64, OFF64=off64)
    return g_image


def ifm_triton_backward(grad, image, mu, omega, atoms, support: Sequence[int], needs):
    """Gradients for (image, mu, omega, atoms); an unneeded one is None."""
    grad, mu, omega = _rows(grad, mu, omega)
    plan = _Plan(atoms, support)
    # the patch gathers (dk) read the padded image; the image gradient does not read it
    img = _padded(image, plan.half) if (needs[1] or needs[2] or needs[3]) else image
    g_image = g_mu = g_omega = g_atoms = None
    if needs[1] or needs[2] or needs[3]:
        g_mu = torch.empty(mu.shape, dtype=mu.dtype, device=mu.device) if needs[1] else mu
        g_omega = torch.empty(omega.shape, dtype=omega.dtype, device=omega.device) if needs[2] else omega
        summed = _coef_and_atoms(grad, img, mu, omega, plan, needs, g_mu, g_omega)
        g_mu = g_mu if needs[1] else None
        g_omega = g_omega if needs[2] else None
        if summed is not None:
            g_atoms = plan.atoms_grad(summed, atoms.dtype)
    if needs[0]:
        g_image = _image_grad(grad, img, mu, omega, plan)
    return g_image, g_mu, g_omega, g_atoms


# ---------------------------------------------------------------- backend

def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:2])


@functools.lru_cache(maxsize=None)
def _interpreter_unusable() -> Optional[str]:
    """Triton's interpreter before 3.7 converts loop bounds with ``int(array)``, which
    NumPy 2.4 refuses for the one-element arrays it holds kernel arguments in."""
    import numpy as np

    if _version(triton.__version__) < (3, 7) and _version(np.__version__) >= (2, 4):
        return (f"the interpreter of Triton {triton.__version__} cannot run these kernels with "
                f"NumPy {np.__version__} (Triton 3.7 or later, or NumPy before 2.4, can)")
    return None


def _unavailable(device: torch.device) -> Optional[str]:
    if device.type == "cuda":
        if _INTERPRET:
            return "TRITON_INTERPRET=1 is set: Triton kernels run on CPU tensors only"
        return None if torch.cuda.is_available() else "CUDA is not available"
    if device.type == "cpu":
        if _INTERPRET:
            return _interpreter_unusable()
        return "CPU tensors need the Triton interpreter (TRITON_INTERPRET=1 set before triton is imported)"
    return f"Triton kernels do not run on {device.type} tensors"


MAX_GRID_BATCH = 65535  # CUDA's limit on grid axes 1 and 2; the kernels put the batch on axis 1


def batch_chunked(forward, backward) -> tuple:
    """``forward`` and ``backward`` run on batches of at most :data:`MAX_GRID_BATCH` images
    (a larger batch cannot launch), the atoms' gradient summed over the chunks in order."""
    def chunks(b: int):
        step = MAX_GRID_BATCH
        return [slice(i, min(i + step, b)) for i in range(0, b, step)]

    @functools.wraps(forward)
    def chunked_forward(image, mu, omega, atoms, support):
        parts = chunks(image.shape[0])
        if len(parts) == 1:
            return forward(image, mu, omega, atoms, support)
        return torch.cat([forward(image[p], mu[p], omega[p], atoms, support) for p in parts])

    @functools.wraps(backward)
    def chunked_backward(grad, image, mu, omega, atoms, support, needs):
        parts = chunks(image.shape[0])
        if len(parts) == 1:
            return backward(grad, image, mu, omega, atoms, support, needs)
        each = [backward(grad[p], image[p], mu[p], omega[p], atoms, support, needs) for p in parts]
        cat = [torch.cat([e[i] for e in each]) if needs[i] else None for i in range(3)]
        acc = torch.promote_types(atoms.dtype, torch.float32)  # float64 stays, half precision sums in float32
        g_atoms = torch.stack([e[3] for e in each]).sum(0, dtype=acc).to(atoms.dtype) if needs[3] else None
        return (*cat, g_atoms)

    return chunked_forward, chunked_backward


def triton_backend() -> Backend:
    """The Triton backend of :func:`inik.ops.ifm` (ImportError when triton is missing)."""
    return Backend("triton", *batch_chunked(ifm_triton, ifm_triton_backward), _unavailable)

"""Fused Triton forward and backward of the IFM (``backend="triton"``).

    x[b,c,i,j] = <k[b,i,j], patch_{K x K}(image[b,c]) at (i,j)>,
    k[b,i,j]   = sum_{r,n} mu[b,r,i,j] * omega[b,n,i,j] * atoms[r,n]   (support-masked)

(ARCHITECTURE.md section 2). Nothing of size (R*N, H, W) ever reaches global memory.

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
  (``tl.dot``), then the chunk's K x K patch taps of every channel (masked loads,
  zeros outside the image) times ``k_chunk``; with ``STORE_K`` it writes
  ``k`` for a band of rows instead (used by the image gradient).
* ``_bwd_coef_kernel``: ``dk = sum_c dx * patch``; ``dcoef = dk @ A^T``;
  ``dmu = sum_n omega * dcoef``, ``domega = sum_r mu * dcoef``.
* ``_bwd_atoms_kernel``: grid (column chunks, splits); each program reduces
  ``coef^T @ dk`` over its share of the tiles into an fp32 partial; the partials
  are summed with torch afterwards (deterministic, no atomics).
* ``_bwd_image_kernel``: ``dimage[p] = sum_taps k[p - tap, tap] * dx[p - tap]``, a
  gather over the windows covering each pixel, reading ``k`` that
  ``_fwd_kernel(STORE_K)`` wrote for a band of rows plus its K//2 halo; bands
  keep that buffer under ``_KBUF_BYTES`` (no atomics).

A program holds up to four channels (``CB``, all of an RGB image); more channels
are split over a third grid axis in the forward and the image gradient (the
forward then re-synthesises ``k`` per block) and looped over for ``dk``.

Inputs are read in place through their batch, channel and row strides when
their columns are contiguous (channel slices such as ``mu[:, 1:]``, crops of a
larger image, expanded batches); other layouts (channels_last, transposed) are
copied to contiguous first. Outputs and gradients are written contiguous. Half inputs
(fp16/bf16) use tensor-core dots in their own dtype with fp32 accumulation;
fp32 inputs follow ``torch.get_float32_matmul_precision()`` ("highest": IEEE
fp32, else TF32); fp64 (gradcheck, interpreter) multiplies and sums without
``tl.dot``. Batch and channel offsets are 64-bit.
"""

from __future__ import annotations

import functools
import os
from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from inik.ops.ifm import Backend

# Triton decides at decoration (import) time whether kernels are interpreted.
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")
# Upper bound on the per-band buffer of synthesised kernels the image gradient reads.
_KBUF_BYTES = 64 << 20
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
    """Image rows/cols of tile ``pid`` of the region rows [row0, row0 + nrows); validity."""
    n_tw = tl.cdiv(W, TW)
    ti = pid // n_tw
    tj = pid % n_tw
    p = tl.arange(0, TH * TW)
    i = row0 + ti * TH + p // TW
    j = tj * TW + p % TW
    valid = (i < row0 + nrows) & (j < W)
    return i, j, valid


@triton.jit
def _up(x, F64: tl.constexpr):
    if F64:
        return x.to(tl.float64)
    else:
        return x.to(tl.float32)


@triton.jit
def _patch(img_b, i, j, valid, cdu, cdv, cols, cc, C, H, W, KK, s_c, s_h, F64: tl.constexpr):
    """(BP, CB, CH) image taps ``img[c, i + du, j + dv]``, zero outside the image
    (``s_c``, ``s_h``: channel and row strides of the image)."""
    du = tl.load(cdu + cols)
    dv = tl.load(cdv + cols)
    ii = i[:, None] + du[None, :]
    jj = j[:, None] + dv[None, :]
    inb = (ii >= 0) & (ii < H) & (jj >= 0) & (jj < W) & valid[:, None] & (cols < KK)[None, :]
    off = (cc.to(tl.int64) * s_c)[None, :, None] + (ii.to(tl.int64) * s_h + jj)[:, None, :]
    m = inb[:, None, :] & (cc < C)[None, :, None]
    return _up(tl.load(img_b + off, mask=m, other=0.0), F64)


@triton.jit
def _planes(base, ch, nch, i, j, valid, s_c, s_h, F64: tl.constexpr):
    """(BP, len(ch)) values ``base[ch, i, j]`` of channels ``ch < nch``."""
    off = (ch.to(tl.int64) * s_c)[None, :] + (i.to(tl.int64) * s_h + j)[:, None]
    return _up(tl.load(base + off, mask=valid[:, None] & (ch < nch)[None, :], other=0.0), F64)


@triton.jit
def _dk(dx_b, img_b, i, j, valid, cdu, cdv, cols, C, H, W, KK, sd_c, sd_h, si_c, si_h,
        BP: tl.constexpr, CB: tl.constexpr, CH: tl.constexpr, F64: tl.constexpr):
    """(BP, CH) ``dk = sum_c dx[c] * patch[c]`` for one column chunk, channels in blocks of CB."""
    if F64:
        dk = tl.zeros((BP, CH), dtype=tl.float64)
    else:
        dk = tl.zeros((BP, CH), dtype=tl.float32)
    for c0 in range(0, C, CB):
        cc = c0 + tl.arange(0, CB)
        dx_t = _planes(dx_b, cc, C, i, j, valid, sd_c, sd_h, F64)
        patch = _patch(img_b, i, j, valid, cdu, cdv, cols, cc, C, H, W, KK, si_c, si_h, F64)
        dk += tl.sum(patch * dx_t[:, :, None], axis=1)
    return dk


# ---------------------------------------------------------------- kernels
# Inputs are read through (batch, channel, row) strides with unit column stride;
# outputs and gradients are written contiguous.

@triton.jit
def _fwd_kernel(img, mu, om, A, perm, hs, cdu, cdv, cring, out, kbuf,
                C, H, W, R, N, KK, row0, nrows,
                si_b, si_c, si_h, sm_b, sm_c, sm_h, so_b, so_c, so_h,
                STORE_K: tl.constexpr, CB: tl.constexpr, RP: tl.constexpr, NP: tl.constexpr,
                KKP: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr, CH: tl.constexpr,
                USE_DOT: tl.constexpr, PREC: tl.constexpr, F64: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    i, j, valid = _tile(tl.program_id(0), W, row0, nrows, TH, TW)
    HW = H * W
    nn = tl.arange(0, NP)
    cc = tl.program_id(2) * CB + tl.arange(0, CB)  # this program's channels
    mu_b = mu + b * sm_b
    img_b = img + b * si_b
    mu_pix = i.to(tl.int64) * sm_h + j
    om_t = _planes(om + b * so_b, nn, N, i, j, valid, so_c, so_h, F64)
    halves = tl.load(hs + tl.arange(0, RP))
    if F64:
        acc = tl.zeros((TH * TW, CB), dtype=tl.float64)
    else:
        acc = tl.zeros((TH * TW, CB), dtype=tl.float32)
    for c0 in range(0, KKP, CH):
        cols = c0 + tl.arange(0, CH)
        # scales whose support reaches the chunk's innermost ring: a prefix of the sorted scales
        nq = tl.sum((halves >= tl.load(cring + c0)).to(tl.int32), axis=0)
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
            kb = kbuf + (b * KKP + cols.to(tl.int64))[None, :] * nrows * W + ((i - row0) * W + j)[:, None]
            tl.store(kb, kc.to(kbuf.dtype.element_ty), mask=valid[:, None] & (cols < KK)[None, :])
        else:
            patch = _patch(img_b, i, j, valid, cdu, cdv, cols, cc, C, H, W, KK, si_c, si_h, F64)
            acc += tl.sum(patch * kc[:, None, :], axis=2)
    if not STORE_K:
        o = out + b * C * HW + (cc.to(tl.int64) * HW)[None, :] + (i * W + j)[:, None]
        tl.store(o, acc.to(out.dtype.element_ty), mask=valid[:, None] & (cc < C)[None, :])


@triton.jit
def _bwd_coef_kernel(dx, img, mu, om, A, perm, cdu, cdv, gmu, gom,
                     C, H, W, R, N, KK,
                     sd_b, sd_c, sd_h, si_b, si_c, si_h, sm_b, sm_c, sm_h, so_b, so_c, so_h,
                     NEED_MU: tl.constexpr, NEED_OM: tl.constexpr,
                     CB: tl.constexpr, RP: tl.constexpr, NP: tl.constexpr, KKP: tl.constexpr,
                     TH: tl.constexpr, TW: tl.constexpr, CH: tl.constexpr,
                     USE_DOT: tl.constexpr, PREC: tl.constexpr, F64: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    i, j, valid = _tile(tl.program_id(0), W, 0, H, TH, TW)
    HW = H * W
    pix = i * W + j
    nn = tl.arange(0, NP)
    qq = tl.arange(0, RP)
    rows = (qq[:, None] * NP + nn[None, :]).reshape(RP * NP)
    if F64:
        dcoef = tl.zeros((TH * TW, RP * NP), dtype=tl.float64)
    else:
        dcoef = tl.zeros((TH * TW, RP * NP), dtype=tl.float32)
    for c0 in range(0, KKP, CH):
        cols = c0 + tl.arange(0, CH)
        dk = _dk(dx + b * sd_b, img + b * si_b, i, j, valid, cdu, cdv, cols, C, H, W, KK,
                 sd_c, sd_h, si_c, si_h, TH * TW, CB, CH, F64)
        at = tl.load(A + rows[None, :] * KKP + cols[:, None])  # (CH, RP*NP) = A[:, chunk]^T
        dcoef += _mm(dk.to(at.dtype), at, USE_DOT, PREC)
    dcoef3 = dcoef.reshape(TH * TW, RP, NP)
    r = tl.load(perm + qq)
    qmask = qq < R
    if NEED_MU:
        om_t = _planes(om + b * so_b, nn, N, i, j, valid, so_c, so_h, F64)
        dmu = tl.sum(dcoef3 * om_t[:, None, :], axis=2)
        tl.store(gmu + b * R * HW + (r.to(tl.int64) * HW)[None, :] + pix[:, None],
                 dmu.to(gmu.dtype.element_ty), mask=valid[:, None] & qmask[None, :])
    if NEED_OM:
        mu_t = tl.where(qmask[None, :], _planes(mu + b * sm_b, r, R, i, j, valid, sm_c, sm_h, F64), 0.0)
        dom = tl.sum(dcoef3 * mu_t[:, :, None], axis=1)
        tl.store(gom + b * N * HW + (nn.to(tl.int64) * HW)[None, :] + pix[:, None],
                 dom.to(gom.dtype.element_ty), mask=valid[:, None] & (nn < N)[None, :])


@triton.jit
def _bwd_atoms_kernel(dx, img, mu, om, perm, cdu, cdv, part,
                      B, C, H, W, R, N, KK, SPLIT,
                      sd_b, sd_c, sd_h, si_b, si_c, si_h, sm_b, sm_c, sm_h, so_b, so_c, so_h,
                      CB: tl.constexpr, RP: tl.constexpr, NP: tl.constexpr, KKP: tl.constexpr,
                      TH: tl.constexpr, TW: tl.constexpr, CH: tl.constexpr,
                      DOT_DTYPE: tl.constexpr, USE_DOT: tl.constexpr, PREC: tl.constexpr,
                      F64: tl.constexpr):
    c0 = tl.program_id(0) * CH
    split = tl.program_id(1)
    cols = c0 + tl.arange(0, CH)
    nn = tl.arange(0, NP)
    qq = tl.arange(0, RP)
    r = tl.load(perm + qq)
    tiles = tl.cdiv(H, TH) * tl.cdiv(W, TW)
    if F64:
        acc = tl.zeros((RP * NP, CH), dtype=tl.float64)
    else:
        acc = tl.zeros((RP * NP, CH), dtype=tl.float32)
    for t in range(split, B * tiles, SPLIT):
        b = (t // tiles).to(tl.int64)
        i, j, valid = _tile(t % tiles, W, 0, H, TH, TW)
        mu_t = tl.where((qq < R)[None, :], _planes(mu + b * sm_b, r, R, i, j, valid, sm_c, sm_h, F64), 0.0)
        om_t = _planes(om + b * so_b, nn, N, i, j, valid, so_c, so_h, F64)
        coef = (mu_t[:, :, None] * om_t[:, None, :]).reshape(TH * TW, RP * NP)
        dk = _dk(dx + b * sd_b, img + b * si_b, i, j, valid, cdu, cdv, cols, C, H, W, KK,
                 sd_c, sd_h, si_c, si_h, TH * TW, CB, CH, F64)
        acc += _mm(tl.trans(coef.to(DOT_DTYPE)), dk.to(DOT_DTYPE), USE_DOT, PREC)
    rows = tl.arange(0, RP * NP)
    dst = part + split.to(tl.int64) * RP * NP * KKP + rows[:, None] * KKP + cols[None, :]
    tl.store(dst, acc)


@triton.jit
def _bwd_image_kernel(dx, kbuf, cdu, cdv, gimg,
                      C, H, W, KK, row0, nrows, krow0, knrows, sd_b, sd_c, sd_h,
                      CB: tl.constexpr, KKP: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr,
                      CH: tl.constexpr, F64: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    i, j, valid = _tile(tl.program_id(0), W, row0, nrows, TH, TW)
    HW = H * W
    cc = tl.program_id(2) * CB + tl.arange(0, CB)  # this program's channels
    dx_b = dx + b * sd_b
    if F64:
        acc = tl.zeros((TH * TW, CB), dtype=tl.float64)
    else:
        acc = tl.zeros((TH * TW, CB), dtype=tl.float32)
    for c0 in range(0, KKP, CH):
        cols = c0 + tl.arange(0, CH)
        # pixel q = p - tap uses tap `col` of its kernel on p
        qi = i[:, None] - tl.load(cdu + cols)[None, :]
        qj = j[:, None] - tl.load(cdv + cols)[None, :]
        inb = (qi >= 0) & (qi < H) & (qj >= 0) & (qj < W) & valid[:, None] & (cols < KK)[None, :]
        kb = kbuf + (b * KKP + cols.to(tl.int64))[None, :] * knrows * W + ((qi - krow0) * W + qj)
        kq = _up(tl.load(kb, mask=inb, other=0.0), F64)
        off = (cc.to(tl.int64) * sd_c)[None, :, None] + (qi.to(tl.int64) * sd_h + qj)[:, None, :]
        dxq = _up(tl.load(dx_b + off, mask=inb[:, None, :] & (cc < C)[None, :, None], other=0.0), F64)
        acc += tl.sum(dxq * kq[:, None, :], axis=2)
    o = gimg + b * C * HW + (cc.to(tl.int64) * HW)[None, :] + (i * W + j)[:, None]
    tl.store(o, acc.to(gimg.dtype.element_ty), mask=valid[:, None] & (cc < C)[None, :])


# ---------------------------------------------------------------- configurations

def _cfg(th, tw, ch, warps, stages):
    return triton.Config({"TH": th, "TW": tw, "CH": ch}, num_warps=warps, num_stages=stages)


# Hopper and Ampere: pixel tiles of 64-128 (the M of the dots), column chunks of
# 32-64 taps; the autotuner keys on the dictionary shape and the channel count.
_GPU_CONFIGS = [
    _cfg(8, 8, 32, 4, 2), _cfg(8, 8, 64, 4, 2), _cfg(8, 16, 32, 4, 2),
    _cfg(8, 16, 64, 8, 2), _cfg(16, 8, 32, 4, 3), _cfg(16, 16, 32, 8, 2),
]
_BWD_GPU_CONFIGS = [
    _cfg(8, 8, 32, 4, 2), _cfg(8, 8, 64, 4, 2), _cfg(8, 16, 32, 8, 2), _cfg(4, 16, 32, 4, 2),
]
# One fixed configuration under the interpreter (and for fp64 on a GPU, where
# the broadcast-multiply path needs small tiles).
_FIXED = {"TH": 4, "TW": 4, "CH": 16}
_FIXED_GPU_F64 = {"TH": 4, "TW": 8, "CH": 16}
# The atom-gradient reduction (not autotuned: its partials' layout depends on CH);
# 8 warps keep its (RP*NP, CH) accumulator and (BP, RP*NP) coefficients unspilled.
_ATOMS_GPU = {"TH": 8, "TW": 8, "CH": 32}
_ATOMS_GPU_WARPS = 8

def _tuned(kernel, configs, key=("C", "R", "N", "KK")):
    return triton.autotune(configs=configs, key=list(key))(kernel)


if _INTERPRET:
    _fwd_tuned = _bwd_coef_tuned = _bwd_image_tuned = None
else:
    _fwd_tuned = _tuned(_fwd_kernel, _GPU_CONFIGS, key=("C", "R", "N", "KK", "STORE_K"))
    _bwd_coef_tuned = _tuned(_bwd_coef_kernel, _BWD_GPU_CONFIGS)
    _bwd_image_tuned = _tuned(_bwd_image_kernel, _BWD_GPU_CONFIGS, key=("C", "KK"))


def _launch(kernel, tuned, grid, f64, *args, **kwargs):
    """Run ``kernel`` with the fixed configuration (interpreter, fp64) or its autotuned twin."""
    if tuned is None or f64:
        meta = _FIXED_GPU_F64 if (f64 and not _INTERPRET) else _FIXED
        kernel[grid(meta)](*args, **kwargs, **meta, num_warps=4)
    else:
        tuned[grid](*args, **kwargs)


# ---------------------------------------------------------------- host side

def _next_pow2(x: int) -> int:
    return 1 << max(0, (int(x) - 1).bit_length())


def _channel_block(c: int) -> int:
    """Channels one program holds at once: all of an RGB image; more are split
    over programs (forward, image gradient) or looped over (dk)."""
    return min(_next_pow2(c), 4)


@functools.lru_cache(maxsize=64)
def _tables(k: int, support: tuple, rp: int, kkp: int, device: torch.device):
    """Index tables of one (K, support) layout; see the module docstring."""
    kk, r_ = k * k, len(support)
    half = k // 2
    taps = sorted(((max(abs(u - half), abs(v - half)), u, v) for u in range(k) for v in range(k)))
    pad = kkp - kk
    order = sorted(range(r_), key=lambda r: -support[r])
    halves = [support[r] // 2 for r in order]
    i32 = dict(dtype=torch.int32, device=device)
    return dict(
        cring=torch.tensor([t[0] for t in taps] + [k] * pad, **i32),
        cdu=torch.tensor([t[1] - half for t in taps] + [0] * pad, **i32),
        cdv=torch.tensor([t[2] - half for t in taps] + [0] * pad, **i32),
        perm=torch.tensor(order + [0] * (rp - r_), **i32),
        hs=torch.tensor(halves + [-1] * (rp - r_), **i32),
        # flat tap index u*K+v of each column, scale order, support mask (sorted scale, column)
        tap=torch.tensor([t[1] * k + t[2] for t in taps], dtype=torch.long, device=device),
        order=torch.tensor(order, dtype=torch.long, device=device),
        inside=torch.tensor([[t[0] <= h for t in taps] for h in halves], device=device),
    )


class _Plan:
    """Tables and the padded synthesis matrix for one call."""

    def __init__(self, atoms: torch.Tensor, support: Sequence[int]):
        self.R, self.N, self.K = atoms.shape[0], atoms.shape[1], atoms.shape[-1]
        self.KK = self.K * self.K
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
        t = _tables(self.K, tuple(int(s) for s in support), self.RP, self.KKP, atoms.device)
        self.cring, self.cdu, self.cdv, self.perm, self.hs = t["cring"], t["cdu"], t["cdv"], t["perm"], t["hs"]
        self.tap, self.order, self.inside = t["tap"], t["order"], t["inside"]

        a = atoms.to(self.acc_dtype).reshape(self.R, self.N, self.KK)[self.order][:, :, self.tap]
        A = torch.zeros((self.RP, self.NP, self.KKP), dtype=self.dot_dtype, device=atoms.device)
        A[:self.R, :self.N, :self.KK] = a * self.inside[:, None, :]
        self.A = A

    def atoms_grad(self, summed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(RP, NP, KKP) sorted-layout sums -> (R, N, K, K), zero outside each support."""
        g_sorted = summed[:self.R, :self.N, :self.KK] * self.inside[:, None, :]
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


def ifm_triton(image, mu, omega, atoms, support: Sequence[int]):
    """Fused forward: (B, C, H, W) output of the inputs' dtype."""
    image, mu, omega = _rows(image, mu, omega)
    plan = _Plan(atoms, support)
    B, C, H, W = image.shape
    out = torch.empty((B, C, H, W), dtype=image.dtype, device=image.device)
    CB = _channel_block(C)

    def grid(meta):
        return (triton.cdiv(H, meta["TH"]) * triton.cdiv(W, meta["TW"]), B, triton.cdiv(C, CB))

    _launch(_fwd_kernel, _fwd_tuned, grid, plan.f64,
            image, mu, omega, plan.A, plan.perm, plan.hs, plan.cdu, plan.cdv, plan.cring, out, out,
            C, H, W, plan.R, plan.N, plan.KK, 0, H, *_strides(image), *_strides(mu), *_strides(omega),
            STORE_K=False, CB=CB, RP=plan.RP, NP=plan.NP, KKP=plan.KKP,
            USE_DOT=plan.use_dot, PREC=plan.prec, F64=plan.f64)
    return out


def _atoms_split(n_tiles: int, n_chunks: int, device: torch.device) -> int:
    """How many programs share the pixel reduction of one column chunk."""
    if _INTERPRET or device.type != "cuda":
        return min(n_tiles, 2)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(n_tiles, (4 * sms) // max(1, n_chunks)))


def ifm_triton_backward(grad, image, mu, omega, atoms, support: Sequence[int], needs):
    """Gradients for (image, mu, omega, atoms); an unneeded one is None."""
    grad, image, mu, omega = _rows(grad, image, mu, omega)
    strides = (*_strides(grad), *_strides(image), *_strides(mu), *_strides(omega))
    plan = _Plan(atoms, support)
    B, C, H, W = image.shape
    CB = _channel_block(C)
    common = dict(CB=CB, KKP=plan.KKP)
    g_image = g_mu = g_omega = g_atoms = None

    if needs[1] or needs[2]:
        g_mu = torch.empty(mu.shape, dtype=mu.dtype, device=mu.device) if needs[1] else mu
        g_omega = torch.empty(omega.shape, dtype=omega.dtype, device=omega.device) if needs[2] else omega

        def grid(meta):
            return (triton.cdiv(H, meta["TH"]) * triton.cdiv(W, meta["TW"]), B)

        _launch(_bwd_coef_kernel, _bwd_coef_tuned, grid, plan.f64,
                grad, image, mu, omega, plan.A, plan.perm, plan.cdu, plan.cdv, g_mu, g_omega,
                C, H, W, plan.R, plan.N, plan.KK, *strides,
                NEED_MU=bool(needs[1]), NEED_OM=bool(needs[2]), RP=plan.RP, NP=plan.NP,
                USE_DOT=plan.use_dot, PREC=plan.prec, F64=plan.f64, **common)
        g_mu = g_mu if needs[1] else None
        g_omega = g_omega if needs[2] else None

    if needs[3]:
        fixed = _INTERPRET or plan.f64
        meta = dict(_FIXED if fixed else _ATOMS_GPU)
        n_tiles = B * triton.cdiv(H, meta["TH"]) * triton.cdiv(W, meta["TW"])
        n_chunks = plan.KKP // meta["CH"]
        split = _atoms_split(n_tiles, n_chunks, image.device)
        part = torch.empty((split, plan.RP * plan.NP, plan.KKP), dtype=plan.acc_dtype, device=image.device)
        dot_dtype = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16,
                     torch.float32: tl.float32, torch.float64: tl.float64}[plan.dot_dtype]
        _bwd_atoms_kernel[(n_chunks, split)](
            grad, image, mu, omega, plan.perm, plan.cdu, plan.cdv, part,
            B, C, H, W, plan.R, plan.N, plan.KK, split, *strides,
            RP=plan.RP, NP=plan.NP, DOT_DTYPE=dot_dtype, USE_DOT=plan.use_dot, PREC=plan.prec,
            F64=plan.f64, num_warps=4 if fixed else _ATOMS_GPU_WARPS, **meta, **common)
        summed = part.sum(0).view(plan.RP, plan.NP, plan.KKP)
        g_atoms = plan.atoms_grad(summed, atoms.dtype)

    if needs[0]:
        g_image = torch.empty((B, C, H, W), dtype=image.dtype, device=image.device)
        half = plan.K // 2
        row_bytes = B * plan.KKP * W * (8 if plan.f64 else 4)
        band = max(plan.K, _KBUF_BYTES // row_bytes - 2 * half)
        for r0 in range(0, H, band):
            r1 = min(H, r0 + band)
            k0, k1 = max(0, r0 - half), min(H, r1 + half)
            kbuf = torch.empty((B, plan.KKP, k1 - k0, W), dtype=plan.acc_dtype, device=image.device)

            def kgrid(meta, rows=k1 - k0):
                return (triton.cdiv(rows, meta["TH"]) * triton.cdiv(W, meta["TW"]), B)

            _launch(_fwd_kernel, _fwd_tuned, kgrid, plan.f64,
                    image, mu, omega, plan.A, plan.perm, plan.hs, plan.cdu, plan.cdv, plan.cring,
                    g_image, kbuf, C, H, W, plan.R, plan.N, plan.KK, k0, k1 - k0,
                    *_strides(image), *_strides(mu), *_strides(omega),
                    STORE_K=True, RP=plan.RP, NP=plan.NP,
                    USE_DOT=plan.use_dot, PREC=plan.prec, F64=plan.f64, **common)

            def igrid(meta, rows=r1 - r0):
                return (triton.cdiv(rows, meta["TH"]) * triton.cdiv(W, meta["TW"]), B, triton.cdiv(C, CB))

            _launch(_bwd_image_kernel, _bwd_image_tuned, igrid, plan.f64,
                    grad, kbuf, plan.cdu, plan.cdv, g_image,
                    C, H, W, plan.KK, r0, r1 - r0, k0, k1 - k0, *_strides(grad), F64=plan.f64, **common)
    return g_image, g_mu, g_omega, g_atoms


# ---------------------------------------------------------------- backend

def _unavailable(device: torch.device) -> Optional[str]:
    if device.type == "cuda":
        if _INTERPRET:
            return "TRITON_INTERPRET=1 is set: Triton kernels run on CPU tensors only"
        return None if torch.cuda.is_available() else "CUDA is not available"
    if device.type == "cpu":
        if _INTERPRET:
            return None
        return "CPU tensors need the Triton interpreter (TRITON_INTERPRET=1 set before triton is imported)"
    return f"Triton kernels do not run on {device.type} tensors"


def triton_backend() -> Backend:
    """The Triton backend of :func:`inik.ops.ifm` (ImportError when triton is missing)."""
    return Backend("triton", ifm_triton, ifm_triton_backward, _unavailable)

"""Time every Triton IFM kernel alone, over a grid of launch configurations (GPU).

    python benchmarks/sweep_triton.py [--size 640] [--dtype float32] [--only coef,atoms] [--out sweep.json]
    # compile in parallel first (fills Triton's cache), then time one process at a time:
    for i in 0 1 2 3; do python benchmarks/sweep_triton.py --compile-only --part $i/4 & done; wait
    python benchmarks/sweep_triton.py

The autotuner picks among a handful of configurations per kernel; this script
shows the whole landscape and which kernel of the backward costs what, so the
configuration lists in ``kernels/ifm_triton.py`` rest on measurements. Kernels:

* ``fwd``: the fused forward; ``storek``: the forward writing the synthesised
  kernels of the whole image (what the image gradient reads);
* ``coef``: ``dk`` and the mu/omega gradients; ``atoms``: the atom-gradient
  reduction (also over the number of programs sharing it, ``split``);
* ``image``: the image-gradient gather over the stored kernels;
* ``gather``: ``dk`` alone (the image-patch gather every backward kernel does),
  to separate gather cost from the dots;
* ``kbuf``: the whole image gradient (``needs`` = image only) for several band
  sizes of the stored-kernel buffer.

fp32 dots are timed in IEEE ("ieee") and TF32 ("tf32") precision.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_ifm import DTYPES, _device_name, _versions, make_inputs  # noqa: E402

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

import inik.kernels.ifm_triton as T  # noqa: E402

# (TH, TW, CH, num_warps, num_stages)
TILE_CONFIGS = [(8, 8, 32, 4, 2), (8, 8, 64, 4, 2), (8, 16, 32, 4, 2), (8, 16, 64, 8, 2), (16, 8, 32, 4, 3),
                (16, 16, 32, 8, 2), (16, 16, 64, 8, 2), (8, 32, 32, 8, 2), (4, 32, 32, 4, 2), (16, 16, 16, 4, 2),
                (8, 8, 16, 4, 2), (4, 16, 32, 4, 2), (8, 16, 16, 4, 2)]
ATOMS_CONFIGS = [(8, 8, 32, 8), (8, 8, 32, 4), (8, 8, 16, 4), (16, 8, 32, 8), (16, 8, 16, 8), (4, 16, 32, 8),
                 (8, 8, 64, 8)]
ATOMS_SPLIT = (1, 2, 4, 8)  # programs per column chunk = this x SMs / chunks
KBUF_MB = (8, 16, 32, 64, 256, 1024)


@triton.jit
def _gather_kernel(dx, img, cdu, cdv, out, C, H, W, KK, sd_b, sd_c, sd_h, si_b, si_c, si_h,
                   CB: tl.constexpr, KKP: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr,
                   CH: tl.constexpr):
    b = tl.program_id(1).to(tl.int64)
    i, j, valid = T._tile(tl.program_id(0), W, 0, H, TH, TW)
    tot = tl.zeros((TH * TW,), dtype=tl.float32)
    for c0 in range(0, KKP, CH):
        cols = c0 + tl.arange(0, CH)
        dk = T._dk(dx + b * sd_b, img + b * si_b, i, j, valid, cdu, cdv, cols, C, H, W, KK,
                   sd_c, sd_h, si_c, si_h, TH * TW, CB, CH, False)
        tot += tl.sum(dk, axis=1)
    tl.store(out + b * H * W + i * W + j, tot, mask=valid)


def jobs(only):
    """Every (kernel, config) this sweep times, in a fixed order."""
    out = []
    for prec in ("ieee", "tf32"):
        for cfg in TILE_CONFIGS:
            out += [("fwd", prec, cfg), ("storek", prec, cfg), ("coef", prec, cfg)]
        for cfg in ATOMS_CONFIGS:
            out += [("atoms", prec, cfg + (s,)) for s in ATOMS_SPLIT]
    out += [("image", "-", cfg) for cfg in TILE_CONFIGS]
    out += [("gather", "-", cfg) for cfg in TILE_CONFIGS if cfg[2] <= 32]
    out += [("kbuf", "-", (mb,)) for mb in KBUF_MB]
    return [j for j in out if not only or j[0] in only]


def make_runner(kernel, prec, cfg, tensors, support, grad, dtype):
    image, mu, omega, atoms = tensors
    B, C, H, W = image.shape
    plan = T._Plan(atoms, support)
    if dtype == torch.float32:
        plan.prec = prec
    CB = T._channel_block(C)
    st = (*T._strides(image), *T._strides(mu), *T._strides(omega))
    common = dict(RP=plan.RP, NP=plan.NP, KKP=plan.KKP, USE_DOT=True, PREC=plan.prec, F64=False)
    if kernel != "kbuf" and plan.KKP % cfg[2]:
        raise ValueError(f"CH={cfg[2]} does not divide the padded tap count {plan.KKP}")
    if kernel in ("fwd", "storek", "coef", "image", "gather"):
        th, tw, ch, warps, stages = cfg
        meta = dict(TH=th, TW=tw, CH=ch, num_warps=warps, num_stages=stages)
        grid = (triton.cdiv(H, th) * triton.cdiv(W, tw), B, triton.cdiv(C, CB))
    if kernel == "fwd":
        out = torch.empty_like(image)
        return lambda: T._fwd_kernel[grid](
            image, mu, omega, plan.A, plan.perm, plan.hs, plan.cdu, plan.cdv, plan.cring, out, out,
            C, H, W, plan.R, plan.N, plan.KK, 0, H, *st, STORE_K=False, CB=CB, **common, **meta)
    if kernel == "storek":
        kbuf = torch.empty((B, plan.KKP, H, W), dtype=torch.float32, device=image.device)
        return lambda: T._fwd_kernel[grid[:2]](
            image, mu, omega, plan.A, plan.perm, plan.hs, plan.cdu, plan.cdv, plan.cring, kbuf, kbuf,
            C, H, W, plan.R, plan.N, plan.KK, 0, H, *st, STORE_K=True, CB=CB, **common, **meta)
    if kernel == "coef":
        g_mu, g_om = torch.empty_like(mu), torch.empty_like(omega)
        return lambda: T._bwd_coef_kernel[grid[:2]](
            grad, image, mu, omega, plan.A, plan.perm, plan.cdu, plan.cdv, g_mu, g_om,
            C, H, W, plan.R, plan.N, plan.KK, *T._strides(grad), *st,
            NEED_MU=True, NEED_OM=True, CB=CB, **common, **meta)
    if kernel == "image":
        kbuf = torch.randn((B, plan.KKP, H, W), dtype=torch.float32, device=image.device)
        g_img = torch.empty_like(image)
        return lambda: T._bwd_image_kernel[grid](
            grad, kbuf, plan.cdu, plan.cdv, g_img, C, H, W, plan.KK, 0, H, 0, H, *T._strides(grad),
            CB=CB, KKP=plan.KKP, F64=False, **meta)
    if kernel == "gather":
        out = torch.empty((B, H, W), dtype=torch.float32, device=image.device)
        return lambda: _gather_kernel[grid[:2]](
            grad, image, plan.cdu, plan.cdv, out, C, H, W, plan.KK, *T._strides(grad), *T._strides(image),
            CB=CB, KKP=plan.KKP, **meta)
    if kernel == "atoms":
        th, tw, ch, warps, mult = cfg
        n_tiles = B * triton.cdiv(H, th) * triton.cdiv(W, tw)
        n_chunks = plan.KKP // ch
        sms = torch.cuda.get_device_properties(image.device).multi_processor_count if image.is_cuda else 2
        split = max(1, min(n_tiles, (mult * sms) // n_chunks))
        part = torch.empty((split, plan.RP * plan.NP, plan.KKP), dtype=torch.float32, device=image.device)
        dot = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}[dtype]

        def run():
            T._bwd_atoms_kernel[(n_chunks, split)](
                grad, image, mu, omega, plan.perm, plan.cdu, plan.cdv, part,
                B, C, H, W, plan.R, plan.N, plan.KK, split, *T._strides(grad), *st,
                CB=CB, RP=plan.RP, NP=plan.NP, KKP=plan.KKP, TH=th, TW=tw, CH=ch, DOT_DTYPE=dot,
                USE_DOT=True, PREC=plan.prec, F64=False, num_warps=warps)
            part.sum(0)
        return run
    if kernel == "kbuf":
        (mb,) = cfg
        needs = [True, False, False, False]

        def run():
            old = T._KBUF_BYTES
            T._KBUF_BYTES = mb << 20
            try:
                T.ifm_triton_backward(grad, image, mu, omega, atoms, support, needs)
            finally:
                T._KBUF_BYTES = old
        return run
    raise ValueError(kernel)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=640)
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--only", default="", help="comma-separated kernels (default: all)")
    p.add_argument("--part", default="0/1", help="i/n: run every n-th job starting at i")
    p.add_argument("--compile-only", action="store_true", help="run each job once, time nothing")
    p.add_argument("--budget-s", type=float, default=1e9, help="start no job after this many seconds")
    p.add_argument("--out", help="JSON file of the results")
    p.add_argument("--device", default="cuda",
                   help="cuda; or cpu under TRITON_INTERPRET=1 with --compile-only (a smoke test)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("sweep_triton: needs a CUDA GPU (the Triton interpreter is a correctness tool)")
        return 0
    if device.type != "cuda" and not args.compile_only:
        p.error("--device cpu only runs with --compile-only (under TRITON_INTERPRET=1): nothing to time")
    if device.type != "cuda":  # pad the taps as on a GPU, so every config's chunk divides them
        T._FIXED = {**T._FIXED, "CH": T._CH_MAX}
    dtype = DTYPES[args.dtype]
    tensors, support = make_inputs(args.size, 1, 3, dtype, device)
    grad = torch.randn_like(tensors[0])
    part, nparts = (int(x) for x in args.part.split("/"))
    todo = jobs({s.strip() for s in args.only.split(",") if s.strip()})[part::nparts]
    if dtype != torch.float32:
        todo = [j for j in todo if j[1] != "tf32"]
    if args.compile_only:
        print(f"part {args.part}: {len(todo)} jobs")
    else:
        print(f"Triton IFM kernels alone, {args.size}x{args.size} {args.dtype}, B=1 C=3\n"
              f"device: {_device_name(device)}\nversions: {_versions(device)}")
    t_start, rows = time.perf_counter(), []
    for kernel, prec, cfg in todo:
        if time.perf_counter() - t_start > args.budget_s:
            print(f"budget spent: skipped {kernel} {prec} {cfg} and the rest")
            break
        row = dict(kernel=kernel, prec=prec, cfg=list(cfg))
        try:
            fn = make_runner(kernel, prec, cfg, tensors, support, grad, dtype)
            fn()
            if not args.compile_only:
                torch.cuda.synchronize()
                row["ms"] = float(triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median"))
        except Exception as e:  # noqa: BLE001 - a config that fails to compile (resources) is a result
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
        rows.append(row)
        if "error" in row or not args.compile_only:
            print(f"{kernel:7s} {prec:5s} {str(tuple(cfg)):24s} "
                  + (f"{row['ms']:9.3f} ms" if "ms" in row else row["error"]), flush=True)
    if not args.compile_only:
        print("\nbest per kernel and precision:")
        best = {}
        for r in rows:
            if "ms" in r and (k := (r["kernel"], r["prec"])) and (k not in best or r["ms"] < best[k]["ms"]):
                best[k] = r
        for (k, pr), r in best.items():
            print(f"  {k:7s} {pr:5s} {str(tuple(r['cfg'])):24s} {r['ms']:9.3f} ms")
    if args.out:
        Path(args.out).write_text(json.dumps(dict(device=_device_name(device), versions=_versions(device),
                                                  size=args.size, dtype=args.dtype, rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

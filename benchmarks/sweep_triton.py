"""Time every Triton IFM kernel over a grid of launch configurations (GPU).

    python benchmarks/sweep_triton.py [--size 640] [--dtype float32] [--only coef,atoms] [--out sweep.json]
    # compile in parallel first (fills Triton's cache), then time one process at a time:
    for i in 0 1 2 3; do python benchmarks/sweep_triton.py --compile-only --part $i/4 & done; wait
    python benchmarks/sweep_triton.py

The autotuner picks among a handful of configurations per kernel; this script
shows the whole landscape and what each part of the backward costs, so the
configuration lists in ``kernels/ifm_triton.py`` rest on measurements. Each job
runs the module's own host code (padding, bands, partial sums included) with one
kernel's configuration forced (``ifm_triton._FORCED``) and the others at ``BASE``:

* ``fwd``: the forward; ``storek``/``image``: the image gradient, varying the
  kernel-synthesis pass or the gather over the stored kernels;
* ``fwd-dense``/``storek-dense``: the same with the forward kernel's dense
  variant (one dot over all scales per tap chunk, ``DENSE=True``);
* ``coef``: the mu and omega gradients; ``atoms``: the atom gradient, varying
  its GEMM (the dk pass at BASE);
* ``kbuf``/``dkbuf``: the image / atom gradient for several band budgets;
* ``all``: the whole backward with the autotuned configurations;
* ``fwd2``, ``storek2``, ``coef2``, ``atoms2``, ``image2``, ``kbuf2``, ``all2``:
  the same for the second design (``kernels/ifm_triton2.py``, backend
  ``triton2``) over ``V2_CONFIGS``.

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

import triton  # noqa: E402
import triton.testing  # noqa: E402
from bench_ifm import DTYPES, _device_name, _versions, make_inputs  # noqa: E402

import inik.kernels.ifm_triton as T  # noqa: E402
import inik.kernels.ifm_triton2 as T2  # noqa: E402

# (TH, TW, CH, num_warps, num_stages[, maxnreg])
TILE_CONFIGS = [(8, 16, 16, 4, 2), (16, 8, 16, 4, 2), (4, 32, 16, 4, 2), (8, 16, 32, 4, 2), (8, 16, 32, 8, 2),
                (16, 8, 32, 8, 2), (4, 32, 32, 8, 2), (16, 16, 16, 8, 2), (8, 32, 16, 8, 2), (16, 16, 32, 8, 2),
                (8, 8, 32, 4, 2), (8, 16, 16, 4, 3), (8, 16, 16, 4, 2, 128), (8, 16, 32, 8, 2, 128),
                (16, 16, 16, 8, 2, 128), (8, 16, 16, 4, 2, 168)]
# the dense variant: chunks of 32 and 64 taps (fewer, larger dots is its point)
DENSE_CONFIGS = [(8, 16, 32, 4, 2), (8, 16, 32, 8, 2), (16, 16, 32, 8, 2), (8, 8, 32, 4, 2), (16, 8, 32, 8, 2),
                 (8, 16, 64, 8, 2), (16, 16, 64, 8, 2), (8, 8, 64, 4, 2)]
# (BK, CHN, num_warps)
ATOMS_CONFIGS = [(64, 64, 8), (32, 64, 4), (64, 32, 4), (64, 64, 4), (128, 64, 8), (32, 32, 4), (64, 128, 8)]
KBUF_MB = (32, 64, 128, 256, 1024)
# the configuration every kernel not being varied runs with
BASE = (8, 16, 16, 4, 2)
NEEDS = {"fwd": None, "fwd-dense": None, "storek": (True, False, False, False),
         "storek-dense": (True, False, False, False), "image": (True, False, False, False),
         "coef": (False, True, True, False), "atoms": (False, False, False, True)}


# the second design, every kernel: (TH, TW, CH, num_warps, num_stages)
V2_CONFIGS = [(4, 32, 32, 4, 2), (8, 32, 32, 8, 2), (4, 64, 32, 8, 2), (8, 16, 32, 4, 2), (4, 16, 16, 4, 2),
              (2, 32, 32, 4, 2), (2, 32, 16, 4, 2), (4, 32, 16, 8, 2), (2, 32, 32, 8, 2), (2, 32, 64, 8, 2),
              (8, 32, 16, 8, 2), (2, 64, 32, 8, 2)]
# each kernel of the second design not being varied runs with its first autotuned configuration
V2_BASE = {name: dict(c[0].kwargs, num_warps=c[0].num_warps, num_stages=c[0].num_stages)
           for name, c in T2.KERNELS.items()}
V2_KERNEL = {"fwd2": "_fwd2_kernel", "storek2": "_fwd2_kernel", "coef2": "_bwd2_coef_kernel",
             "atoms2": "_bwd2_atoms_kernel", "image2": "_bwd2_image_kernel"}
NEEDS.update({"fwd2": None, "storek2": (True, False, False, False), "image2": (True, False, False, False),
              "coef2": (False, True, True, False), "atoms2": (False, False, False, True)})


def _meta(cfg) -> dict:
    th, tw, ch, warps, stages, *mx = cfg
    return dict(TH=th, TW=tw, CH=ch, num_warps=warps, num_stages=stages, maxnreg=mx[0] if mx else None)


def jobs(only):
    """Every (kernel, precision, config) this sweep times, in a fixed order."""
    out = []
    for prec in ("ieee", "tf32"):
        for cfg in TILE_CONFIGS:
            out += [("fwd", prec, cfg), ("storek", prec, cfg), ("coef", prec, cfg)]
        for cfg in DENSE_CONFIGS:
            out += [("fwd-dense", prec, cfg), ("storek-dense", prec, cfg)]
        out += [("atoms", prec, cfg) for cfg in ATOMS_CONFIGS]
    out += [("image", "-", cfg) for cfg in TILE_CONFIGS]
    out += [("kbuf", "-", (mb,)) for mb in KBUF_MB] + [("dkbuf", "-", (mb,)) for mb in KBUF_MB]
    out += [("all", prec, ()) for prec in ("ieee", "tf32")]
    for prec in ("ieee", "tf32"):
        for cfg in V2_CONFIGS:
            out += [("fwd2", prec, cfg), ("storek2", prec, cfg), ("coef2", prec, cfg), ("atoms2", prec, cfg)]
    out += [("image2", "-", cfg) for cfg in V2_CONFIGS] + [("kbuf2", "-", (mb,)) for mb in KBUF_MB]
    out += [("all2", prec, ()) for prec in ("ieee", "tf32")]
    return [j for j in out if not only or j[0] in only]


def _runner(module, forward, backward, forced, budget, needs, prec, tensors, support, grad):
    """A callable running ``module``'s host code with launch configurations ``forced``
    and band budget ``budget``; the forward for ``needs`` None, else the backward."""
    def run():
        saved = dict(module._FORCED), module._KBUF_BYTES, torch.get_float32_matmul_precision()
        module._FORCED.clear()
        module._FORCED.update(forced)
        module._KBUF_BYTES = budget
        torch.set_float32_matmul_precision("highest" if prec in ("ieee", "-") else "high")
        try:
            if needs is None:
                return forward(*tensors, support)
            return backward(grad, *tensors, support, needs)
        finally:
            module._FORCED.clear()
            module._FORCED.update(saved[0])
            module._KBUF_BYTES = saved[1]
            torch.set_float32_matmul_precision(saved[2])
    return run


def make_runner2(kernel, prec, cfg, tensors, support, grad):
    """:func:`make_runner` for the second design's jobs."""
    forced = {name: dict(meta) for name, meta in V2_BASE.items()}
    budget, needs = T2._KBUF_BYTES, NEEDS.get(kernel)
    if kernel in V2_KERNEL:
        meta = _meta(cfg)
        meta.pop("maxnreg")
        if T2._Packing(tensors[3], support).KKP % meta["CH"]:
            raise ValueError(f"a chunk of {meta} does not divide the padded tap count")
        forced[V2_KERNEL[kernel]] = meta
    elif kernel == "kbuf2":
        budget, needs = cfg[0] << 20, (True, False, False, False)
    elif kernel == "all2":
        forced, needs = {}, (True, True, True, True)
    else:
        raise ValueError(kernel)
    return _runner(T2, T2.ifm_triton2, T2.ifm_triton2_backward, forced, budget, needs, prec, tensors, support,
                   grad)


def make_runner(kernel, prec, cfg, tensors, support, grad):
    """A callable running the module's own host code with ``kernel``'s launch
    configuration forced to ``cfg`` (the others at BASE), or with a band budget."""
    if kernel.endswith("2"):
        return make_runner2(kernel, prec, cfg, tensors, support, grad)
    image, mu, omega, atoms = tensors
    forced = {"_fwd_kernel": _meta(BASE), "_bwd_coef_kernel": _meta(BASE), "_bwd_image_kernel": _meta(BASE)}
    budget = T._KBUF_BYTES
    needs = NEEDS.get(kernel)
    if kernel in ("fwd", "storek"):
        forced["_fwd_kernel"] = _meta(cfg)
    elif kernel in ("fwd-dense", "storek-dense"):
        forced["_fwd_kernel"] = {**_meta(cfg), "DENSE": True}
    elif kernel == "coef":
        forced["_bwd_coef_kernel"] = _meta(cfg)
    elif kernel == "image":
        forced["_bwd_image_kernel"] = _meta(cfg)
    elif kernel == "atoms":
        bk, chn, warps = cfg
        forced["_bwd_atoms_kernel"] = dict(BK=bk, CHN=chn, num_warps=warps)
    elif kernel in ("kbuf", "dkbuf"):
        budget = cfg[0] << 20
        needs = (True, False, False, False) if kernel == "kbuf" else (False, False, False, True)
    elif kernel == "all":
        forced, needs = {}, (True, True, True, True)  # the autotuned configurations
    else:
        raise ValueError(kernel)
    kkp = T._Plan(atoms, support).KKP
    for meta in forced.values():
        if kkp % meta.get("CH", meta.get("CHN", 1)):
            raise ValueError(f"a chunk of {meta} does not divide the padded tap count {kkp}")
    return _runner(T, T.ifm_triton, T.ifm_triton_backward, forced, budget, needs, prec, tensors, support, grad)


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
        T2._FIXED = {**T2._FIXED, "CH": T2._CH_MAX}
        TILE_CONFIGS[:] = [c[:5] for c in TILE_CONFIGS]  # maxnreg is a GPU compile option
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
            fn = make_runner(kernel, prec, cfg, tensors, support, grad)
            fn()
            if not args.compile_only:
                torch.cuda.synchronize()
                row["ms"] = float(triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median"))
        except Exception as e:  # noqa: BLE001 - a config that fails to compile (resources) is a result
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
        rows.append(row)
        if "error" in row or not args.compile_only:
            print(f"{kernel:7s} {prec:5s} {str(tuple(cfg)):28s} "
                  + (f"{row['ms']:9.3f} ms" if "ms" in row else row["error"]), flush=True)
    if not args.compile_only:
        print("\nbest per kernel and precision:")
        best = {}
        for r in rows:
            if "ms" in r and (k := (r["kernel"], r["prec"])) and (k not in best or r["ms"] < best[k]["ms"]):
                best[k] = r
        for (k, pr), r in best.items():
            print(f"  {k:7s} {pr:5s} {str(tuple(r['cfg'])):28s} {r['ms']:9.3f} ms")
    if args.out:
        Path(args.out).write_text(json.dumps(dict(device=_device_name(device), versions=_versions(device),
                                                  size=args.size, dtype=args.dtype, rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
